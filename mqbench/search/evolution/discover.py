"""`mqbench discover` as one function: build the generator, run the loop, write the proxy.

`discover` checks its inputs before anything slow (the proxy name, the generator's model
and packages), prepares the task's fitness context, runs (or resumes) the loop in a run
folder, scores the winner once more with the config-level Spearman on the training task and
on each held-out task (never searched on), writes it as a registered proxy file whose
docstring records how it was found, and returns a `Report` that also ranks every registered
proxy by the same fitness. `format_report` is what the CLI prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import list_proxies
from mqbench.search.evolution.chat import OpenAIChat, Usage
from mqbench.search.evolution.chat_hf import HFChat
from mqbench.search.evolution.fitness import Context, Fitness, context, proxy_fitness
from mqbench.search.evolution.generator_dpo import DPOSettings, GeneratorDPO, require_trl
from mqbench.search.evolution.generator_llm import PAIRS, LLMGenerator
from mqbench.search.evolution.generator_symbolic import RandomGenerator, SymbolicGenerator
from mqbench.search.evolution.loop import (
    CANDIDATES,
    CHECKPOINT,
    Candidate,
    Generator,
    Settings,
    State,
    run,
)
from mqbench.task.spec import Task


@dataclass(frozen=True)
class LLMOptions:
    """Where the LLM generators' model lives; unlike Settings, free to change on --resume."""

    model: str = ""  # openai: model name (or $MQBENCH_LLM_MODEL); hf: local model directory
    base_url: str = ""  # openai: endpoint (or $OPENAI_BASE_URL)
    api_key: str = ""  # openai: API key (or $OPENAI_API_KEY)
    adapter: str | None = None  # hf: LoRA adapter directory to start from


@dataclass(frozen=True)
class Report:
    """What one `discover` call found; `train` (per search task) and `holdout` rank every
    registered layer proxy and the discovered one (`name`) by the fitness, best first."""

    path: Path  # the written proxy file
    name: str  # its proxy name (the file stem)
    workdir: Path  # the run folder: checkpoint, candidate log, LLM cache and pairs
    label: str  # the generator, e.g. "openai, model m"
    state: State
    best: Candidate
    train: dict[str, list[tuple[str, Fitness]]]  # per search task
    holdout: dict[str, list[tuple[str, Fitness]]]
    usage: Usage | None  # LLM generators: requests, tokens, cost


def default_workdir(out: Path) -> Path:
    """The run folder next to the proxy file: proxies/x.py -> proxies/x.run/."""
    return Path(out).with_suffix(".run")


def make_generator(settings: Settings, workdir: Path, llm: LLMOptions = LLMOptions()) -> Generator:
    """The generator `settings.generator` names; fails in one line if its model or packages
    are missing (before any table is built)."""
    if settings.generator == "symbolic":
        return SymbolicGenerator(settings)
    if settings.generator == "random":
        return RandomGenerator(settings)
    cache = Path(workdir) / "cache"
    if settings.generator == "openai":
        chat = OpenAIChat(model=llm.model, base_url=llm.base_url, api_key=llm.api_key,
                          cache_dir=cache)
        return LLMGenerator(chat, settings, workdir)
    if not llm.model:
        raise MqbenchError("generator 'hf' needs --model: a local directory holding a "
                           "transformers causal LM and its tokenizer")
    if settings.dpo_every:
        require_trl()  # fail now, not after the first generation
    chat = HFChat(llm.model, adapter=llm.adapter, cache_dir=cache,
                  max_new_tokens=settings.max_new_tokens)
    hook = GeneratorDPO(chat, workdir, settings.dpo_every, DPOSettings(seed=settings.seed)) \
        if settings.dpo_every else None
    return LLMGenerator(chat, settings, workdir, hook)


def leaderboard_of(ctx: Context, extra: dict[str, Fitness] | None = None) -> list[tuple]:
    """[(name, Fitness)] of every registered layer/layer_bit proxy (+ extra), best first."""
    rows = [(name, proxy_fitness(ctx, p)) for name, p in sorted(list_proxies().items())
            if p.kind != "config" and not name.startswith("discovered")]
    rows += list((extra or {}).items())
    return sorted(rows, key=lambda r: (-r[1].phi if math.isfinite(r[1].phi) else math.inf,
                                       r[0]))


def _split_words(split: str) -> str:
    # A test-split search keeps protocol 1's wording, so the shipped discovered_symbolic.py
    # is still reproduced byte for byte; its rows are marked in-sample (IN_SAMPLE.toml).
    return " (searched on its validation split)" if split == "val" else ""


def _docstring_safe(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def write_proxy(gen: Generator, state: State, out: Path, name: str,
                fit: Fitness | list[Fitness], holdout: dict[str, Fitness] | None = None,
                tasks: list[str] | None = None) -> Path:
    """Write the best candidate as a registered-format proxy file with its provenance
    (`fit`: its fitness on each search task, `tasks` their labels)."""
    best, s = state.best, state.settings
    why, code = gen.render(best.genome, name)
    fits = [fit] if isinstance(fit, Fitness) else list(fit)
    tasks = tasks or [s.task]
    lines = [f"Discovered by `mqbench discover` (generator: {gen.label}).", "", why, ""]
    if len(tasks) > 1:
        lines.append(f"Searched on {len(tasks)} tasks at once (fitness: the mean of their "
                     f"phi){_split_words(s.fitness_split)}.")
    lines += [(f"Training task {t}{_split_words(s.fitness_split)}: fitness "
               f"{f.phi:.4f} (rho_sens {f.rho_sens:.4f}, table-lookup Acc {f.acc:.4f}, "
               f"config Spearman {f.spearman:.4f}).") for t, f in zip(tasks, fits)]
    for task, f in (holdout or {}).items():
        lines.append(f"Held-out task {task} (no tuning on it): fitness {f.phi:.4f} "
                     f"(rho_sens {f.rho_sens:.4f}, Acc {f.acc:.4f}, "
                     f"config Spearman {f.spearman:.4f}).")
    lines += ["", (f"Found in generation {best.born} of {s.generations}; population "
                   f"{s.population}, seed {s.seed}, {state.evaluated} candidates evaluated "
                   f"({state.invalid} invalid, {state.duplicates} duplicates).")]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f'"""{_docstring_safe(chr(10).join(lines).strip())}\n"""\n\n{code}')
    return out


