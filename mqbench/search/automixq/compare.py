"""Perplexity comparison in the shape of the AutoMixQ paper's Table 1, for one LM task.

Rows: uniform W2/W3/W4 (the task's group-wise quantizer), random 2/4-bit mixed precision at
each budget (random weights at 2 bits, the rest at 4, until the parameter-weighted average
reaches the budget; mean and spread over seeds, as the paper's "random mixed-precision"
baselines), proxy-driven ILP allocation over {2,3,4} bits from the leaderboard records (the
harness' downstream allocations), and AutoMixQ's searched configurations. Every number is
test-split perplexity, measured here (the proxies' from their records, same evaluator).

AutoMixQ's own result is a `Record` (the type every result uses): proxy "automixq", kind
"search", one `Allocation` per budget (its option keys, test-split accuracy, loss, KL and
weight bits; no BOPs, no table comparison), the search time as `timing`, and the bench's
provenance from mqbench.truth.store.table_provenance. It has no per-configuration scores and
so no metrics: it is written beside the table in the result JSON (`record`), never to the
leaderboard. The table rows (`rows`) are the report over it and the baselines.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from mqbench.provenance import software
from mqbench.scoring.record import Allocation, Record, Timing
from mqbench.search.automixq import search as search_module
from mqbench.search.automixq.search import Search
from mqbench.truth.bench import Evaluator
from mqbench.truth.store import table_provenance

VERSION = 1  # AutoMixQ's version as a record's proxy_version; bump when its behaviour changes


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


def automixq_record(search: Search, state, evaluator: Evaluator) -> Record:
    """AutoMixQ's searched configurations as a Record, each measured on the test windows."""
    task, params = search.task, search.params
    allocations = []
    for b in sorted(task.automixq.budgets):
        found = state.found.get(f"{b:g}")
        if not found:
            continue
        keys = found["config"]
        m = heldout_metrics(search, evaluator, keys)
        bits = np.array([search.by_key[k].avg_bits for k in keys])
        allocations.append(Allocation(
            budget_avg_bits=float(b), metric="size", config=",".join(keys), acc=m.acc,
            loss=m.loss, kl=m.kl, size_bits=round(float((bits * params).sum())), bops=None,
            best_table_acc=None, gap_to_best=None))
    seconds = round(state.seconds, 1)
    return Record(
        proxy="automixq", proxy_version=VERSION,
        proxy_sha256=hashlib.sha256(Path(search_module.__file__).read_bytes()).hexdigest(),
        proxy_kind="search", paper="AutoMixQ, Algorithm 1 (global 2/4-bit search)",
        task=task.label, task_version=task.version, task_checksum=task.checksum,
        table_checksum=None, seed=task.seed, **software(), n_configs=0, bootstrap=0,
        metrics={}, downstream=tuple(allocations),
        timing=Timing(proxy_seconds=seconds, score_seconds=0.0,
                      per_config_ms=round(1000 * state.seconds / max(1, state.evaluations), 3)),
        scores={}, sensitivity=None, table_provenance=table_provenance(search.bench))


def compare(search: Search, state, records: list[Record], random_seeds: int = 3) -> dict:
    """The comparison: {'task', 'budgets', 'rows': [{method, setting, cells, ...}],
    'random_seeds', 'aux_windows', 'record': AutoMixQ's Record as a dict}."""
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
        cells = {f"{d.budget_avg_bits:g}": _ppl(d.loss) for d in rec.downstream
                 if d.metric == "size"}
        if cells:
            rows.append({"method": f"ILP ({rec.proxy})", "setting": "2/3/4", "cells": cells})
    auto = automixq_record(search, state, mixed_ev)
    rows.append({"method": "AutoMixQ", "setting": "2/4 + protection",
                 "cells": {f"{d.budget_avg_bits:g}": _ppl(d.loss) for d in auto.downstream},
                 "avg_bits": {f"{b:g}": state.found[f"{b:g}"]["avg_bits"] for b in budgets
                              if f"{b:g}" in state.found},
                 "search_seconds": auto.timing.proxy_seconds, "evaluations": state.evaluations})
    # Provenance (versions, commit, checksums, tokenizer, corpus) is the record's.
    return {"task": task.key, "budgets": [f"{b:g}" for b in budgets], "rows": rows,
            "random_seeds": random_seeds, "aux_windows": len(search.aux_x),
            "record": auto.to_dict()}


def markdown(result: dict) -> str:
    """The comparison as a Markdown table (perplexity, lower is better)."""
    budgets = result["budgets"]
    head = ("| method | setting | fixed bits | " + " | ".join(f"W{b}A16" for b in budgets)
            + " |")
    lines = [(f"Test perplexity on `{result['task']}` (lower is better; W<b> = average weight "
              f"bits, activations float)."), "", head, "|---|---|---:|" + "---:|" * len(budgets)]
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
