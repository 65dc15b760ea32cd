"""The discovery loop, one for every candidate generator (symbolic, openai, hf).

A generator (`Generator`) proposes candidates and scores them with TAP's fitness
(fitness.py); the loop owns everything else. Generation 0 fills the population with fresh
proposals (at most `init_tries` × population of them; the population keeps their order).
Each later generation asks for `children` proposals (parents picked by tournament, `pick`),
screens them: invalid ones (−inf fitness) and those that duplicate the behaviour of a
current member or of an earlier child of the same generation (same rank order of
per-module sensitivities: EMQ's diversity rule, which also stops one good candidate from
filling the population with copies) are counted and never kept; then the best
`population` of parents + children survive, ties going to the newer (elitism: the
best-so-far fitness never decreases).

With a run folder, every evaluated candidate is appended to `candidates.jsonl` (genome,
fitness, why it was dropped) and after every generation the whole state (population,
counters, history, the random generator's state and the generator's own state) is written
atomically to `checkpoint.json`, so `resume` continues exactly where a run stopped and
gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from mqbench.errors import MqbenchError
from mqbench.progress import bar as progress_bar
from mqbench.search.evolution.fitness import INVALID, Context, Fitness

CHECKPOINT_VERSION = 2
CHECKPOINT = "checkpoint.json"  # inside the run folder
CANDIDATES = "candidates.jsonl"
GENERATORS = ("symbolic", "random", "openai", "hf")  # random: random search, same space
DUPLICATE = "duplicate behaviour"
# Settings a resumed run may change: how long it runs, how many sandboxes it uses at once.
_RESUMABLE = ("generations", "workers", "budget")


# A bound on one run, so a typo (--generations 1000000000) is refused instead of running
# for years; 10,000 x 64 symbolic candidates is about 4 minutes, LLM ones cost far more.
MAX_GENERATIONS = 10_000
MAX_POPULATION = 10_000


@dataclass(frozen=True)
class Settings:
    """What defines a run; a checkpoint is only resumed under the same settings.

    Fields marked symbolic or LLM are read by those generators only. `children` and
    `init_tries` left at 0 take the generator's default (stored resolved).
    """

    task: str  # the search task's label; several search tasks: their labels joined by ","
    generator: str = "symbolic"  # symbolic | random | openai | hf
    generations: int = 30
    population: int = 64
    seed: int = 0
    children: int = 0  # per generation; 0: population (symbolic), 16 (LLM: 8 prompts x 2)
    init_tries: int = 0  # generation 0 proposes <= init_tries x population; 0: 50 / LLM 1
    tournament: int = 4  # symbolic: parents are the best of this many random members
    p_cross: float = 0.5  # symbolic: crossover probability (else mutation)
    max_depth: int = 4  # symbolic: tree depth limit
    siblings: int = 2  # LLM: answers per prompt (preference pairs are siblings)
    temperature: float = 0.8  # LLM sampling
    max_new_tokens: int = 512  # hf: answer length limit in tokens
    timeout: float = 10.0  # LLM: seconds per candidate in the sandbox
    mem_mb: int = 2048  # LLM: memory per candidate in the sandbox
    margin: float = 0.01  # LLM: minimum fitness gap of a preference pair
    dpo_every: int = 1  # hf: one DPO update of the generator every K generations (0: never)
    workers: int = 2  # LLM: candidates scored at once, each in its own sandboxed process
    fitness_split: str = "val"  # the table split candidates are ranked on (fitness.py)
    budget: int = 0  # candidate evaluations at most (0: only `generations` bounds the run)

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise MqbenchError(f"unknown generator {self.generator!r}; choose one of "
                               f"{', '.join(GENERATORS)}")
        if self.generations < 0 or self.population < 2:
            raise MqbenchError("need --generations >= 0 and --population >= 2")
        if self.generations > MAX_GENERATIONS or self.population > MAX_POPULATION:
            raise MqbenchError(f"--generations {self.generations} / --population "
                               f"{self.population}: at most {MAX_GENERATIONS} generations of "
                               f"{MAX_POPULATION} per run; --resume a checkpoint to go further")
        if self.fitness_split not in ("val", "test"):
            raise MqbenchError(f"--fitness-split {self.fitness_split!r}: choose val (the "
                               f"validation split, default) or test (protocol-1 tables only)")
        if self.budget < 0:
            raise MqbenchError(f"--budget {self.budget}: need >= 0 (0: no limit)")
        if self.dpo_every < 0 or self.max_new_tokens < 1:
            raise MqbenchError("need --dpo-every >= 0 and --max-new-tokens >= 1")
        if min(self.children, self.init_tries) < 0 or min(self.tournament, self.siblings,
                                                           self.max_depth, self.workers) < 1:
            raise MqbenchError("need children, init_tries >= 0 and tournament, siblings, "
                               "max_depth, workers >= 1")
        llm = self.generator not in ("symbolic", "random")
        if not self.children:  # frozen: resolved once, so checkpoints store the real value
            object.__setattr__(self, "children", 16 if llm else self.population)
        if not self.init_tries:
            object.__setattr__(self, "init_tries", 1 if llm else 50)


@dataclass(frozen=True)
class Candidate:
    """One evaluated candidate. `genome` is JSON-able (tuples, dicts, strings, numbers)."""

    genome: object  # an expression tree (symbolic) or an LLM answer's parts
    phi: float
    rho_sens: float
    acc: float
    born: int  # generation; 0 = initial population
    order: int  # evaluation counter: the tie-break towards newer candidates
    signature: tuple = ()  # behaviour (rank order of per-module sensitivity); () if invalid
    why: str = ""  # '' for a candidate that may be kept; else why invalid, or DUPLICATE


@dataclass(frozen=True)
class Scored:
    """A generator's verdict on one genome."""

    fitness: Fitness
    signature: tuple = ()  # () when invalid
    why: str = ""  # why invalid ('' when valid)


