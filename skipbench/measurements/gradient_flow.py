"""Gradient flow: per-block weight-gradient norms and what the first/last ratio cannot show.

For each seed: one forward and backward pass on N(0, 1) inputs and targets with the loss
0.5 * sum((y - t)^2) / batch. Per block: the weight-gradient norm (weights are parameters with
two or more dimensions), the relative gradient ||grad W|| / ||W||, the norm of the backpropagated
signal dL/dx at the block's input, and the per-sample RMS activation norm at the block's output.
Per seed: grad_ratio (first block over last), signal_ratio (dL/dx at the first block's input
over the last's) and act_growth (last block's activation norm over the trunk input's).
"""

from __future__ import annotations

import math

import torch

from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, ratio, record, undefined


def _combine(norms: list[float], how: str) -> float:
    return sum(norms) if how == "sum" else math.sqrt(sum(n * n for n in norms))


def _rms(x: torch.Tensor) -> float:
    return (x.detach().norm() / math.sqrt(x.shape[0])).item()


def run(cell: Cell) -> list[dict]:
    """Gradient-flow records for every seed of the cell."""
    how, eps = cell.options["norm_combine"], cell.options["ratio_eps"]
    out = []
    for seed in cell.seeds:
        net = cell.build(seed)
        data = cell.normal(seed, STREAM_DATA, 2 * cell.batch)
        x, target = data[: cell.batch], data[cell.batch:]
        trace = net.trace(x, retain_grad=True)
        loss = 0.5 * ((trace.output - target) ** 2).sum() / cell.batch
        loss.backward()
        grads, signals, acts = [], [], []
        for i, block in enumerate(net.blocks):
            weights = [p for p in block.parameters() if p.dim() >= 2]
            if weights:
                g = _combine([(p.grad.norm().item() if p.grad is not None else 0.0) for p in weights], how)
                w = _combine([p.detach().norm().item() for p in weights], how)
                grads.append(g)
                out.append(record("grad_norm", g, "l2", seed, i))
                out.append(record("rel_grad_norm", g / w, "ratio", seed, i) if w else
                           undefined("rel_grad_norm", "the block's weights are all zero", "ratio", seed, i))
            inp = trace.block_inputs[i]
            s = inp.grad.norm().item() if inp.grad is not None else 0.0
            signals.append(s)
            out.append(record("signal_norm", s, "l2", seed, i))
            acts.append(_rms(trace.block_outputs[i]))
            out.append(record("act_norm", acts[-1], "rms", seed, i))
        if grads:
            out.append(ratio(grads[0], grads[-1], "grad_ratio", seed, "the first and last weight-gradient norms", eps))
        if signals:
            out.append(ratio(signals[0], signals[-1], "signal_ratio", seed, "the first and last dL/dx norms"))
            out.append(ratio(acts[-1], _rms(trace.block_inputs[0]), "act_growth", seed, "the activation norms"))
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
