"""Protocol 2 on tiny tasks: disjoint splits, split-half and per-layer noise rows, ceilings
checked against scipy from the rows, damage sampling, prefix-shared evaluation equal to
independent evaluation, resumed and sharded builds equal to one build at once."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mqbench.errors import MqbenchError
from mqbench.proxy.context import Stats
from mqbench.quant.quantizer import FP
from mqbench.quant.space import BitConfig, Space, sample_by_damage, sample_configs
from mqbench.search.evolution.discover import discover
from mqbench.search.evolution.fitness import context
from mqbench.search.evolution.loop import Settings
from mqbench.task import datasets as D
from mqbench.task.spec import load_task
from mqbench.testing import TINY_TASK, protocol2_text
from mqbench.truth import prefix as P
from mqbench.truth.bench import open_bench
from mqbench.truth.build import build_table, merge_shards, plan
from mqbench.truth.noise import ceiling_lines
from mqbench.truth.protocol2 import damage_model, layer_items
from mqbench.truth.store import SPLIT_COLUMNS, load_table, table_path

TINY_VIT = """
name = "{name}"
version = 1
seed = 0
description = "tiny ViT test task"
[model]
arch = "vit"
depth = 2
dim = 16
heads = 2
patch = 4
[model.train]
epochs = 1
batch_size = 64
lr = 0.01
optimizer = "adamw"
flip = false
max_steps = 10
[data]
dataset = "digits"
calibration_samples = 64
eval_samples = 120
[quant]
weight_bits = [2, 4, 8]
[table]
configs = 24
noise_configs = 6
batch_size = 64
"""


def _write_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny2.toml").write_text(protocol2_text(TINY_TASK, "tiny2"))
    (folder / "tinyvit2.toml").write_text(protocol2_text(TINY_VIT, "tinyvit2", "size"))
    return folder


@pytest.fixture
def v2_env(tmp_path, monkeypatch):
    """Task folder with `tiny2` (ResNet-8, damage sampling) and `tinyvit2` (ViT), own cache."""
    tasks = _write_tasks(tmp_path / "tasks")
    monkeypatch.setenv("MQBENCH_TASKS", str(tasks))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return tasks


@pytest.fixture(scope="module")
def _built_cache(tmp_path_factory):
    """One trained model and one built `tiny2` table, copied into each test that uses it."""
    base = tmp_path_factory.mktemp("v2built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MQBENCH_TASKS", str(_write_tasks(base / "tasks")))
        mp.setenv("MQBENCH_CACHE", str(base / "cache"))
        build_table(load_task("tiny2"), progress=False)
    return base / "cache"


@pytest.fixture
def built(v2_env, _built_cache, tmp_path):
    shutil.copytree(_built_cache, tmp_path / "cache")
    return load_table(load_task("tiny2"))


# ---------------------------------------------------------------- splits
def test_splits_are_disjoint(v2_env, monkeypatch):
    import mqbench.truth.bench as B

    seen = {}
    real = B.load_or_train

    def spy(task, model, train_split_fn, *args, **kw):
        seen["train"] = train_split_fn()
        return real(task, model, lambda: seen["train"], *args, **kw)

    monkeypatch.setattr(B, "load_or_train", spy)
    task = load_task("tiny2")
    bench = open_bench(task, progress=False)
    sp = bench.splits
    train_all = D.load_split(task.data, "train")
    val, rest = set(sp.val.tolist()), set(sp.train.tolist())
    assert len(val) == 160 and not val & rest and val | rest == set(range(len(train_all)))
    # the model trained on exactly the rest: every training image, none held out
    assert torch.equal(seen["train"].x, train_all.x[sp.train])
    assert torch.equal(bench.val_split.x, train_all.x[sp.val])
    for seed in (task.seed, task.table.noise_seed):
        cal = sp.calibration(task.data.calibration_samples, seed)
        assert len(cal) == 64 and set(cal.tolist()) <= rest
        assert torch.equal(bench.calibration(seed), D.to_input(train_all.x[cal], bench.mean,
                                                               bench.std))
    # the proxies' calibration batches too, for every batch seed (mqbench.proxy.context)
    n = task.harness.calibration_batch
    for seed in range(3):
        x, y = Stats(bench, batch_seed=seed)._batch()
        cal = sp.calibration(n, seed)
        assert set(cal.tolist()) <= rest
        assert torch.equal(x, D.to_input(train_all.x[cal], bench.mean, bench.std))
        assert torch.equal(y, train_all.y[cal])
    h0, h1 = (set(h.tolist()) for h in sp.halves)
    assert len(h0) == len(h1) == 120 and not h0 & h1 and h0 | h1 == set(range(240))
    test = D.load_split(task.data, "test")
    assert torch.equal(bench.eval_split.x, test.x[sp.test])  # test is another split entirely


def test_validation_larger_than_the_data_is_refused_before_training(tmp_path, monkeypatch):
    """A dataset without known sizes (an ImageNet folder) is checked once its size is read."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "inet" / split / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * c, 0, 0)).save(folder / f"{i}.JPEG")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "inet.toml").write_text(f"""
