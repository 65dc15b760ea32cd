"""Perplexity comparison in the shape of the AutoMixQ paper's Table 1, for one LM task.

Rows: uniform W2/W3/W4 (the task's group-wise quantizer), random 2/4-bit mixed precision at
each budget (random weights at 2 bits, the rest at 4, until the parameter-weighted average
reaches the budget; mean and spread over seeds, as the paper's "random mixed-precision"
baselines), proxy-driven ILP allocation over {2,3,4} bits from the leaderboard records (the
harness' downstream allocations), and AutoMixQ's searched configurations. Every number is
test-split perplexity, measured here (the proxies' from their records, same evaluator).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mqbench.search.automixq.search import Search
from mqbench.truth.bench import Evaluator
from mqbench.truth.store import table_provenance


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def random_mixed(search: Search, budget: float, seed: int) -> list[str]:
    """Random weights dropped from 4 to 2 bits until the average is at most `budget`."""
    keys = ["w4"] * len(search.params)
    for u in np.random.default_rng(seed).permutation(len(keys)):
        if search.avg_bits(keys) <= budget + 1e-9:
            break
        keys[u] = "w2"
    return keys


def heldout_metrics(search: Search, evaluator: Evaluator, keys: list[str]):
    """Metrics of one option assignment on the evaluator's (test) windows."""
    return evaluator.token_metrics(search.mixed.apply([search.by_key[k] for k in keys]))


def compare(search: Search, state, records: list[dict], random_seeds: int = 3) -> dict:
    """All rows of the comparison: {'budgets': [...], 'rows': [{method, setting, cells}]}."""
    bench, task = search.bench, search.task
    budgets = sorted(task.automixq.budgets)
    table_ev = bench.evaluator(task.seed)
    mixed_ev = Evaluator(bench, search.mixed, task.table.batch_size)
    rows = [{"method": "FP", "setting": "W32", "cells": {"fp": _ppl(table_ev.fp_metrics.loss)}}]
    for b in bench.space.weight_bits:
        m = table_ev.evaluate(bench.space.uniform(b))
        rows.append({"method": "Uniform", "setting": f"W{b}", "cells": {"uniform": _ppl(m.loss)}})
    cells, spread, avgs = {}, {}, {}
    for b in budgets:
        draws = [random_mixed(search, b, s) for s in range(random_seeds)]
        ppls = [_ppl(heldout_metrics(search, mixed_ev, keys).loss) for keys in draws]
        cells[f"{b:g}"] = float(np.exp(np.mean(np.log(ppls))))  # geometric mean
        spread[f"{b:g}"] = [min(ppls), max(ppls)]
        avgs[f"{b:g}"] = float(np.mean([search.avg_bits(keys) for keys in draws]))
    rows.append({"method": f"Random 2/4 (geo-mean of {random_seeds})", "setting": "mixed",
                 "cells": cells, "range": spread, "avg_bits": avgs})
    for rec in records:
        cells = {f"{d['budget_avg_bits']:g}": _ppl(d["loss"]) for d in rec.get("downstream", [])
                 if d["metric"] == "size"}
        if cells:
            rows.append({"method": f"ILP ({rec['proxy']})", "setting": "2/3/4", "cells": cells})
    cells, avgs = {}, {}
    for b in budgets:
        found = state.found.get(f"{b:g}")
        if found:
            cells[f"{b:g}"] = _ppl(heldout_metrics(search, mixed_ev, found["config"]).loss)
            avgs[f"{b:g}"] = found["avg_bits"]
    rows.append({"method": "AutoMixQ", "setting": "2/4 + protection", "cells": cells,
                 "avg_bits": avgs, "search_seconds": round(state.seconds, 1),
                 "evaluations": state.evaluations})
    # The table's own provenance (versions, commit, checksums, tokenizer, corpus) plus ours.
    provenance = {**table_provenance(bench), "aux_windows": len(search.aux_x),
                  "random_seeds": random_seeds}
    return {"task": task.key, "budgets": [f"{b:g}" for b in budgets], "rows": rows,
            "provenance": provenance}


def markdown(result: dict) -> str:
    """The comparison as a Markdown table (perplexity, lower is better)."""
    budgets = result["budgets"]
    head = ("| method | setting | fixed bits | " + " | ".join(f"W{b}A16" for b in budgets)
            + " |")
    lines = [f"Test perplexity on `{result['task']}` (lower is better; W<b> = average weight "
             f"bits, activations float).", "", head, "|---|---|---:|" + "---:|" * len(budgets)]
    for row in result["rows"]:
        c = row["cells"]
        fixed = c.get("fp", c.get("uniform"))
        vals = ([f"{fixed:.2f}"] + ["—"] * len(budgets) if fixed is not None else
                ["—"] + [f"{c[b]:.2f}" if b in c else "—" for b in budgets])
        lines.append(f"| {row['method']} | {row['setting']} | " + " | ".join(vals) + " |")
    auto = result["rows"][-1]
    lines += ["", f"AutoMixQ search: {auto['evaluations']} configurations in "
              f"{auto['search_seconds']} s; achieved average bits: "
              + ", ".join(f"{b}: {a:.3f}" for b, a in auto["avg_bits"].items()) + "."]
    return "\n".join(lines) + "\n"


def write(result: dict, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / f"{result['task']}-automixq.json", folder / f"{result['task']}-automixq.md"
    js.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    md.write_text(markdown(result))
    return js, md
