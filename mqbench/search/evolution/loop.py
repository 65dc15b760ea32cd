"""The discovery loop (symbolic generator): evolve expression trees, checkpoint, resume.

One generation: pick parents by tournament from the population, make `population`
children by crossover (probability `p_cross`) or mutation, screen them (invalid → −inf,
counted), drop children that duplicate the behaviour of a current member or of an earlier child of the same
generation (same rank order of per-module sensitivities: EMQ's diversity rule, which also stops one good tree from filling
the population with copies), and keep the best `population` of parents + children, ties
going to the newer. The best-so-far fitness therefore never decreases.

After every generation the whole state (population, counters, history and the random
generator's state) is written atomically to a JSON checkpoint, so `--resume` continues
exactly where a run stopped and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import list_proxies
from mqbench.search.evolution import symbolic as T
from mqbench.search.evolution.features import module_features
from mqbench.search.evolution.fitness import (
    Context,
    Fitness,
    context,
    from_sensitivity,
    proxy_fitness,
)

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """What defines a run; a checkpoint is only resumed under the same settings."""

    task: str
    generations: int = 30
    population: int = 64
    seed: int = 0
    p_cross: float = 0.5
    tournament: int = 4
    max_depth: int = 4


@dataclass
class Member:
    tree: tuple
    phi: float
    rho_sens: float
    acc: float
    born: int  # generation; 0 = initial population
    order: int  # evaluation counter: the tie-break towards newer members


@dataclass
class State:
    settings: Settings
    generation: int = 0
    members: list[Member] = field(default_factory=list)
    evaluated: int = 0
    invalid: int = 0
    duplicates: int = 0
    history: list[dict] = field(default_factory=list)
    rng: dict | None = None

    @property
    def best(self) -> Member:
        return max(self.members, key=lambda m: (m.phi, m.order))


def _signature(values: np.ndarray) -> tuple:
    return tuple(np.argsort(values, kind="stable").tolist())


def _score(ctx: Context, feats, tree, generation: int, order: int) -> tuple[Member, tuple]:
    with np.errstate(all="ignore"):
        values = T.evaluate(tree, feats)
    fit = from_sensitivity(ctx, values) if np.all(np.isfinite(values)) else None
    if fit is None or not math.isfinite(fit.phi):
        return Member(tree, -math.inf, math.nan, math.nan, generation, order), ()
    return Member(tree, fit.phi, fit.rho_sens, fit.acc, generation, order), _signature(values)


def save(state: State, path: Path) -> None:
    data = {"version": CHECKPOINT_VERSION, "settings": asdict(state.settings),
            "generation": state.generation, "evaluated": state.evaluated,
            "invalid": state.invalid, "duplicates": state.duplicates,
            "history": state.history, "rng": state.rng,
            "members": [asdict(m) for m in state.members]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    os.replace(tmp, path)  # a run killed mid-write keeps the previous checkpoint


def load(path: Path, settings: Settings) -> State:
    try:
        data = json.loads(Path(path).read_text())
        if data.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {data.get('version')}")
        stored = Settings(**data["settings"])
        members = [Member(T.as_tree(m["tree"]), m["phi"], m["rho_sens"], m["acc"], m["born"],
                          m["order"]) for m in data["members"]]
        state = State(stored, data["generation"], members, data["evaluated"], data["invalid"],
                      data["duplicates"], data["history"], data["rng"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise MqbenchError(f"cannot resume from {path}: malformed checkpoint ({exc}); delete "
                           f"it or start without --resume") from None
    changed = [k for k in ("task", "population", "seed", "p_cross", "tournament", "max_depth")
               if getattr(stored, k) != getattr(settings, k)]
    if changed:
        raise MqbenchError(f"cannot resume {path}: it was made with other settings "
                           f"({', '.join(changed)}); use the same ones or a new checkpoint")
    state.settings = settings  # only `generations` may grow
    return state


def run(ctx: Context, settings: Settings, checkpoint: Path | None = None,
        resume: bool = False, progress: bool = True, stop_after: int | None = None) -> State:
    """Evolve until `settings.generations`; `stop_after` ends early (tests simulate a kill)."""
    feats = module_features(ctx.stats)
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load(checkpoint, settings)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
    else:
        state = State(settings)
        rng = np.random.default_rng(settings.seed)
    seen: set = set()  # behaviours in the current population (+ this generation's children)

    def reset_seen():
        seen.clear()
        with np.errstate(all="ignore"):
            seen.update(_signature(T.evaluate(m.tree, feats)) for m in state.members)

    def make(tree, generation):
        state.evaluated += 1
        member, sig = _score(ctx, feats, tree, generation, state.evaluated)
        if not sig:
            state.invalid += 1
            return None
        if sig in seen:
            state.duplicates += 1
            return None
        seen.add(sig)
        return member

    if not state.members:  # the initial population
        tries = 0
        while len(state.members) < settings.population and tries < 50 * settings.population:
            tries += 1
            m = make(T.random_tree(rng, settings.max_depth - 1), 0)
            if m is not None:
                state.members.append(m)
        _log(state)
        state.rng = rng.bit_generator.state
        if checkpoint is not None:
            save(state, checkpoint)

    bar = tqdm(total=settings.generations, initial=state.generation, desc="discover",
               disable=not progress, unit="gen")
    done_now = 0
    while state.generation < settings.generations:
        if stop_after is not None and done_now >= stop_after:
            break
        state.generation += 1
        reset_seen()
        children = []
        for _ in range(settings.population):
            a = _tournament(state.members, rng, settings.tournament)
            if rng.random() < settings.p_cross:
                b = _tournament(state.members, rng, settings.tournament)
                tree = T.crossover(a.tree, b.tree, rng, settings.max_depth)
            else:
                tree = T.mutate(a.tree, rng, settings.max_depth)
            m = make(tree, state.generation)
            if m is not None:
                children.append(m)
        pool = state.members + children
        pool.sort(key=lambda m: (m.phi, m.order), reverse=True)  # ties: the newer first
        state.members = pool[:settings.population]
        _log(state)
        state.rng = rng.bit_generator.state
        if checkpoint is not None:
            save(state, checkpoint)
        done_now += 1
        bar.update()
        h = state.history[-1]
        bar.set_postfix(best=f"{h['best']:.4f}", evaluated=state.evaluated,
                        invalid=f"{state.invalid / max(1, state.evaluated):.0%}")
    bar.close()
    return state


def _tournament(members: list[Member], rng, k: int) -> Member:
    pick = rng.choice(len(members), size=min(k, len(members)), replace=False)
    return max((members[i] for i in pick), key=lambda m: (m.phi, m.order))


def _log(state: State) -> None:
    best = state.best
    state.history.append({"generation": state.generation, "best": best.phi,
                          "rho_sens": best.rho_sens, "acc": best.acc,
                          "evaluated": state.evaluated, "invalid": state.invalid,
                          "duplicates": state.duplicates})


def write_proxy(state: State, out: Path, name: str, fit: Fitness,
                holdout: dict[str, Fitness] | None = None) -> Path:
    """Write the best tree as a registered-format proxy file with its provenance."""
    best = state.best
    s = state.settings
    lines = [
        "Discovered by `mqbench discover` (generator: symbolic, EMQ-style search space).",
        "",
        f"Expression: {T.to_text(best.tree)}",
        "",
        "Reasoning: an evolved combination of per-layer statistics (see",
        "mqbench/search/evolution/features.py); it was kept because it maximised TAP's fitness",
        f"phi = alpha*rho_sens + (1-alpha)*Acc on the training task {s.task}.",
        "",
        f"Training task {s.task}: fitness {fit.phi:.4f} (rho_sens {fit.rho_sens:.4f}, "
        f"table-lookup Acc {fit.acc:.4f}, config Spearman {fit.spearman:.4f}).",
    ]
    for task, f in (holdout or {}).items():
        lines.append(f"Held-out task {task} (no tuning on it): fitness {f.phi:.4f} "
                     f"(rho_sens {f.rho_sens:.4f}, Acc {f.acc:.4f}, "
                     f"config Spearman {f.spearman:.4f}).")
    lines += ["", f"Found in generation {best.born} of {s.generations}; population "
              f"{s.population}, seed {s.seed}, {state.evaluated} candidates evaluated "
              f"({state.invalid} invalid, {state.duplicates} duplicates)."]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(T.render(best.tree, name=name, doc="\n".join(lines)))
    return out


def leaderboard_of(ctx: Context, extra: dict[str, Fitness] | None = None) -> list[tuple]:
    """[(name, Fitness)] of every registered layer/layer_bit proxy (+ extra), best first."""

    rows = [(name, proxy_fitness(ctx, p)) for name, p in sorted(list_proxies().items())
            if p.kind != "config" and not name.startswith("discovered")]
    rows += list((extra or {}).items())
    return sorted(rows, key=lambda r: (-r[1].phi if math.isfinite(r[1].phi) else math.inf,
                                       r[0]))


def discover(task, settings: Settings, out: Path, holdout=(), checkpoint: Path | None = None,
             resume: bool = False, progress: bool = True) -> dict:
    """Run the symbolic search on `task`, write the best proxy to `out`; returns a report."""

    name = Path(out).stem
    if not name.isidentifier():
        raise MqbenchError(f"--out {out}: the file name must be a Python identifier (it names "
                           f"the proxy), e.g. proxies/discovered_symbolic.py")
    ctx = context(task, progress)
    state = run(ctx, settings, checkpoint, resume, progress)
    feats = module_features(ctx.stats)
    fit = from_sensitivity(ctx, T.evaluate(state.best.tree, feats), spearman=True)
    held = {}
    for h in holdout:
        hctx = context(h, progress)
        held[h.name] = (hctx, from_sensitivity(hctx, T.evaluate(state.best.tree,
                                                                 module_features(hctx.stats)),
                                               spearman=True))
    path = write_proxy(state, out, name, fit, {k: v[1] for k, v in held.items()})
    return {"path": path, "state": state, "train": leaderboard_of(ctx, {name: fit}),
            "holdout": {k: leaderboard_of(c, {name: f}) for k, (c, f) in held.items()},
            "name": name}