@dataclass
class State:
    settings: Settings
    generation: int = 0
    members: list[Candidate] = field(default_factory=list)  # the population
    evaluated: int = 0
    invalid: int = 0
    duplicates: int = 0
    history: list[dict] = field(default_factory=list)  # one entry per finished generation
    rng: dict | None = None
    generator: dict = field(default_factory=dict)  # the generator's own state (JSON-able)

    @property
    def best(self) -> Candidate | None:
        return max(self.members, key=lambda m: (m.phi, m.order), default=None)


class Generator(Protocol):
    """A candidate generator: what it proposes and how a proposal is scored."""

    name: str  # Settings.generator
    label: str  # for the discovered file's header, e.g. "openai, model gpt-4o"

    def start(self, state: State) -> None:
        """Called once per run, fresh or resumed, before anything is proposed."""

    def propose(self, state: State, n: int, pick: Callable[[], Candidate],
                rng: np.random.Generator) -> list:
        """Up to `n` genomes for generation `state.generation` (0: the initial population);
        `pick()` draws a parent from the population by tournament."""

    def score(self, ctx: Context, genomes: list, tags: list[str],
              spearman: bool = False) -> list[Scored]:
        """Fitness of each genome on `ctx` (`tags` name them, e.g. for scratch files)."""

    def observe(self, state: State, children: list[Candidate]) -> dict:
        """After selection, before the checkpoint: see every candidate of the generation;
        returns extra entries for the generation's history line."""

    def render(self, genome, name: str) -> tuple[str, str]:
        """(explanation for the docstring, proxy source registering `name`)."""


