"""TAP's loop (Algorithm 1) with an LLM generator: prompts, isolated scoring, DPO scheduler.

Initial population: `population` answers to the *initialization* prompt. Each generation
the scheduler picks a template per child, the prompt carries a context window sampled from
the library of the best proxies so far (top 10% of everything evaluated), and the answer's
code (the proxy contract: one `@proxy(kind="layer")` function of `stats`) is imported and
run **only inside the sandbox** (separate process; time and memory limits; no network; no
writes outside a scratch directory; `workers` candidates at once). Its per-module output is scored by the fast fitness
(fitness.py); an answer without code, code that fails, hangs, or returns garbage scores
−inf and is counted, and the loop goes on. The population keeps the best N, ties going to
the newer. Preference pairs (children of the same prompt, fitness margin, near-duplicate
code removed) are exported as a prompt/chosen/rejected JSONL dataset; the scheduler is
updated from the generation's ranking with the DPO loss (scheduler.py). State is saved
after every generation; generator answers are cached, so a resumed run pays nothing twice.
An optional hook (`LoopHook`, e.g. generator_dpo.GeneratorDPO) sees each generation's
children before the checkpoint and keeps its own state in `LLMState.generator`.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import Proxy, damage_matrix, load_proxy_file
from mqbench.proxy.sandbox import run_limited
from mqbench.search.evolution.fitness import Context, from_damage
from mqbench.search.evolution.generators import Generator, extract
from mqbench.search.evolution.scheduler import Scheduler

SYSTEM = ("You design training-free sensitivity proxies for mixed-precision quantization. "
          "Answer with a short reasoning paragraph, then one ```python code block``` holding a "
          "complete proxy file.")

CONTRACT = '''The proxy file must look like this (one decorated function, numpy/torch only):

```python
from mqbench.proxy import proxy

@proxy(name="candidate", version=1, kind="layer")
def candidate(stats):
    # one float per module in stats.modules: higher = more sensitive (needs more bits)
    return [float(stats.hessian_trace[i] / stats.params[i]) for i, m in enumerate(stats.modules)]
```
`stats` offers (per module name m unless noted): weights[m], grads[m] (dL/dW), inputs[m],
outputs[m] (activations on a calibration batch), hessian_trace / hessian_eig / params / macs /
depth (numpy arrays indexed like stats.modules), perturbation (array [module, bit]:
||Q_b(W)-W||^2), virtual_grads[m], synflow[m]. Fitness = 0.1 * Spearman(sensitivity,
measured per-layer loss increase) + 0.9 * accuracy of the bit allocation it implies.'''

TEMPLATES = ("mutation-top", "mutation-random", "crossover-top", "crossover-random")


def _show(c: dict) -> str:
    return (f"Fitness {c['phi']:.4f}. Reasoning: {c['reasoning'][:400]}\n```python\n"
            f"{c['code']}```")


def prompt(kind: str, library: list[dict], rng: np.random.Generator) -> list[dict]:
    """Chat messages for a template; `library` is the best candidates so far, best first."""
    if kind == "init" or not library:
        task = "Propose a new, original proxy."
        parents = []
    else:
        pick_top = kind.endswith("top")
        pool = library[:max(1, len(library) // 2)] if pick_top else library
        k = 2 if kind.startswith("crossover") and len(pool) > 1 else 1
        parents = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
        task = ("Combine the ideas of these two proxies into a better one." if k == 2 else
                "Improve this proxy with one meaningful change.")
    return chat("\n\n".join([CONTRACT] + [_show(p) for p in parents] + [task]))


def chat(user: str) -> list[dict]:
    """The chat messages of a prompt; children record `user` as their 'prompt'."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _run_candidate(path: str, stats):
    """(In the sandbox) import the candidate file and call its proxy."""
    p = load_proxy_file(path)
    if p.kind not in ("layer", "layer_bit"):
        raise ValueError(f"kind must be 'layer' or 'layer_bit', got {p.kind!r}")
    return p.kind, p.fn(stats)


@dataclass(frozen=True)
class LLMSettings:
    task: str
    generations: int = 10
    population: int = 16
    children: int = 8
    seed: int = 0
    temperature: float = 0.8
    timeout: float = 10.0
    mem_mb: int = 2048
    margin: float = 0.01  # minimum fitness gap for a preference pair
    workers: int = 2  # candidates scored at once, each in its own sandboxed process


@dataclass
class LLMState:
    settings: LLMSettings
    generation: int = 0
    members: list[dict] = field(default_factory=list)
    library: list[dict] = field(default_factory=list)
    evaluated: int = 0
    invalid: int = 0
    history: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    scheduler: dict = field(default_factory=dict)
    rng: dict | None = None
    generator: dict = field(default_factory=dict)  # the hook's state (e.g. LoRA adapter)


class LoopHook(Protocol):
    def start(self, state: LLMState) -> None: ...

    def after_generation(self, state: LLMState, children: list[dict]) -> None: ...


def score_code(ctx: Context, code: str, workdir: Path, tag: str, timeout: float,
               mem_mb: int) -> tuple[float, str]:
    """(fitness, why-invalid) of candidate source code, run isolated."""
    path = workdir / f"cand_{tag}.py"
    path.write_text(code)
    try:
        kind, raw = run_limited(_run_candidate, (str(path), ctx.stats), name=f"candidate {tag}",
                                timeout=timeout, mem_mb=mem_mb)
        damage, sens = damage_matrix(Proxy("candidate", 1, "", kind, None), raw, ctx.stats)
    except MqbenchError as exc:
        return -math.inf, str(exc)
    fit = from_damage(ctx, damage, sens, spearman=False)
    return fit.phi, "" if math.isfinite(fit.phi) else "constant or non-finite scores"


