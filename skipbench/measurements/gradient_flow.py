"""Gradient flow: per-block weight-gradient norms and what the first/last ratio cannot show.

For each seed: one forward and backward pass on N(0, 1) inputs and targets with the loss
0.5 * sum((y - t)^2) / batch. Per block: the weight-gradient norm (weights are parameters with
two or more dimensions), the relative gradient ||grad W|| / ||W||, the norm of the backpropagated
signal dL/dx at the block's input, and the per-sample RMS activation norm at the block's output.
Per seed: grad_ratio (first block over last), signal_ratio (dL/dx at the first block's input
over the last's) and act_growth (last block's activation norm over the trunk input's).

param_grad_norm: the L2 norm of the gradient of each parameter of each block on its own, by its
name within the block (extra column ``param``, say ``alpha``, ``fc.bias``, ``fc.weight``;
index = block): a scalar such as ReZero's alpha, a vector such as LayerScale's lambda, a bias,
a norm's weight, and each weight matrix (grad_norm combines a block's matrices into one
number). A parameter the loss does not reach has gradient norm 0; frozen parameters
(requires_grad False) have no record.

The network runs in training mode (module.train(): batch statistics, random draws in forward)
unless the run forces a mode; column ``mode`` says which.

The seeds of a chunk run as one stack (engine/stack.py); autograd is asked for the weight
gradients directly, and each block input's gradient is normed as backward produces it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..engine import stack as stacks
from ..results import Columns
from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, in_mode

# activations a seed keeps per unit of the width its activations hold (SeedNets.held_width:
# inputs, outputs, saved intermediates, gradients): the allocator's peak over a chunk was 2.1-3.1
# times rows x widths for the built-in blocks at depth 100; 4 leaves room for blocks with more
# intermediates
KEPT_PER_WIDTH = 4


def _combine(norms: torch.Tensor, how: str) -> torch.Tensor:
    """Per-seed combination of per-matrix norms (matrices x seeds -> seeds)."""
    return norms.sum(0) if how == "sum" else norms.pow(2).sum(0).sqrt()


def _norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each seed's slice of a stacked tensor (seeds, ...)."""
    if x.dim() == 1:  # a scalar per seed (vector_norm over no dimensions would take all of them)
        return x.abs()
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())))


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS norm of (seeds, batch, width) activations, per seed."""
    return _norm(x.detach()) / math.sqrt(x.shape[1])


def ratio_columns(metric: str, num: np.ndarray, den: np.ndarray, seeds: np.ndarray, what: str,
                  eps: float = 0.0) -> Columns:
    """num / (den + eps) per seed; 0/0 is undefined (never a number), x/0 is inf."""
    den = den + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(den == 0, np.inf, num / np.where(den == 0, 1.0, den))
    return Columns(metric, value, "ratio", seeds).undefined_where((num == 0) & (den == 0), f"0/0: {what} are both zero")


def per_block(metric: str, values: np.ndarray, unit: str, seeds: np.ndarray, blocks: list[int]) -> Columns:
    """A (blocks x seeds) array as rows seed-major (seed, then block), index = block."""
    values = np.asarray(values, dtype=np.float64).reshape(len(blocks), len(seeds))
    return Columns(metric, values.T.reshape(-1), unit, np.repeat(seeds, len(blocks)),
                   np.tile(np.asarray(blocks, dtype=np.int64), len(seeds)))


def param_columns(named: list[tuple[int, str]], norms: list[torch.Tensor], seeds: np.ndarray) -> list[Columns]:
    """param_grad_norm: one row per (seed, block, parameter), seed-major; `named` holds each
    norm's (block, parameter name)."""
    if not named:
        return []
    values = torch.stack(norms).double().cpu().numpy()  # parameters x seeds
    blocks = np.asarray([b for b, _ in named], dtype=np.int64)
    return [Columns("param_grad_norm", values.T.reshape(-1), "l2", np.repeat(seeds, len(named)),
                    np.tile(blocks, len(seeds)), extra={"param": [n for _ in seeds for _, n in named]})]