def score_on(gen: Generator, contexts: list[Context], genomes: list, tags: list[str],
             spearman: bool = False) -> list[Scored]:
    """`gen`'s verdicts on one or several search tasks. Several: φ, ρ_sens, Acc (and the
    config Spearman) are the means over the tasks, each task with its own α; the behaviour
    is the rank vectors on every task together; invalid on any task is invalid."""
    if len(contexts) == 1:
        return gen.score(contexts[0], genomes, tags, spearman)
    per = [gen.score(c, genomes, [f"{t}-t{i}" for t in tags], spearman)
           for i, c in enumerate(contexts)]
    out = []
    for j in range(len(genomes)):
        verdicts = [p[j] for p in per]
        bad = next((v for v in verdicts if not math.isfinite(v.fitness.phi) or not v.signature),
                   None)
        if bad is not None:
            out.append(Scored(INVALID, (), bad.why or "invalid"))
            continue
        mean = [float(np.mean([getattr(v.fitness, k) for v in verdicts]))
                for k in ("phi", "rho_sens", "acc", "spearman")]
        out.append(Scored(Fitness(*mean), tuple(v.signature for v in verdicts), ""))
    return out


def signature(values) -> tuple:
    """A candidate's behaviour: the rank order of its per-module (or unit) sensitivities."""
    return tuple(np.argsort(np.asarray(values, dtype=np.float64).ravel(),
                            kind="stable").tolist())


def tournament(members: list[Candidate], rng: np.random.Generator, k: int) -> Candidate:
    """The best of `k` members drawn without replacement (ties: the newer)."""
    if not members:
        raise MqbenchError("the population is empty: no parent to pick")
    pick = rng.choice(len(members), size=min(k, len(members)), replace=False)
    return max((members[i] for i in pick), key=lambda m: (m.phi, m.order))


