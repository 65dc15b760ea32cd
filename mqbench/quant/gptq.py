"""GPTQ (Frantar et al., ICLR 2023): per-layer weight quantization with column-wise error
feedback through the inverse Hessian of the layer's reconstruction loss.

For one layer with weight W [rows, cols] (a conv's [C_out, C_in·k·k], the column order of
`F.unfold`) and calibration inputs X [n, cols] (a conv's unfolded patches), the loss
||X Ŵᵀ − X Wᵀ||² has Hessian H = 2 XᵀX / n. Columns are quantized left to right; each one's
rounding error, divided by the diagonal of the upper Cholesky factor U of H⁻¹, is pushed
onto the columns not yet quantized (W[:, j:] −= e_j ⊗ U[j, j:]/U[j, j]), in blocks of
`BLOCK` columns as in the paper's Algorithm 1. H is damped by 1% of its mean diagonal;
columns whose input is always zero get H_jj = 1 and weight 0 (the reference code's rules);
the natural column order (no act-order).

The grid is mqbench's round-to-nearest grid of the same bit-width (mqbench.quant.quantizer):
per output channel symmetric with the channel's clip chosen on the original weight, or, with
a group size g, per group of g input columns asymmetric, the group's range chosen when its
first column is reached (on the error-updated weights, as the reference code does). So GPTQ
and RTN tables differ only in where inside the grid each weight lands.

What it reconstructs against: the *full-precision* model's inputs to the layer (every
layer's H comes from one pass of the float, BatchNorm-folded model over the calibration set),
never the inputs produced by already-quantized earlier layers as in the paper's sequential
scheme. That is what keeps a table cacheable: each (layer, bit-width) is quantized once,
independently of the other layers' bits, and a configuration is a swap of prepared weights.
The sequential variant would make every configuration its own quantization run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mqbench.errors import MqbenchError

BLOCK = 128  # columns per lazy batch update (Algorithm 1); a multiple of the group sizes
DAMP = 0.01  # fraction of mean(diag H) added to the diagonal


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[n, cols] rows of the layer's input as its weight's columns see them."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise MqbenchError(f"gptq: grouped or depthwise conv {module} is not supported "
                               f"(its weight columns see different inputs per group); use "
                               f"method = \"rtn\" for this task")
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def check_supported(model: nn.Module, layers) -> None:
    """One line naming the first layer GPTQ cannot quantize (before any work starts)."""
    for name in layers:
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise MqbenchError(f"quant.method = \"gptq\": layer {name!r} is a grouped/depthwise "
                               f"conv (groups = {m.groups}), which GPTQ here does not support; "
                               f"use method = \"rtn\" or exclude the layer")
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise MqbenchError(f"quant.method = \"gptq\": layer {name!r} is a "
                               f"{type(m).__name__}, not a Conv2d or Linear")


class HessianAccumulator:
    """Running H = 2 XᵀX / n of one layer's inputs (float64), fed batch by batch."""

    def __init__(self, module: nn.Module):
        self.module, self.n, self.h = module, 0, None

    def add(self, x: torch.Tensor) -> None:
        rows = layer_inputs(self.module, x.detach().double().cpu())
        if self.h is None:
            self.h = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
        self.h += rows.T @ rows
        self.n += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.h is None or self.n == 0:
            raise MqbenchError("gptq: a layer saw no calibration input; check the calibration "
                               "set and the layer patterns")
        return 2 * self.h / self.n


def quantize(w: torch.Tensor, h: torch.Tensor, grid, group_size: int = 0) -> torch.Tensor:
    """GPTQ of a 2-D weight `w` [rows, cols] with input Hessian `h` [cols, cols].

    `grid(ahead, j)` returns the grid values [rows] of column j, where `ahead` holds the
    error-updated columns j, j+1, ... to the end of the current block (a group-wise grid
    fixes a group's range from `ahead[:, :group_size]` at the group's first column; blocks
    are a multiple of the group size, so a group never straddles two blocks).
    """
    W = w.detach().double().clone()
    H = h.to(W.device, torch.float64).clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += DAMP * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError:
        raise MqbenchError("gptq: the layer's input Hessian is not positive definite even "
                           "after damping; use more calibration samples") from None
    block = BLOCK if group_size <= 0 else -(-BLOCK // group_size) * group_size
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            q = grid(W1[:, i:], i1 + i)
            Q[:, i1 + i] = q
            err = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q
