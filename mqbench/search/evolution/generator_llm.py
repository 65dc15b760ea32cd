"""The LLM generators (`openai`, `hf`): TAP's Algorithm 1 on a chat backend (chat.py).

Generation 0 is `population` answers to the *initialization* prompt. Later, the scheduler
(scheduler.py) picks a template per prompt and the prompt carries a context window sampled
from the library of the best proxies so far (top 10% of everything evaluated); each prompt
gets `siblings` answers. An answer's code (the proxy contract: one `@proxy(kind="layer")`
function of `stats`) is imported and run **only inside the sandbox** (separate process;
time and memory limits; no network; no writes outside a scratch directory; `workers`
candidates at once); an answer without code, code that fails, hangs, or returns garbage
scores −inf, the reason is logged, and the loop goes on.

After each generation the scheduler is updated from the children's ranking with the DPO
loss, and preference pairs are built from siblings (`build_pairs`: the chosen answer valid
and at least `margin` fitter, near-duplicate answers dropped); all pairs so far are written
to `<run>/pairs.jsonl` (prompt/chosen/rejected) and the generation's pairs go to an
optional hook (generator_dpo.GeneratorDPO fine-tunes the hf model on them). The library,
the scheduler, the pairs and the hook's state live in `State.generator`, so they are
checkpointed with the loop.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import damage_matrix, load_proxy_file
from mqbench.proxy.sandbox import layers, run_limited
from mqbench.search.evolution.chat import Chat, Usage, extract
from mqbench.search.evolution.fitness import INVALID, Context, from_damage
from mqbench.search.evolution.loop import (
    CANDIDATES,
    Candidate,
    Scored,
    Settings,
    State,
    signature,
)
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
LIBRARY_SHARE = 0.1  # the library: this share of everything evaluated, best first
PAIRS = "pairs.jsonl"  # inside the run folder


def _show(c: dict) -> str:
    return (f"Fitness {c['phi']:.4f}. Reasoning: {c['reasoning'][:400]}\n```python\n"
            f"{c['code']}```")


def messages(user: str) -> list[dict]:
    """The chat messages of a prompt; a candidate records `user` as its 'prompt'."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def prompt(kind: str, library: list[dict], rng: np.random.Generator) -> list[dict]:
    """Chat messages for a template; `library` holds the best candidates so far, best first
    (dicts with 'phi', 'reasoning' and 'code')."""
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
    return messages("\n\n".join([CONTRACT] + [_show(p) for p in parents] + [task]))


def score_code(ctx: Context, code: str, scratch: Path, tag: str, timeout: float,
               mem_mb: int, spearman: bool = False) -> Scored:
    """Fitness of candidate source code, run isolated (the one place untrusted code runs)."""
    path = Path(scratch) / f"cand_{tag}.py"
    path.write_text(code)
    try:
        p = load_proxy_file(path)  # parsed here, run only in the sandbox
        raw = run_limited(p.fn, (ctx.stats,), name=f"candidate {tag}", timeout=timeout,
                          mem_mb=mem_mb)
        damage, sens = damage_matrix(p, raw, ctx.stats)  # plain data, checked here
    except MqbenchError as exc:
        return Scored(INVALID, (), str(exc))
    fit = from_damage(ctx, damage, sens, spearman)
    if not math.isfinite(fit.phi):
        return Scored(fit, (), "constant or non-finite scores")
    return Scored(fit, signature(sens), "")


@dataclass(frozen=True)
class Pair:
    messages: list[dict]  # the prompt both answers were sampled from
    chosen: str
    rejected: str
    gap: float  # fitness(chosen) − fitness(rejected); inf when the rejected one is invalid


def _answer(c: dict) -> str:
    return c.get("answer") or f"{c['reasoning']}\n```python\n{c['code']}```"


def _near_duplicate(a: str, b: str, limit: float) -> bool:
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    # The quick ratios are upper bounds of ratio(): most unrelated pairs stop there.
    return m.real_quick_ratio() > limit and m.quick_ratio() > limit and m.ratio() > limit


def build_pairs(children: list[dict], margin: float, max_similarity: float = 0.95) -> list[Pair]:
    """Preference pairs among children of the same prompt.

    Args:
        children: candidates with 'prompt' (the user message they answer), 'phi' (fitness,
            −inf when invalid) and the answer ('answer', or 'reasoning' + 'code').
        margin: minimum fitness gap chosen − rejected; invalid code is never chosen.
        max_similarity: answers with a difflib ratio above this are near-duplicates.
    """
    groups: dict[str, list[dict]] = {}
    for c in children:
        groups.setdefault(c["prompt"], []).append(c)
    pairs = []
    for user, group in groups.items():
        for a in group:
            if not math.isfinite(a["phi"]):
                continue
            for b in group:
                gap = a["phi"] - b["phi"]  # inf when b is invalid
                if b is a or not gap >= margin:
                    continue
                chosen, rejected = _answer(a), _answer(b)
                if not _near_duplicate(chosen, rejected, max_similarity):
                    pairs.append(Pair(messages(user), chosen, rejected, gap))
    return pairs


