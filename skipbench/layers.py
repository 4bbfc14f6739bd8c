"""Layers whose one forward serves one seed's network and a stack of seeds' networks alike.

A block written with these (and with elementwise operations, and concatenation along the last
dimension) runs unchanged when its parameters carry a leading seed dimension and its input is
(seeds, rows, features): that is what a builder declares with ``seed_batched=True``, and what lets
the engine run many seeds at the cost of their batched matrix products (see engine/stack.py).
One seed's linear layer is ``F.linear``; a stack of them is one graph node whose forward is one
``baddbmm``: every seed's weight and bias gradients are its own ``F.linear``'s bit for bit, its
outputs equal to float precision (batched products round differently at some shapes; checked in
the tests).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` for one seed (weight (out, in), x (..., in)) or a stack of seeds (weight
    (seeds, out, in), bias (seeds, out), x (seeds, ..., in))."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    rows = x.reshape(weight.shape[0], -1, x.shape[-1])
    return _StackedLinear.apply(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[1])


class _StackedLinear(torch.autograd.Function):
    """A stack of linear layers, (seeds, rows, in) -> (seeds, rows, out), as one graph node.

    The output and the input's gradient are autograd's own for ``baddbmm(bias, rows, weight^T)``;
    the weight's gradient is ``g^T rows``, as F.linear computes it, in the weight's own (seeds,
    out, in) layout. Autograd's ``(rows^T g)^T`` is a transposed view, which the gradient's
    accumulation copies into the weight's layout on every training step, and in float64 it
    rounds differently from each seed's own F.linear."""

    @staticmethod
    def forward(ctx, rows, weight, bias):
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(rows, weight.mT)
        return torch.baddbmm(bias.unsqueeze(1), rows, weight.mT)

    @staticmethod
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad.bmm(weight) if need_x else None
        grad_w = grad.mT.bmm(rows) if need_w else None
        grad_b = grad.sum(1) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


# -- random draws in forward, one stream per seed ---------------------------------------------------
# each seed's generator of a stacked forward pass, in stack order (None: one seed, torch's generator)
_SEED_GENERATORS: contextvars.ContextVar[tuple[torch.Generator, ...] | None] = contextvars.ContextVar(
    "skipbench_seed_generators", default=None)


@contextlib.contextmanager
def seed_generators(generators: Iterable[torch.Generator]) -> Iterator[None]:
    """Within this context a stacked input's seed j draws from ``generators[j]`` (CPU
    generators) in :func:`seed_uniform` and :func:`row_uniform`. The engine sets it around a
    stacked forward pass, with each seed's forward stream (engine/streams.py)."""
    token = _SEED_GENERATORS.set(tuple(generators))
    try:
        yield
    finally:
        _SEED_GENERATORS.reset(token)


def _uniform(x: torch.Tensor, rows: bool) -> torch.Tensor:
    """U(0, 1) draws for `x`: one per seed (or per row with `rows`), see seed_uniform."""
    generators = _SEED_GENERATORS.get()
    if generators is None:
        if x.dim() != 2:
            raise ValueError(f"one seed's input must be (rows, features), got {tuple(x.shape)}; a stacked "
                             f"(seeds, rows, features) input draws only inside the engine's stacked forward")
        return torch.rand((x.shape[0] if rows else 1, 1), dtype=x.dtype).to(x.device)
    if x.dim() != 3 or x.shape[0] != len(generators):
        raise ValueError(f"a stacked input of {len(generators)} seeds must be (seeds, rows, features), "
                         f"got {tuple(x.shape)}")
    shape = (x.shape[1] if rows else 1, 1)
    return torch.stack([torch.rand(shape, dtype=x.dtype, generator=g) for g in generators]).to(x.device)


def seed_uniform(x: torch.Tensor) -> torch.Tensor:
    """One U(0, 1) draw per seed, shaped to broadcast against `x`: (1, 1) for one seed's
    (rows, features) input, from torch's global CPU generator (which the engine's per-seed loop
    sets to the seed's forward stream); (seeds, 1, 1) for a stacked (seeds, rows, features)
    input, seed j's value from seed j's own forward stream. A seed therefore gets the same draws
    alone, in any stack, on any path. Drawn on the CPU in `x`'s dtype, then moved to its device.

    A block written with it (say stochastic depth: ``keep = (seed_uniform(x) < p)``) may
    declare ``seed_batched=True``."""
    return _uniform(x, rows=False)


def row_uniform(x: torch.Tensor) -> torch.Tensor:
    """One U(0, 1) draw per row (sample), shaped to broadcast against `x`: (rows, 1) for one
    seed, (seeds, rows, 1) for a stack; drawn as :func:`seed_uniform` draws."""
    return _uniform(x, rows=True)


class Linear(nn.Linear):
    """``nn.Linear`` that also runs stacked seeds (see :func:`linear`); the same parameters,
    names and initialization as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def per_seed_mean(x: torch.Tensor, sample_dims: int = 2) -> torch.Tensor:
    """Mean over the last `sample_dims` dimensions (a block's (rows, features)): a 0-dim tensor
    for one seed, one value per seed for a stack."""
    return x.mean(dim=tuple(range(-sample_dims, 0)))


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension that also runs stacked seeds: the same
    parameters, names and initialization; with weight and bias (seeds, features) the input is
    (seeds, rows, features) and each seed uses its own affine parameters."""

    def __init__(self, features: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__(features, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None or self.weight.dim() == 1:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return torch.addcmul(self.bias.unsqueeze(-2), y, self.weight.unsqueeze(-2))


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` on (rows, features) that also runs stacked seeds: the same parameters,
    buffers, names and initialization. Stacked (weight, bias, running statistics (seeds,
    features), input (seeds, rows, features)), each seed normalizes over its own rows in
    training and updates its own running statistics in place; eval mode uses them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.running_mean if self.running_mean is not None else self.weight
        if stats is None or stats.dim() == 1:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        if self.momentum is None:
            raise ValueError("stacked seeds need a fixed momentum (a cumulative average would read each seed's count)")
        seeds, features = stats.shape
        # seed j's feature f is channel j * features + f of one batch norm over (rows, seeds * features):
        # every seed's statistics and running-buffer updates are exactly its own
        rows = x.reshape(seeds, -1, features).transpose(0, 1).reshape(-1, seeds * features)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        flat = [None if t is None else t.view(-1) for t in (self.running_mean, self.running_var, self.weight, self.bias)]
        out = F.batch_norm(rows, *flat, self.training or self.running_mean is None, self.momentum, self.eps)
        return out.reshape(-1, seeds, features).transpose(0, 1).reshape(x.shape)
