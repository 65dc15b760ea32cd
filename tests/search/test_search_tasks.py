"""Discovery on several search tasks at once, random search as its baseline, evaluation
budgets: the fitness is the mean over the tasks (checked against each task's own fitness),
random search never breeds, and a budget stops a run at exactly that many evaluations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mqbench.cli.main import main
from mqbench.errors import MqbenchError
from mqbench.search.evolution import symbolic as T
from mqbench.search.evolution.discover import discover
from mqbench.search.evolution.features import module_features
from mqbench.search.evolution.fitness import context, from_sensitivity
from mqbench.search.evolution.generator_symbolic import RandomGenerator, SymbolicGenerator
from mqbench.search.evolution.loop import Settings, run, score_on
from mqbench.task.spec import load_task
from mqbench.testing import write_task


@pytest.fixture
def two(tiny_env):
    """Two protocol-1 tiny tasks whose models differ (different training lengths)."""
    write_task(tiny_env, "tinyb", steps=30)
    return [context(load_task(n), split="test") for n in ("tiny", "tinyb")]


def test_several_tasks_score_the_mean_of_each(two):
    rng = np.random.default_rng(0)
    trees = [T.random_tree(rng, 3) for _ in range(30)]
    s = Settings("tiny,tinyb", population=4, fitness_split="test")
    both = score_on(SymbolicGenerator(s), two, trees, [str(i) for i in range(len(trees))])
    valid = 0
    for tree, got in zip(trees, both):
        per = []
        for c in two:  # each task's fitness, computed independently of score_on
            with np.errstate(all="ignore"):
                values = T.evaluate(tree, module_features(c.stats))
            per.append(from_sensitivity(c, values) if np.all(np.isfinite(values)) else None)
        if any(f is None or not math.isfinite(f.phi) for f in per):
            assert got.fitness.phi == -math.inf and got.signature == ()
            continue
        valid += 1
        assert got.fitness.phi == pytest.approx(np.mean([f.phi for f in per]), abs=1e-12)
        assert got.fitness.rho_sens == pytest.approx(np.mean([f.rho_sens for f in per]))
        assert got.fitness.acc == pytest.approx(np.mean([f.acc for f in per]))
        assert len(got.signature) == 2  # the behaviour on each task
    assert valid >= 10


def test_a_search_on_two_tasks_resumes_exactly(two, tmp_path):
    s = Settings("tiny,tinyb", generations=3, population=8, seed=1, fitness_split="test")
    full = run(two, SymbolicGenerator(s), s, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    run(two, SymbolicGenerator(s), s, part, progress=False, stop_after=1)
    resumed = run(two, SymbolicGenerator(s), s, part, resume=True, progress=False)
    assert [m.genome for m in resumed.members] == [m.genome for m in full.members]
    assert resumed.history == full.history


def test_random_search_never_breeds_and_budgets_are_exact(two, tmp_path):
    s = Settings("tiny", generator="random", generations=50, population=8, seed=2,
                 fitness_split="test", budget=70)
    gen = RandomGenerator(s)

    def no_parents():
        raise AssertionError("random search picked a parent")

    assert gen.propose(_state_after_one(s), 5, no_parents, np.random.default_rng(0))
    st = run(two[0], gen, s, None, progress=False)
    assert st.evaluated == 70 and st.generation < 50  # the budget, not --generations, ended it
    sym = Settings("tiny", generations=50, population=8, seed=2, fitness_split="test",
                   budget=70)
    st2 = run(two[0], SymbolicGenerator(sym), sym, None, progress=False)
    assert st2.evaluated == 70
    with pytest.raises(MqbenchError, match="--budget -1"):
        Settings("tiny", budget=-1)


def _state_after_one(s):
    from mqbench.search.evolution.loop import Candidate, State

    st = State(s, generation=1)
    st.members = [Candidate(("f", "w_sq"), 0.5, 0.5, 0.5, 0, 1, (0, 1))]
    return st


def test_discover_on_two_tasks_reports_each_and_refuses_overlap(tiny_env, tmp_path, capsys):
    write_task(tiny_env, "tinyb", steps=30)
    out = tmp_path / "both.py"
    assert main(["discover", "--task", "tiny,tinyb", "--generations", "1", "--population", "6",
                 "--fitness-split", "test", "--out", str(out), "--quiet"]) in (0, None)
    printed = capsys.readouterr().out
    assert "training task tiny (searched on its TEST split" in printed
    assert "training task tinyb (searched on its TEST split" in printed
    text = out.read_text()
    assert "Searched on 2 tasks at once" in text
    assert "Training task tiny: fitness" in text and "Training task tinyb: fitness" in text
    tasks = [load_task("tiny"), load_task("tinyb")]
    with pytest.raises(MqbenchError, match="also a search task"):
        discover(tasks, Settings("tiny,tinyb", generations=1, population=6,
                                 fitness_split="test"), tmp_path / "x.py",
                 holdout=(tasks[1],), progress=False)
