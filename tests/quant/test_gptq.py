"""GPTQ (mqbench.quant.gptq) against the paper's closed forms and a textbook reference:

* with an input Hessian proportional to the identity there is nothing to feed back: GPTQ
  equals round-to-nearest exactly;
* GPTQ equals an independent, unblocked implementation of the paper's update (quantize
  column j, spread its error with the inverse Hessian's row j, then drop j from the inverse
  by a Schur complement: Frantar et al. 2022, Eq. 2-3), for per-channel and group-wise grids;
* its layer-output error on the calibration inputs is at most RTN's on the same layer and
  bits (2, 3, 4), and every weight lies on RTN's grid;
* a prepared task model under method "gptq" differs from "rtn" only in the weights, and a
  depthwise conv is refused by name before any work.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.quant import gptq as G
from mqbench.quant import quantizer as Q
from mqbench.task.spec import QUANT_METHODS


def _correlated(n: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / math.sqrt(cols) + torch.eye(cols)
    return torch.randn(n, cols, generator=g) @ mix


def _hessian(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 2 * x.T @ x / len(x)


def _reference(w: torch.Tensor, h: torch.Tensor, grid_col) -> torch.Tensor:
    """The paper's update without Cholesky or blocks: explicit inverse, Schur downdates."""
    W = w.double().clone()
    H = h.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += G.DAMP * torch.mean(torch.diag(H)) * torch.eye(len(H), dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Qm = torch.zeros_like(W)
    for j in range(W.shape[1]):
        q = grid_col(W, j)
        Qm[:, j] = q
        err = (W[:, j] - q) / Hinv[j, j]
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]  # drop j (Eq. 3)
    return Qm


def _channel_grid(w, bits):
    half = 2 ** (bits - 1)
    s = Q.weight_scale(w, bits, "mse")
    return s, lambda cur, j: (torch.clamp(torch.round(cur[:, j].float() / s), -half, half - 1)
                              * s).double()


def test_methods_are_the_task_choices():
    assert Q.METHODS == QUANT_METHODS == ("rtn", "gptq")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_identity_hessian_is_round_to_nearest(bits):
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(bits))
    h = 3.0 * torch.eye(40, dtype=torch.float64)
    assert torch.equal(Q.gptq_weight(w, h, bits), Q.quantize_weight(w, bits))
    wl = torch.randn(5, 130, generator=torch.Generator().manual_seed(bits + 10))
    h2 = 3.0 * torch.eye(130, dtype=torch.float64)
    assert torch.equal(Q.gptq_weight(wl, h2, bits, "max", 64),
                       Q.quantize_weight(wl, bits, "max", 64))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_equals_the_unblocked_reference(bits):
    x = _correlated(400, 150, seed=bits)  # 150 columns: two blocks, the second ragged
    w = torch.randn(7, 150, generator=torch.Generator().manual_seed(100 + bits))
    h = _hessian(x)
    s, grid = _channel_grid(w, bits)
    want = _reference(w, h, grid)
    got = Q.gptq_weight(w, h, bits).double()
    assert torch.allclose(got, want, atol=1e-6 * float(s.max()))
    # group-wise (LM grid): the group's range is fixed at its first column
    params = {}

    def group_grid(cur, j):
        g0 = j // 64 * 64
        if g0 == j:
            params[g0] = Q.group_params(cur[:, g0:g0 + 64].float(), bits, "max")
        return Q.group_apply(cur[:, j:j + 1].float(), bits, *params[g0])[:, 0].double()

    want = _reference(w, h, group_grid)
    got = Q.gptq_weight(w, h, bits, "max", 64).double()
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_output_error_at_most_rtn_and_on_the_grid(bits):
    x = _correlated(512, 96, seed=7 + bits)
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(bits))
    h = _hessian(x)

    def err(wq):
        return float((x.double() @ (wq.double() - w.double()).T).pow(2).sum())

    rtn, gptq = Q.quantize_weight(w, bits), Q.gptq_weight(w, h, bits)
    assert err(gptq) <= err(rtn)
    half = 2 ** (bits - 1)
    s = Q.weight_scale(w, bits, "mse")[:, None]
    level = gptq / s
    assert torch.allclose(level, level.round(), atol=1e-4)
    assert level.round().min() >= -half and level.round().max() <= half - 1
    rtn_g, gptq_g = Q.quantize_weight(w, bits, "max", 32), Q.gptq_weight(w, h, bits, "max", 32)
    assert err(gptq_g) <= err(rtn_g)
    for g0 in range(0, 96, 32):  # at most 2^b distinct values per row and group
        block = gptq_g[:, g0:g0 + 32]
        assert all(len(torch.unique(r)) <= 2 ** bits for r in block)