class LoopHook(Protocol):
    """Sees each generation's preference pairs (e.g. generator_dpo.GeneratorDPO); keeps its
    state in the generator's checkpointed state dict."""

    def start(self, saved: dict) -> None: ...

    def after_generation(self, generation: int, pairs: list[Pair], saved: dict) -> None: ...


@dataclass
class LLMGenerator:
    """Proposals from a chat backend, scored in the sandbox (see the module docstring)."""

    chat: Chat
    settings: Settings
    workdir: Path  # the run folder: sandbox scratch files and pairs.jsonl
    hook: LoopHook | None = None

    @property
    def name(self) -> str:
        return self.chat.name

    @property
    def label(self) -> str:
        return self.chat.label

    @property
    def usage(self) -> Usage:
        return self.chat.usage

    def start(self, state: State) -> None:
        layers()  # a machine without the sandbox fails here, before any answer is paid for
        g = state.generator
        g.setdefault("scheduler", Scheduler(TEMPLATES).state())
        g.setdefault("library", [])
        g.setdefault("pairs", [])
        self.sched = Scheduler(TEMPLATES, logits=np.asarray(g["scheduler"]["logits"]))
        self.asked = 0  # initialization answers requested so far (each round: new seeds)
        (Path(self.workdir) / "scratch").mkdir(parents=True, exist_ok=True)
        if self.hook is not None:
            self.hook.start(g)

    def _genomes(self, template: str, msgs: list[dict], n: int, seed: int) -> list[dict]:
        out = []
        for a in self.chat.complete(msgs, n, temperature=self.settings.temperature, seed=seed):
            reasoning, code = extract(a.text) or ("", "")
            out.append({"template": template, "prompt": msgs[-1]["content"], "answer": a.text,
                        "reasoning": reasoning, "code": code})
        return out

    def propose(self, state: State, n: int, pick, rng: np.random.Generator) -> list[dict]:
        s = self.settings
        if state.generation == 0:
            seed = s.seed + self.asked
            self.asked += n
            return self._genomes("init", prompt("init", [], rng), n, seed)
        out: list[dict] = []
        j = 0
        while len(out) < n:
            template = self.sched.sample(rng)
            msgs = prompt(template, state.generator["library"], rng)
            seed = s.seed * 100_003 + state.generation * 1_009 + j
            out += self._genomes(template, msgs, min(s.siblings, n - len(out)), seed)
            j += 1
        return out

    def score(self, ctx: Context, genomes: list[dict], tags: list[str],
              spearman: bool = False) -> list[Scored]:
        s = self.settings
        out = [Scored(INVALID, (), "no code block")] * len(genomes)
        todo = [i for i, g in enumerate(genomes) if g["code"]]
        # Each call forks its own confined child; threads only wait on them.
        with ThreadPoolExecutor(max_workers=s.workers) as pool:
            results = pool.map(lambda i: score_code(
                ctx, genomes[i]["code"], Path(self.workdir) / "scratch", tags[i], s.timeout,
                s.mem_mb, spearman), todo)
            for i, r in zip(todo, results):
                out[i] = r
        return out

    def observe(self, state: State, children: list[Candidate]) -> dict:
        g, s = state.generator, self.settings
        if state.generation > 0:
            self.sched.update([(c.genome["template"], c.phi) for c in children])
            g["scheduler"] = self.sched.state()
        pool = {c["order"]: c for c in g["library"]}
        for c in state.members + [c for c in children if not c.why]:
            pool[c.order] = {"phi": c.phi, "order": c.order, "reasoning": c.genome["reasoning"],
                             "code": c.genome["code"]}
        size = max(1, math.ceil(LIBRARY_SHARE * state.evaluated))
        g["library"] = sorted(pool.values(), key=lambda c: (c["phi"], c["order"]),
                              reverse=True)[:size]
        pairs = build_pairs([{**c.genome, "phi": c.phi} for c in children], s.margin)
        g["pairs"] += [{"prompt": p.messages[-1]["content"], "chosen": p.chosen,
                        "rejected": p.rejected} for p in pairs]
        path = Path(self.workdir) / PAIRS
        path.write_text("".join(json.dumps(p) + "\n" for p in g["pairs"]))
        if self.hook is not None:
            self.hook.after_generation(state.generation, pairs, g)
        return {"probs": self.sched.probs().round(4).tolist()}

    def render(self, genome: dict, name: str) -> tuple[str, str]:
        code, n = _NAME.subn(lambda m: f'{m.group(1)}"{name}"', genome["code"], count=1)
        if not n:
            raise MqbenchError(f"cannot name the discovered proxy {name!r}: its code has no "
                               f"@proxy(name=...); take it from {Path(self.workdir) / CANDIDATES}")
        return f"Reasoning: {genome['reasoning']}", code


# The decorator's name: @proxy(name="x", ...) or @proxy("x", ...).
_NAME = re.compile(r"""(@\w*\.?proxy\s*\(\s*(?:[^)]*?\bname\s*=\s*)?)(["'])[^"']*\2""")