def _similar(a: str, b: str) -> bool:
    norm = lambda s: " ".join(s.split())  # noqa: E731
    return norm(a) == norm(b)


def run_llm(ctx: Context, gen: Generator, settings: LLMSettings, workdir: Path,
            resume: bool = False, progress: bool = True,
            hook: LoopHook | None = None) -> LLMState:
    """Run (or resume) the LLM loop; checkpoint and pairs live in `workdir`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "checkpoint.json"
    sched = Scheduler(TEMPLATES)
    if resume and ckpt.exists():
        try:
            data = json.loads(ckpt.read_text())
            state = LLMState(LLMSettings(**data["settings"]), **{
                k: data[k] for k in ("generation", "members", "library", "evaluated",
                                     "invalid", "history", "pairs", "scheduler", "rng")},
                             generator=data.get("generator", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise MqbenchError(f"cannot resume from {ckpt}: malformed checkpoint ({exc}); "
                               f"delete it or start without --resume") from None
        sched.logits = np.asarray(state.scheduler["logits"], dtype=np.float64)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        state.settings = settings
    else:
        state = LLMState(settings)
        rng = np.random.default_rng(settings.seed)
    if hook is not None:
        hook.start(state)

    def evaluate(batch: list[tuple[str, str, list]]) -> list[dict]:
        """Score [(answer, template, messages)] in parallel isolated workers, in order."""
        cands = []
        for answer, template, messages in batch:
            state.evaluated += 1
            cand = {"template": template, "generation": state.generation,
                    "order": state.evaluated, "phi": -math.inf, "why": "no code block",
                    "reasoning": "", "code": "", "prompt": messages[-1]["content"],
                    "answer": answer}
            parsed = extract(answer)
            if parsed is not None:
                cand["reasoning"], cand["code"] = parsed
            cands.append(cand)
        todo = [c for c in cands if c["code"]]
        # Each call forks its own confined child; threads only wait on them.
        with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
            results = pool.map(lambda c: score_code(ctx, c["code"], workdir / "scratch",
                                                    str(c["order"]), settings.timeout,
                                                    settings.mem_mb), todo)
            for c, (phi, why) in zip(todo, results):
                c["phi"], c["why"] = phi, why
        state.invalid += sum(not math.isfinite(c["phi"]) for c in cands)
        return cands

    (workdir / "scratch").mkdir(exist_ok=True)
    if not state.members:
        msgs = prompt("init", [], rng)
        answers = gen.complete(msgs, settings.population, temperature=settings.temperature,
                               seed=settings.seed)
        state.members = evaluate([(a.text, "init", msgs) for a in answers])
        if hook is not None:
            hook.after_generation(state, state.members)
        _finish(state, sched, rng, [], ckpt)

    bar = tqdm(total=settings.generations, initial=state.generation, desc="discover",
               disable=not progress, unit="gen")
    while state.generation < settings.generations:
        state.generation += 1
        batch, by_prompt = [], {}
        for j in range(settings.children):
            template = sched.sample(rng)
            msgs = prompt(template, state.library, rng)
            seed = settings.seed * 100_003 + state.generation * 1_009 + j
            batch += [(a.text, template, msgs) for a in
                      gen.complete(msgs, 2, temperature=settings.temperature, seed=seed)]
        children = evaluate(batch)
        for c in children:
            by_prompt.setdefault(c["prompt"], []).append(c)
        for group in by_prompt.values():  # children of one prompt: preference pairs
            for a in group:
                for b in group:
                    if (a["phi"] - b["phi"] >= settings.margin and a["code"]
                            and not _similar(a["code"], b["code"])):
                        state.pairs.append({"prompt": a["prompt"], "chosen": _answer(a),
                                            "rejected": _answer(b)})
        sched.update([(c["template"], c["phi"]) for c in children])
        if hook is not None:
            hook.after_generation(state, children)
        _finish(state, sched, rng, children, ckpt)
        bar.update()
        bar.set_postfix(best=f"{state.history[-1]['best']:.4f}", evaluated=state.evaluated,
                        invalid=f"{state.invalid / max(1, state.evaluated):.0%}")
    bar.close()
    with open(workdir / "pairs.jsonl", "w") as f:
        for p in state.pairs:
            f.write(json.dumps(p) + "\n")
    return state


def _answer(c: dict) -> str:
    return f"{c['reasoning']}\n```python\n{c['code']}```"


def _finish(state: LLMState, sched: Scheduler, rng, children: list[dict], ckpt: Path) -> None:
    pool = state.members + children
    pool.sort(key=lambda c: (c["phi"], c["order"]), reverse=True)  # ties: the newer first
    state.members = pool[:state.settings.population]
    everything = sorted(state.library + [c for c in pool if math.isfinite(c["phi"])],
                        key=lambda c: (c["phi"], c["order"]), reverse=True)
    unique = {c["order"]: c for c in everything}
    lib = sorted(unique.values(), key=lambda c: (c["phi"], c["order"]), reverse=True)
    state.library = lib[:max(1, math.ceil(0.1 * max(state.evaluated, 1)))]
    best = state.members[0]
    state.history.append({"generation": state.generation, "best": best["phi"],
                          "evaluated": state.evaluated, "invalid": state.invalid,
                          "probs": sched.probs().round(4).tolist()})
    state.scheduler = sched.state()
    state.rng = rng.bit_generator.state
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.write_text(json.dumps(asdict(state), allow_nan=True))
    os.replace(tmp, ckpt)