def test_conv_columns_are_the_unfolded_patches():
    """A conv's H is built from F.unfold patches in the weight's (C_in, kh, kw) order: its
    output error equals the matrix form's, so GPTQ on the conv beats RTN on its outputs."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # neighbouring pixels correlate, as in images: H is far from diagonal
    x = nn.functional.avg_pool2d(torch.randn(16, 3, 12, 12), 3, stride=1)
    acc = G.HessianAccumulator(conv)
    acc.add(x)
    h = acc.hessian()
    rows = G.layer_inputs(conv, x)
    assert rows.shape == (16 * 100, 27)
    w = conv.weight.detach()
    ref = (rows @ w.reshape(8, -1).T).reshape(16, 100, 8).permute(0, 2, 1).reshape(16, 8, 10, 10)
    assert torch.allclose(ref, conv(x), atol=1e-5)
    errs = {}
    out = conv(x).detach()
    for bits in (2, 3, 4):
        for name, wq in (("rtn", Q.quantize_weight(w, bits)),
                         ("gptq", Q.gptq_weight(w, h, bits))):
            errs[name] = float((nn.functional.conv2d(x, wq, padding=1) - out).pow(2).sum())
        assert errs["gptq"] < errs["rtn"], (bits, errs)


def test_prepare_with_gptq_changes_only_the_weights():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    cal = torch.randn(32, 1, 8, 8)
    layers = ["0", "3"]
    rtn = Q.prepare(model, layers, cal, (2, 4), (8,))
    gptq = Q.prepare(model, layers, cal, (2, 4), (8,), method="gptq")
    for name in layers:
        assert torch.equal(rtn.weights[(name, Q.FP)], gptq.weights[(name, Q.FP)])
        assert rtn.acts[(name, 8)] == gptq.acts[(name, 8)]  # same activation calibration
        # (iid inputs make H nearly diagonal: at 2 bits the feedback may not move a weight)
        assert any(not torch.equal(rtn.weights[(name, b)], gptq.weights[(name, b)])
                   for b in (2, 4))
    with pytest.raises(MqbenchError, match="choose one of rtn, gptq"):
        Q.prepare(model, layers, cal, (2,), (8,), method="adaroundish")
    dw = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(MqbenchError, match="layer '0' is a grouped/depthwise conv"):
        Q.prepare(dw, ["0"], torch.randn(4, 4, 8, 8), (2,), (8,), method="gptq")


def test_method_is_an_axis_of_every_task(tiny_env, tmp_path, monkeypatch, capsys):
    """`--method gptq` (or NAME@gptq): its own table, statistics and records, next to rtn's
    and the same trained model; bad method names are one line."""
    import json

    from mqbench.cli.main import main
    from mqbench.task.spec import load_task
    from mqbench.truth.store import load_table, table_path

    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(tmp_path / "lb"))
    rtn, gptq = load_task("tiny"), load_task("tiny", method="gptq")
    assert (gptq.key, gptq.label, gptq.model_key) == ("tiny-v1-gptq", "tiny@gptq", "tiny-v1")
    assert load_task("tiny@gptq") == gptq and gptq.spec_checksum != rtn.spec_checksum
    (tiny_env / "tinyg.toml").write_text(
        (tiny_env / "tiny.toml").read_text().replace('name = "tiny"', 'name = "tinyg"')
        .replace("[quant]", '[quant]\nmethod = "gptq"'))
    assert load_task("tinyg").quant.method == "gptq" and load_task("tinyg").label == "tinyg@gptq"
    assert main(["build", "--task", "tiny", "--method", "gptq", "--quiet", "--jobs", "1"]) == 0
    assert main(["build", "--task", "tiny", "--quiet", "--jobs", "1"]) == 0
    assert table_path(gptq) != table_path(rtn)
    tg, tr = load_table(gptq), load_table(rtn)
    assert tg.meta["quant_method"] == "gptq" and tr.meta["quant_method"] == "rtn"
    assert tg.meta["weights_checksum"] == tr.meta["weights_checksum"]  # one model
    fp = [t.kind("fp").acc.iloc[0] for t in (tg, tr)]
    assert fp[0] == fp[1]  # float rows agree; quantized ones differ
    a = tg.configs().set_index("key").acc
    b = tr.configs().set_index("key").acc.reindex(a.index)
    assert (a != b).any()
    assert main(["eval", "--proxy", "fisher", "--task", "tiny@gptq", "--quiet", "--bootstrap",
                 "0", "--batches", "1", "--no-downstream"]) == 0
    rec = json.loads((tmp_path / "lb" / "records" / "tiny@gptq" / "fisher.json").read_text())
    assert rec["task"] == "tiny@gptq" and rec["table_provenance"]["quant_method"] == "gptq"
    capsys.readouterr()
    assert main(["build", "--task", "tiny@gptq", "--method", "rtn", "--quiet"]) == 2
    assert "disagree" in capsys.readouterr().err
    assert main(["build", "--task", "tiny@sideways", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "choose one of rtn, gptq" in err and len(err.splitlines()) == 1


def test_gptq_on_a_language_model_table(lm_env):
    """A weight-only LM task (group-wise grid) under gptq: a table of the same
    configurations as rtn (protocol 1 draws by size from the seed), and a lower loss than
    rtn's for most quantized configurations (GPTQ minimises each layer's output error)."""
    from mqbench.task.spec import load_task
    from mqbench.truth.build import build_table
    from mqbench.truth.store import load_table

    tables = {}
    for method in ("rtn", "gptq"):
        task = load_task("tinylm", method=method)
        build_table(task, progress=False)
        tables[method] = load_table(task).configs().set_index("key")
    r, g = tables["rtn"], tables["gptq"].reindex(tables["rtn"].index)
    assert set(r.index) == set(tables["gptq"].index)
    assert (g.loss < r.loss).mean() > 0.5