name = "inet"
version = 1
[model]
arch = "resnet18"
source = "torchvision"
pretrained = false
[data]
dataset = "imagenet-folder"
root = "{tmp_path / 'inet'}"
image_size = 8
eval_split = "val"
eval_samples = 0
calibration_samples = 2
val_split = "train"
val_samples = 5
[quant]
weight_bits = [2, 4]
[table]
protocol = 2
""")
    monkeypatch.setenv("MQBENCH_TASKS", str(tmp_path / "t"))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    import mqbench.truth.bench as B

    monkeypatch.setattr(B, "seeded_model", lambda *a: pytest.fail("work started"))
    with pytest.raises(MqbenchError) as exc:
        open_bench(load_task("inet"), progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "val_samples 5" in msg and "6 training samples" in msg


def test_protocol1_table_has_no_validation(tiny_env):
    task = load_task("tiny")
    bench = open_bench(task, progress=False)
    with pytest.raises(MqbenchError, match="no validation split"):
        bench.evaluator(task.seed, split="val")
    build_table(task, progress=False)
    table = load_table(task)
    assert table.protocol == 1 and not set(SPLIT_COLUMNS) & set(table.rows.columns)
    with pytest.raises(MqbenchError, match="protocol 1"):
        table.configs("val")


# ---------------------------------------------------------------- who reads which split
def test_discovery_ranks_on_validation_and_reports_on_test(built, tmp_path):
    task, rows = built.task, built.rows
    val, test = context(task, split="val"), context(task, split="test")
    configs = rows[rows.kind.isin(["uniform", "sample"]) & (rows.cal_seed == task.seed)]
    np.testing.assert_array_equal(val.acc, configs.drop_duplicates("key").val_acc)
    np.testing.assert_array_equal(test.acc, configs.drop_duplicates("key").acc)
    assert not np.array_equal(val.acc, test.acc)
    # per-layer truth: validation cross-entropy of each unit alone at 2 bits minus the float's
    mine = rows[rows.cal_seed == task.seed]
    fp_val = mine[mine.kind == "fp"].val_loss.iloc[0]
    units = list(open_bench(task, progress=False).space.units)
    expect = np.full(len(units), np.nan)
    for r in mine[mine.kind == "layer"].itertuples():
        if r.w_bits[units.index(r.unit)] == 2:
            expect[units.index(r.unit)] = r.val_loss - fp_val
    np.testing.assert_allclose(val.truth, expect)
    assert not np.allclose(val.truth, test.truth)
    rep = discover(task, Settings("tiny2", generations=1, population=6), tmp_path / "found.py",
                   progress=False)
    text = rep.path.read_text()
    assert "Training task tiny2 (searched on its validation split): fitness" in text
    assert "Held-out task tiny2 (test split) (no tuning on it)" in text
    assert set(rep.holdout) == {"tiny2 (test split)"}


def test_a_search_on_a_protocol1_table_must_say_test(tiny_env):
    with pytest.raises(MqbenchError, match="no validation split.*--fitness-split test"):
        context(load_task("tiny"))
    assert context(load_task("tiny"), split="test").split == "test"


# ---------------------------------------------------------------- rows
def test_table_rows_and_their_halves(built):
    task, rows = built.task, built.rows
    bench = open_bench(task, progress=False)
    space = bench.space
    assert built.protocol == 2 and built.meta["prefix_shared"] == "yes"
    # every unit alone at every bit-width below the top, under both seeds
    layers = rows[rows.kind == "layer"]
    assert len(layers) == 2 * len(space.units) * (len(space.weight_bits) - 1)
    assert {min(w) for w in layers.w_bits} == set(space.weight_bits[:-1])
    assert set(layers.cal_seed) == {task.seed, task.table.noise_seed}
    assert rows[SPLIT_COLUMNS].notna().all().all()
    # a row's halves and validation numbers, re-measured independently
    row = built.kind("sample").iloc[3]
    cfg = BitConfig.from_key(row.key)
    ev = bench.evaluator(task.seed)
    m = ev.evaluate(cfg)
    assert (m.acc, m.loss, m.kl) == (row.acc, row.loss, row.kl)
    val = bench.evaluator(task.seed, split="val").evaluate(cfg)
    assert (val.acc, val.loss, val.kl) == (row.val_acc, row.val_loss, row.val_kl)
    qm = bench.prepared(task.seed)
    for h, suffix in zip(bench.splits.halves, ("_h0", "_h1")):
        model = qm.apply(space.layer_bits(cfg))
        x = D.to_input(bench.eval_split.x[h], bench.mean, bench.std).contiguous(
            memory_format=qm.memory_format)
        with torch.inference_mode():
            lq = F.log_softmax(model(x), -1).double()
            lp = F.log_softmax(bench.model(x), -1).double()
        y = bench.eval_split.y[h]
        assert row[f"acc{suffix}"] == pytest.approx(float((lq.argmax(-1) == y).double().mean()),
                                                   abs=1.01 / len(h))
        assert row[f"loss{suffix}"] == pytest.approx(float(F.nll_loss(lq, y)), rel=1e-5)
        assert row[f"kl{suffix}"] == pytest.approx(
            float((lp.exp() * (lp - lq)).sum(-1).mean()), rel=1e-3, abs=1e-7)
    val_view = built.configs("val")
    assert list(val_view.acc) == list(built.configs().val_acc)


def _spearman(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return stats.spearmanr(x, y).statistic


def _top(df, frac):
    """Rows of the true top `frac` by the mean of the two columns x, y (key order on ties)."""
    df = df.sort_values(["kind", "key"]).reset_index(drop=True)
    order = sorted(range(len(df)), key=lambda i: -(df.x[i] + df.y[i]) / 2)
    return df.iloc[order[:max(1, math.ceil(frac * len(df)))]]


def test_ceilings_equal_an_independent_computation(built):
    task, rows, meta = built.task, built.rows, built.meta
    main = rows[rows.cal_seed == task.seed]
    rep = rows[rows.cal_seed == task.table.noise_seed]
    cfg_kinds = ["uniform", "sample"]
    expected = {}
    seed = main.merge(rep, on=["kind", "key"], suffixes=("", "_r"))
    cfg = seed[seed.kind.isin(cfg_kinds)].assign(x=lambda d: d.acc, y=lambda d: d.acc_r)
    half = main[main.kind.isin(cfg_kinds)].assign(x=lambda d: d.acc_h0, y=lambda d: d.acc_h1)
    for source, df in (("seed", cfg), ("half", half)):
        for name, frac in (("all", 1.0), ("top50", 0.5), ("top20", 0.2)):
            top = _top(df, frac)
            expected[f"ceiling_{source}_configs_{name}"] = _spearman(top.x, top.y)
    lay_seed = seed[seed.kind == "layer"].assign(x=lambda d: -d.loss, y=lambda d: -d.loss_r)
    lay_half = main[main.kind == "layer"].assign(x=lambda d: -d.loss_h0, y=lambda d: -d.loss_h1)
    for source, df in (("seed", lay_seed), ("half", lay_half)):
        expected[f"ceiling_{source}_layers_all"] = _spearman(df.x, df.y)
        bits = df.w_bits.map(min)
        for b in sorted(set(bits)):
            sel = df[bits == b]
            expected[f"ceiling_{source}_layers_w{b}"] = _spearman(sel.x, sel.y)
    assert len(half) == task.table.configs + 3 and len(lay_seed) == 16
    for key, value in expected.items():
        got = float(meta[key])
        same = math.isnan(got) and math.isnan(value) or got == pytest.approx(value, abs=1e-12)
        assert same, key
    assert sum(not math.isnan(v) for v in expected.values()) >= 8
    # table statistics
    fp = main[main.kind == "fp"].acc.iloc[0]
    acc = main[main.kind.isin(cfg_kinds)].acc
    assert float(meta["share_below_chance_x2"]) == pytest.approx((acc < 0.2).mean())
    assert float(meta["share_below_fp_minus_5pts"]) == pytest.approx((acc < fp - 0.05).mean())
    assert float(meta["tie_share"]) == pytest.approx(acc.duplicated(keep=False).mean())
    assert int(meta["distinct_values"]) == acc.nunique()
    lines = ceiling_lines(meta)
    assert len(lines) == 5 and "top 20%" in lines[0] and "below chance x 2" in lines[-1]


# ---------------------------------------------------------------- sampling
def _space(n: int) -> Space:
    return Space(tuple(map(str, range(n))), tuple(range(n)), tuple(map(str, range(n))),
                 (2, 4, 8), (8,), tuple(range(1, n + 1)), (1,) * n)


def test_damage_sampler_pools():
    """Synthetic spaces: damage = number of 2-bit units, usable = none of them."""
    def damage(cfg):
        return sum(b == 2 for b in cfg.w)

    cfgs = sample_by_damage(_space(6), 60, 5, 0, damage, 0.5, 0.1)
    assert len({c.key for c in cfgs}) == 60
    assert sum(damage(c) > 0.5 for c in cfgs) == 6  # the documented broken minority
    plain = sample_configs(_space(6), 60, 5, 0)
    assert sum(damage(c) > 0.5 for c in plain) > 40  # protocol 1's draws: mostly broken
    # a pool that cannot be filled ({4, 8}^4 minus the two uniform ones) is topped up
    cfgs = sample_by_damage(_space(4), 40, 5, 0, damage, 0.5, 0.0)
    assert len({c.key for c in cfgs}) == 40 and sum(damage(c) == 0 for c in cfgs) == 2**4 - 2


def test_damage_plan_comes_from_the_layer_rows(built):
    task, rows = built.task, built.rows
    bench = open_bench(task, progress=False)
    damage, limit = damage_model(rows, bench)
    main = rows[rows.cal_seed == task.seed]
    fp = main[main.kind == "fp"].val_acc.iloc[0]
    # additive damage by hand: sum over the units of (fp acc - acc with that unit alone),
    # on the validation split: the draw selects configurations, so it must not read test
    alone = {(r.unit, min(r.w_bits)): max(0.0, fp - r.val_acc)
             for r in main[main.kind == "layer"].itertuples()}
    samples = built.kind("sample")
    for r in samples.itertuples():
        cfg = BitConfig.from_key(r.key)
        by_hand = sum(alone.get((u, w), 0.0) for u, w in zip(bench.space.units, cfg.w))
        assert damage(cfg) == pytest.approx(by_hand)
    blind, _ = damage_model(rows.assign(acc=0.0, loss=99.0, acc_h0=0.0, acc_h1=0.0), bench)
    assert all(blind(BitConfig.from_key(k)) == damage(BitConfig.from_key(k))
               for k in samples.key)  # test numbers do not move the plan
    with pytest.raises(MqbenchError, match="validation split"):
        damage_model(rows.assign(val_acc=math.nan), bench)
    broken = sum(damage(BitConfig.from_key(k)) > limit for k in samples.key)
    assert broken == round(0.1 * task.table.configs)
    assert {(it.kind, it.cal_seed, it.cfg.key) for it in plan(bench, rows)} == \
        set(zip(rows.kind, rows.cal_seed, rows.key))


def test_another_method_measures_the_rtn_tables_configurations(built):
    """tiny2@gptq draws its samples from the rtn table's damage plan: the two tables hold
    the same configurations, so they compare configuration by configuration."""
    gptq = load_task("tiny2", method="gptq")
    build_table(gptq, progress=False)
    other = load_table(gptq)

    def same(t):
        return set(t.kind("sample").key)

    assert same(other) == same(built) and len(same(built)) == gptq.table.configs
    assert other.meta["plan_checksum"] == built.meta["plan_checksum"]
    a = other.kind("sample").set_index("key").acc
    assert (a != built.kind("sample").set_index("key").acc.reindex(a.index)).any()


# ---------------------------------------------------------------- prefix sharing
@pytest.mark.parametrize("name", ["tiny2", "tinyvit2"])
def test_prefix_shared_equals_independent_evaluation(v2_env, name):
    task = load_task(name)
    bench = open_bench(task, progress=False)
    ev = bench.evaluator(task.seed)
    assert ev.runner is not None, "the bundled architectures are chains"
    space = bench.space
    cfgs = sample_configs(space, 40, 5, 3) + [it.cfg for it in layer_items(space, 0)][:6]
    calls = []

    def counted(fn):
        def run(x):
            calls.append(1)
            return fn(x)
        return run

    for stage in ev.runner.stages:  # count stage evaluations
        object.__setattr__(stage, "fn", counted(stage.fn))
    ev.cache_bytes = 1  # one batch per chunk: exercises the chunked streaming too
    shared = ev.measure(cfgs)
    n_shared = len(calls)
    alone = ev.measure(cfgs, prefix=False)
    assert shared == alone  # bit-identical, halves included
    batches = -(-len(bench.eval_split) // task.table.batch_size)
    assert n_shared < 0.9 * len(cfgs) * len(ev.runner.stages) * batches
    # and equal to a plain forward with metrics computed here, independently
    qm = bench.prepared(task.seed)
    x = D.to_input(bench.eval_split.x, bench.mean, bench.std).contiguous(
        memory_format=qm.memory_format)
    y = bench.eval_split.y.numpy()
    with torch.inference_mode():
        lp = torch.cat([F.log_softmax(bench.model(b), -1) for b in x.split(64)]).double().numpy()
    for cfg, m in zip(cfgs[::7], shared[::7]):
        model = qm.apply(space.layer_bits(cfg))
        with torch.inference_mode():
            lq = torch.cat([F.log_softmax(model(b), -1) for b in x.split(64)]).double().numpy()
        assert m.full.acc == np.mean(lq.argmax(-1) == y)
        assert m.full.loss == pytest.approx(-np.mean(lq[np.arange(len(y)), y]), rel=1e-12)
        assert m.full.kl == pytest.approx(np.mean((np.exp(lp) * (lp - lq)).sum(-1)), rel=1e-9,
                                          abs=1e-15)


def test_unknown_architecture_falls_back_to_plain_forwards():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    space = Space(("0", "2"), (0, 1), ("0", "2"), (2, 8), (8,), (16, 8), (16, 8))
    assert P.chain(model) is None and P.PrefixRunner.build(model, space, lambda c: None) is None


# ---------------------------------------------------------------- builds
def _rows(table):
    return table.rows.sort_values(["kind", "cal_seed", "key"]).reset_index(drop=True)


def test_built_in_two_interrupted_halves_equals_built_at_once(built):
    task = built.task
    # crash inside the fixed phase, then inside the samples, then finish
    build_table(task, force=True, progress=False, stop_after=20, chunk=8)
    with pytest.raises(MqbenchError, match="incomplete"):
        load_table(task)
    con = duckdb.connect(str(table_path(task)), read_only=True)
    assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 20
    con.close()
    build_table(task, progress=False, stop_after=30, chunk=8)
    build_table(task, progress=False)
    resumed = load_table(task)
    assert resumed.meta["rows_checksum"] == built.meta["rows_checksum"]
    pd.testing.assert_frame_equal(_rows(resumed), _rows(built))
    assert resumed.meta["plan_checksum"] == built.meta["plan_checksum"]


def test_shards_merge_to_the_table_built_at_once(built):
    task = built.task
    table_path(task).unlink()
    for i in range(2):
        build_table(task, shard=(i, 2), progress=False)
    merge_shards(task, 2, progress=False)
    assert load_table(task).meta["rows_checksum"] == built.meta["rows_checksum"]
    # shards whose sample plans differ are refused
    shard = table_path(task, (1, 2))
    con = duckdb.connect(str(shard))
    con.execute("UPDATE meta SET value = 'x' WHERE key = 'plan_checksum'")
    con.close()
    with pytest.raises(MqbenchError, match="different sample plans"):
        merge_shards(task, 2, progress=False)


def test_tampered_split_column_fails_the_checksum(built):
    con = duckdb.connect(str(built.path))
    con.execute("UPDATE results SET val_acc = val_acc + 0.01 WHERE kind = 'sample'")
    con.close()
    with pytest.raises(MqbenchError, match="checksum"):
        load_table(built.task)


def test_fp_row_is_float(built):
    fp = built.kind("fp").iloc[0]
    assert fp.key == BitConfig((FP,) * 8, (FP,) * 8).key and fp.kl < 1e-6 and fp.val_kl < 1e-6


def test_lm_task_split_half_and_validation_windows(lm_env):
    """Weight-only LM: no second-seed rows; windows halved; validation from other files."""
    text = (lm_env / "tinylm.toml").read_text()
    text = text.replace("noise_configs = 3\n", "").replace(
        "[table]\n", '[table]\nprotocol = 2\nnoise_configs = 0\nsampling = "damage"\n').replace(
        'eval_split = "test"', 'eval_split = "test"\nval_split = "validation"\nval_samples = 6')
    (lm_env / "tinylm.toml").write_text(text)
    task = load_task("tinylm")
    build_table(task, progress=False)
    table = load_table(task)
    meta, rows = table.meta, table.rows
    assert set(rows.cal_seed) == {task.seed} and "ceiling_seed_configs_all" not in meta
    assert "ceiling_half_configs_top20" in meta and "share_ppl_above_fp_plus_5pct" in meta
    bench = open_bench(task, progress=False)
    assert len(bench.val_split) == 6 and meta["test_halves"] == "6,6"
    assert len(bench.calibration(task.seed)) == task.data.calibration_samples
    row = table.kind("sample").iloc[0]
    cfg = BitConfig.from_key(row.key)
    qm = bench.prepared(task.seed)
    from mqbench.truth.bench import Evaluator

    for h, suffix in zip(bench.splits.halves, ("_h0", "_h1")):
        # protocol 1's streaming token metrics on just that half: another code path
        m = Evaluator(bench, qm, 4, bench.eval_split.take(h)).token_metrics(
            qm.apply(bench.space.layer_bits(cfg)))
        assert row[f"loss{suffix}"] == pytest.approx(m.loss, rel=1e-5)
        assert row[f"acc{suffix}"] == pytest.approx(m.acc, abs=1e-9)
        assert row[f"kl{suffix}"] == pytest.approx(m.kl, rel=1e-3, abs=1e-6)
    val = Evaluator(bench, qm, 4, bench.val_split).token_metrics(
        qm.apply(bench.space.layer_bits(cfg)))
    assert row.val_loss == pytest.approx(val.loss, rel=1e-5)


def test_torchvision_resnet_chain_reproduces_its_forward():
    import torchvision

    model = torchvision.models.resnet18(num_classes=3).eval()
    stages = P.chain(model)
    assert stages is not None and len(stages) == 1 + 2 * 8 + 1
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = x
        for stage in stages:
            out = stage.fn(out)
        assert torch.equal(out, model(x))


def test_show_prints_the_ceilings_stored_in_the_table(built, capsys):
    from mqbench.cli.main import main

    assert main(["show", "--task", "tiny2"]) == 0
    out = capsys.readouterr().out
    meta = built.meta
    assert (f"noise ceiling (split-half test set, {meta['ceiling_half_configs_n']} configs): "
            f"Spearman all {float(meta['ceiling_half_configs_all']):.3f}") in out
    assert "below chance x 2" in out