def discover(task: Task | Sequence[Task], settings: Settings, out: Path, *,
             holdout: tuple[Task, ...] = (), workdir: Path | None = None, resume: bool = False,
             progress: bool = True, llm: LLMOptions = LLMOptions()) -> Report:
    """Search a proxy on `task` (or on several search tasks at once: the fitness is the mean
    over them, `loop.score_on`), write it to `out` (its stem names it) and report.

    Args:
        workdir: the run folder (default `default_workdir(out)`); `resume` continues the
            checkpoint found there.
        holdout: tasks the winner is reported on, never searched on (each search task's own
            test split is reported too when the search ran on validation splits).
    """
    tasks = [task] if isinstance(task, Task) else list(task)
    out = Path(out)
    name = out.stem
    if out.is_dir() or out.suffix != ".py":  # checked now, not after the whole search
        raise MqbenchError(f"--out {out}: name the proxy file to write, ending in .py, e.g. "
                           f"proxies/discovered_symbolic.py")
    if not name.isidentifier():
        raise MqbenchError(f"--out {out}: the file name must be a Python identifier (it names "
                           f"the proxy), e.g. proxies/discovered_symbolic.py")
    label = ",".join(t.label for t in tasks)
    if settings.task != label:
        raise MqbenchError(f"settings are for task {settings.task!r}, not {label!r}")
    searched = {t.key for t in tasks}
    overlap = [h.label for h in holdout if h.key in searched]
    if overlap:
        raise MqbenchError(f"--holdout {', '.join(overlap)} is also a search task; a held-out "
                           f"task must not be searched on")
    workdir = Path(workdir) if workdir is not None else default_workdir(out)
    gen = make_generator(settings, workdir, llm)
    ctxs = [context(t, progress, settings.fitness_split) for t in tasks]
    state = run(ctxs[0] if len(ctxs) == 1 else ctxs, gen, settings, workdir, resume=resume,
                progress=progress)
    best = state.best
    if best is None:
        raise MqbenchError(f"no valid proxy after {state.evaluated} candidates "
                           f"({state.invalid} invalid); see {workdir / CANDIDATES}")
    fits = [gen.score(c, [best.genome], ["best"], spearman=True)[0].fitness for c in ctxs]
    held = {}
    for t, c in zip(tasks, ctxs):
        if c.split == "val":  # the search task's own test images: never searched on
            tctx = context(t, progress, "test")
            held[f"{t.name} (test split)"] = (tctx, gen.score(
                tctx, [best.genome], ["best-test"], spearman=True)[0].fitness)
    for h in holdout:
        hctx = context(h, progress, "test")
        held[h.name] = (hctx, gen.score(hctx, [best.genome], [f"best-{h.key}"],
                                        spearman=True)[0].fitness)
    path = write_proxy(gen, state, out, name, fits, {k: f for k, (_, f) in held.items()},
                       [t.label for t in tasks])
    return Report(path, name, workdir, gen.label, state, best,
                  {t.label: leaderboard_of(c, {name: f}) for t, c, f in zip(tasks, ctxs, fits)},
                  {k: leaderboard_of(c, {name: f}) for k, (c, f) in held.items()},
                  gen.usage if isinstance(gen, LLMGenerator) else None)


def format_report(rep: Report) -> str:
    """The lines `mqbench discover` prints."""
    st = rep.state
    lines = [(f"wrote {rep.path} (run folder {rep.workdir}: {CHECKPOINT}, {CANDIDATES}); "
              f"{st.evaluated} candidates, {st.invalid} invalid, {st.duplicates} duplicates")]
    if rep.usage is not None:
        u = rep.usage
        lines.append(f"{rep.label}: {u.requests} requests ({u.cached} cached, {u.retries} "
                     f"retries), {u.prompt_tokens}+{u.completion_tokens} tokens, "
                     f"${u.cost_usd:.4f}; pairs in {rep.workdir / PAIRS}; template "
                     f"probabilities {st.history[-1].get('probs')}")
    for d in st.generator.get("dpo", []):
        lines.append(f"generator DPO after generation {d['generation']}: {d['pairs']} pairs" + (
            f", logp margin {d['margin_before']:.3f} -> {d['margin_after']:.3f}, adapter "
            f"{rep.workdir / d['adapter']}" if d["pairs"] else " (no update)"))
    searched = _split_words(st.settings.fitness_split) or " (searched on its TEST split: " \
        "protocol-1 table, its test numbers are in-sample)"
    for label, rows in [(f"training task {k}{searched}", v) for k, v in rep.train.items()] + [
            (f"held-out task {k} (no tuning on it)", v) for k, v in rep.holdout.items()]:
        lines.append(f"\n{label}: fitness phi (table-lookup Acc), best first")
        for name, f in rows:
            mark = "  <- discovered" if name == rep.name else ""
            lines.append(f"  {name:16s} phi {f.phi:7.4f}  rho_sens {f.rho_sens:6.3f}  "
                         f"Acc {f.acc:.4f}  Spearman {f.spearman:6.3f}{mark}")
    return "\n".join(lines)