def _thaw(obj):
    """JSON lists back to tuples (trees and signatures), recursively."""
    if isinstance(obj, list):
        return tuple(_thaw(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _thaw(v) for k, v in obj.items()}
    return obj


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a run killed mid-write keeps the previous file


def save(state: State, path: Path) -> None:
    """Write the state to a checkpoint file, atomically."""
    data = {"version": CHECKPOINT_VERSION, "settings": asdict(state.settings),
            "generation": state.generation, "evaluated": state.evaluated,
            "invalid": state.invalid, "duplicates": state.duplicates,
            "history": state.history, "rng": state.rng,
            "members": [asdict(m) for m in state.members], "generator": state.generator}
    _atomic_write(Path(path), json.dumps(data, indent=1, allow_nan=True))


def load(path: Path, settings: Settings) -> State:
    """The state stored in a checkpoint file, to be continued under `settings`."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {data.get('version')}, expected "
                             f"{CHECKPOINT_VERSION}")
        stored = Settings(**data["settings"])
        members = [Candidate(**{**m, "genome": _thaw(m["genome"]),
                                "signature": _thaw(m["signature"])}) for m in data["members"]]
        state = State(stored, data["generation"], members, data["evaluated"], data["invalid"],
                      data["duplicates"], data["history"], data["rng"], data["generator"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, MqbenchError) as exc:
        raise MqbenchError(f"cannot resume from {path}: malformed checkpoint ({exc}); delete "
                           f"it or start without --resume") from None
    changed = [f.name for f in fields(Settings) if f.name not in _RESUMABLE
               and getattr(stored, f.name) != getattr(settings, f.name)]
    if changed:
        raise MqbenchError(f"cannot resume {path}: it was made with other settings "
                           f"({', '.join(changed)}); use the same ones or a new checkpoint")
    state.settings = settings
    return state


def _plain(v: float) -> float | None:
    return v if math.isfinite(v) else None  # the log is plain JSON: null, not -Infinity


def _log_line(c: Candidate) -> str:
    return json.dumps({"order": c.order, "generation": c.born, "phi": _plain(c.phi),
                       "rho_sens": _plain(c.rho_sens), "acc": _plain(c.acc), "why": c.why,
                       "genome": c.genome})


def _truncate_log(path: Path, evaluated: int) -> None:
    """Drop log lines of candidates evaluated after the checkpoint (a run killed mid-way)."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["order"] <= evaluated]
        _atomic_write(path, "".join(line + "\n" for line in keep))


def run(ctx: Context | list[Context], gen: Generator, settings: Settings,
        workdir: Path | None = None, *, resume: bool = False, progress: bool = True,
        stop_after: int | None = None) -> State:
    """Evolve until `settings.generations` (or `settings.budget` evaluations) on one search
    task's fitness context or the mean over several (`score_on`); the run folder `workdir`
    holds the checkpoint and the candidate log (None: nothing is written). `stop_after`
    ends early after that many generations of this call (tests simulate a kill)."""
    contexts = list(ctx) if isinstance(ctx, list | tuple) else [ctx]
    if gen.name != settings.generator:
        raise MqbenchError(f"settings name generator {settings.generator!r} but the "
                           f"generator given is {gen.name!r}")
    workdir = Path(workdir) if workdir is not None else None
    ckpt = workdir / CHECKPOINT if workdir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = load(ckpt, settings)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        _truncate_log(workdir / CANDIDATES, state.evaluated)
    else:
        state = State(settings)
        rng = np.random.default_rng(settings.seed)
        if workdir is not None:
            _atomic_write(workdir / CANDIDATES, "")
    gen.start(state)
    seen: set = set()  # behaviours in the population (+ this generation's children so far)

    def pick() -> Candidate:
        return tournament(state.members, rng, settings.tournament)

    def screen(genomes: list) -> list[Candidate]:
        first = state.evaluated + 1
        scored = score_on(gen, contexts, genomes, [str(first + i) for i in range(len(genomes))])
        out = []
        for genome, s in zip(genomes, scored):
            state.evaluated += 1
            f, sig, why = s.fitness, s.signature, s.why
            if not math.isfinite(f.phi) or not sig:
                state.invalid += 1
                f, sig, why = INVALID, (), why or "invalid"
            elif sig in seen:
                state.duplicates += 1
                why = DUPLICATE
            else:
                seen.add(sig)
            out.append(Candidate(genome, f.phi, f.rho_sens, f.acc, state.generation,
                                 state.evaluated, sig, why))
        if workdir is not None:
            with open(workdir / CANDIDATES, "a") as log:
                log.writelines(_log_line(c) + "\n" for c in out)
        return out

    def allowed(n: int) -> int:  # proposals the evaluation budget still allows
        return n if not settings.budget else max(0, min(n, settings.budget - state.evaluated))

    def finish(children: list[Candidate]) -> None:
        extra = gen.observe(state, children)
        best = state.best or _EMPTY
        state.history.append({"generation": state.generation, "best": best.phi,
                              "rho_sens": best.rho_sens, "acc": best.acc,
                              "evaluated": state.evaluated, "invalid": state.invalid,
                              "duplicates": state.duplicates, **extra})
        state.rng = rng.bit_generator.state
        if ckpt is not None:
            save(state, ckpt)

    if not state.history:  # a fresh run: the initial population
        children: list[Candidate] = []
        cap = settings.init_tries * settings.population
        while len(state.members) < settings.population and len(children) < cap:
            n = allowed(min(settings.population - len(state.members), cap - len(children)))
            batch = gen.propose(state, n, pick, rng) if n else []
            if not batch:
                break
            new = screen(batch)
            children += new
            state.members += [c for c in new if not c.why]
        finish(children)

    bar = progress_bar(settings.generations, "discover", progress, initial=state.generation,
                       unit="gen")
    done_now = 0
    while state.generation < settings.generations:
        if stop_after is not None and done_now >= stop_after:
            break
        if not allowed(settings.children):
            break  # the evaluation budget is spent
        state.generation += 1
        seen.clear()
        seen.update(m.signature for m in state.members)
        children = screen(gen.propose(state, allowed(settings.children), pick, rng))
        pool = state.members + [c for c in children if not c.why]
        pool.sort(key=lambda m: (m.phi, m.order), reverse=True)  # ties: the newer first
        state.members = pool[:settings.population]
        finish(children)
        done_now += 1
        bar.update()
        bar.set_postfix(best=f"{state.history[-1]['best']:.4f}", evaluated=state.evaluated,
                        invalid=f"{state.invalid / max(1, state.evaluated):.0%}")
    bar.close()
    return state


_EMPTY = Candidate(None, -math.inf, math.nan, math.nan, 0, 0)  # history of an empty population
