"""Gradient flow: per-block weight-gradient norms and what the first/last ratio cannot show.

For each seed: one forward and backward pass on N(0, 1) inputs and targets with the loss
0.5 * sum((y - t)^2) / batch. Per block: the weight-gradient norm (weights are parameters with
two or more dimensions), the relative gradient ||grad W|| / ||W||, the norm of the backpropagated
signal dL/dx at the block's input, and the per-sample RMS activation norm at the block's output.
Per seed: grad_ratio (first block over last), signal_ratio (dL/dx at the first block's input
over the last's) and act_growth (last block's activation norm over the trunk input's).

All seeds of a chunk run in one vectorized pass (see batched.py); blocks that cannot be
vectorized run seed by seed, with the same numbers up to float rounding.
"""

from __future__ import annotations

import math

import torch

from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, batched, ratio, record, undefined


def _combine(norms: torch.Tensor, how: str) -> torch.Tensor:
    """Per-seed combination of per-matrix norms (matrices x seeds -> seeds)."""
    return norms.sum(0) if how == "sum" else norms.pow(2).sum(0).sqrt()


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS norm of (seeds, batch, width) activations, per seed."""
    return x.detach().flatten(1).norm(dim=1) / math.sqrt(x.shape[1])


def _seed_records(seed: int, grads: list, weights: list, signals: list, acts: list, act_in: float,
                  eps: float) -> list[dict]:
    """The records of one seed from its per-block numbers (None: the block has no weights)."""
    out, block_grads = [], []
    for i, (g, w, s, a) in enumerate(zip(grads, weights, signals, acts)):
        if g is not None:
            block_grads.append(g)
            out.append(record("grad_norm", g, "l2", seed, i))
            out.append(record("rel_grad_norm", g / w, "ratio", seed, i) if w else
                       undefined("rel_grad_norm", "the block's weights are all zero", "ratio", seed, i))
        out.append(record("signal_norm", s, "l2", seed, i))
        out.append(record("act_norm", a, "rms", seed, i))
    if block_grads:
        out.append(ratio(block_grads[0], block_grads[-1], "grad_ratio", seed, "the first and last weight-gradient norms", eps))
    if signals:
        out.append(ratio(signals[0], signals[-1], "signal_ratio", seed, "the first and last dL/dx norms"))
        out.append(ratio(acts[-1], act_in, "act_growth", seed, "the activation norms"))
    return out


def _data(cell: Cell, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.stack([cell.normal(seed, STREAM_DATA, 2 * cell.batch) for seed in seeds])
    return data[:, : cell.batch], data[:, cell.batch:]


def _vectorized(cell: Cell, seeds: tuple[int, ...]) -> list[dict] | None:
    how, eps = cell.options["norm_combine"], cell.options["ratio_eps"]
    x, target = _data(cell, seeds)
    stacked = batched.try_stack(cell, seeds, True,
                                lambda widths: (x[:, :2], batched.zero_deltas(cell, len(seeds), 2, widths)))
    if stacked is None:
        return None
    widths = stacked.widths
    deltas = batched.zero_deltas(cell, len(seeds), cell.batch, widths)
    output, acts = stacked(x, deltas)
    loss = (0.5 * ((output - target) ** 2).sum(dim=(1, 2)) / cell.batch).sum()
    names = list(stacked.params)
    grads = torch.autograd.grad(loss, [stacked.params[n] for n in names] + deltas, allow_unused=True)
    grad_of = dict(zip(names, grads[: len(names)]))
    n_blocks = len(widths) - 1
    per_block = []
    for block in stacked.block_params("net.blocks.", n_blocks):
        mats = [name for name, p in block.items() if p.dim() >= 3]
        if not mats:
            per_block.append((None, None))
            continue
        prefix = f"net.blocks.{len(per_block)}."
        g = torch.stack([grad_of[prefix + n].flatten(1).norm(dim=1) if grad_of[prefix + n] is not None
                         else torch.zeros(len(seeds), dtype=cell.dtype, device=cell.device) for n in mats])
        w = torch.stack([block[n].detach().flatten(1).norm(dim=1) for n in mats])
        # every seed's value as a Python list: one conversion per tensor, not one per seed
        per_block.append((_combine(g, how).tolist(), _combine(w, how).tolist()))
    signals = [d.flatten(1).norm(dim=1).tolist() if d is not None else [0.0] * len(seeds) for d in grads[len(names):]]
    act_norms = [_rms(a).tolist() for a in acts]
    out = []
    for j, seed in enumerate(seeds):
        out += _seed_records(seed, [g[j] if g is not None else None for g, _ in per_block],
                             [w[j] if w is not None else None for _, w in per_block],
                             [s[j] for s in signals], [a[j] for a in act_norms[1:]], act_norms[0][j], eps)
    return out


def _one_seed(cell: Cell, seed: int) -> list[dict]:
    how, eps = cell.options["norm_combine"], cell.options["ratio_eps"]
    net = cell.build(seed)
    x, target = _data(cell, [seed])
    trace = net.trace(x[0], retain_grad=True)
    loss = 0.5 * ((trace.output - target[0]) ** 2).sum() / cell.batch
    loss.backward()
    grads, weights = [], []
    for block in net.blocks:
        mats = [p for p in block.parameters() if p.dim() >= 2]
        if not mats:
            grads.append(None)
            weights.append(None)
            continue
        g = torch.stack([p.grad.norm() if p.grad is not None else torch.zeros((), dtype=cell.dtype, device=cell.device) for p in mats])
        grads.append(_combine(g, how).item())
        weights.append(_combine(torch.stack([p.detach().norm() for p in mats]), how).item())
    signals = [inp.grad.norm().item() if inp.grad is not None else 0.0 for inp in trace.block_inputs]
    acts = [_rms(o[None])[0].item() for o in trace.block_outputs]
    return _seed_records(seed, grads, weights, signals, acts, _rms(trace.block_inputs[0][None])[0].item(), eps)


def run(cell: Cell, vectorize: bool = True) -> list[dict]:
    """Gradient-flow records for every seed of the cell."""
    out = []
    for seeds in batched.chunks(cell, cell.batch):
        records = _vectorized(cell, seeds) if vectorize else None
        out += records if records is not None else [r for seed in seeds for r in _one_seed(cell, seed)]
    return out


MEASUREMENT = Measurement(
    name="gradient-flow",
    run=run,
    metrics=("grad_ratio", "grad_norm", "signal_norm", "act_norm", "rel_grad_norm", "signal_ratio", "act_growth"),
    options=(
        Param("norm_combine", "str", "global", ("global", "sum"),
              "a block's weight-gradient norm: global L2 over its weights, or the sum of per-matrix norms (the study)"),
        Param("ratio_eps", "float", 0.0, help="added to the last norm of grad_ratio (the study adds 1e-10)", minimum=0),
    ),
    description="per-block weight-gradient, signal (dL/dx) and activation norms; first/last ratios",
)