def _gradients(loss: torch.Tensor, wanted: list[torch.Tensor], inputs: list[torch.Tensor],
               zeros: torch.Tensor) -> tuple[tuple, list[torch.Tensor]]:
    """The gradients of `wanted` and the norm of dL/dx at each block input (`zeros` where the
    loss does not reach it). Each input's gradient is normed as backward produces it, then let
    go: kept to the end, they would hold O(depth^2) features in a dense block, whose every input
    is wider than the last. The first input's gradient is asked for, which takes backward
    through every block input."""
    signal = [zeros] * len(inputs)

    def keep_norm(i: int):
        def hook(grad: torch.Tensor) -> None:
            signal[i] = _norm(grad)
        return hook

    hooks = [x.register_hook(keep_norm(i)) for i, x in enumerate(inputs)
             if x is not inputs[0] and x.requires_grad]
    try:
        grads = torch.autograd.grad(loss, wanted + inputs[:1], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
    if grads[-1] is not None:
        signal = [_norm(grads[-1]) if x is inputs[0] else n for x, n in zip(inputs, signal)]
    return grads[:-1], signal


def _chunk(cell: Cell, seeds: tuple[int, ...], nets: stacks.SeedNets) -> list[Columns]:
    how, eps = cell.options["norm_combine"], cell.options["ratio_eps"]
    mode = cell.mode_for("train")
    data = cell.normals(seeds, STREAM_DATA, 2 * cell.batch)
    x, target = data[:, :cell.batch], data[:, cell.batch:]
    stack = nets.stack(seeds, x[:, :2], modes=(mode,))
    with stack.mode(mode):
        output, inputs, outputs = stack.trace(x)
    loss = (0.5 * ((output - target) ** 2).sum(dim=(1, 2)) / cell.batch).sum()
    mats = [stack.block_matrices(i) for i in range(stack.n_blocks)]
    leaves = [p for m in mats for p in m.values()]
    named = [(i, n) for i in range(stack.n_blocks) for n, p in stack.block_params(i).items() if p.requires_grad]
    every = [stack.block_params(i)[n] for i, n in named]
    wanted = list(dict.fromkeys(leaves + every))  # the matrices are among every parameter: once each
    zeros = torch.zeros(len(seeds), dtype=cell.dtype, device=cell.device)
    grads, signal_norms = _gradients(loss, wanted, inputs, zeros)
    norm_of = {id(p): _norm(g) if g is not None else zeros for p, g in zip(wanted, grads)}
    norms = [norm_of[id(p)] for p in leaves]
    param_norms = [norm_of[id(p)] for p in every]
    signal = torch.stack(signal_norms)
    act = torch.stack([_rms(o) for o in outputs])
    act_in = _rms(inputs[0]).double().cpu().numpy()
    weighted = [i for i, m in enumerate(mats) if m]
    g_rows, w_rows, k = [], [], 0
    for m in mats:
        if m:
            g_rows.append(_combine(torch.stack(norms[k:k + len(m)]), how))
            w_rows.append(_combine(torch.stack([_norm(p.detach()) for p in m.values()]), how))
            k += len(m)
    s = np.asarray(seeds, dtype=np.int64)
    blocks = list(range(stack.n_blocks))
    signal, act = signal.double().cpu().numpy(), act.double().cpu().numpy()
    out = [per_block("signal_norm", signal, "l2", s, blocks), per_block("act_norm", act, "rms", s, blocks)]
    if weighted:
        g = torch.stack(g_rows).double().cpu().numpy()
        w = torch.stack(w_rows).double().cpu().numpy()
        out.append(per_block("grad_norm", g, "l2", s, weighted))
        rel = per_block("rel_grad_norm", np.divide(g, w, out=np.full_like(g, np.nan), where=w != 0), "ratio", s, weighted)
        rel.undefined_where((w == 0).T.reshape(-1), "the block's weights are all zero")
        out += [rel, ratio_columns("grad_ratio", g[0], g[-1], s, "the first and last weight-gradient norms", eps)]
    if blocks:
        out += [ratio_columns("signal_ratio", signal[0], signal[-1], s, "the first and last dL/dx norms"),
                ratio_columns("act_growth", act[-1], act_in, s, "the activation norms")]
    out += param_columns(named, param_norms, s)
    return in_mode(stack.tag(out), mode)


def run(cell: Cell, path: str | None = None) -> list[Columns]:
    """Gradient-flow columns for every seed of the cell (`path`: force one of
    engine.stack.PATHS)."""
    nets = stacks.SeedNets(cell, path)
    per_seed = stacks.seed_bytes(nets, cell.batch, KEPT_PER_WIDTH, 3)
    out = []
    for seeds in stacks.chunks(cell.seeds, per_seed):
        out += _chunk(cell, seeds, nets)
    return out


MEASUREMENT = Measurement(
    name="gradient-flow",
    run=run,
    metrics=("grad_ratio", "grad_norm", "signal_norm", "act_norm", "rel_grad_norm", "signal_ratio", "act_growth",
             "param_grad_norm"),
    options=(
        Param("norm_combine", "str", "global", ("global", "sum"),
              "a block's weight-gradient norm: global L2 over its weights, or the sum of per-matrix norms (the study)"),
        Param("ratio_eps", "float", 0.0, help="added to the last norm of grad_ratio (the study adds 1e-10)", minimum=0),
    ),
    description="per-block weight-gradient, signal (dL/dx) and activation norms; first/last ratios",
    better={"grad_ratio": "one", "signal_ratio": "one", "act_growth": "one"},
)
