"""Layers whose one forward serves one seed's network and a stack of seeds' networks alike.

A block written with these (and with elementwise operations, and concatenation along the last
dimension) runs unchanged when its parameters carry a leading seed dimension and its input is
(seeds, rows, features): that is what a builder declares with ``seed_batched=True``, and what lets
the engine run many seeds at the cost of their batched matrix products (see engine/stack.py).
One seed's linear layer is ``F.linear``; a stack of them is one ``baddbmm``, which computes
every seed's product exactly as ``F.linear`` does (the same bits, checked in the tests).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` for one seed (weight (out, in), x (..., in)) or a stack of seeds (weight
    (seeds, out, in), bias (seeds, out), x (seeds, ..., in))."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    rows = x.reshape(weight.shape[0], -1, x.shape[-1])
    if bias is None:
        out = torch.bmm(rows, weight.mT)
    else:
        out = torch.baddbmm(bias.unsqueeze(1), rows, weight.mT)
    return out.reshape(*x.shape[:-1], weight.shape[1])


class Linear(nn.Linear):
    """``nn.Linear`` that also runs stacked seeds (see :func:`linear`); the same parameters,
    names and initialization as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def per_seed_mean(x: torch.Tensor, sample_dims: int = 2) -> torch.Tensor:
    """Mean over the last `sample_dims` dimensions (a block's (rows, features)): a 0-dim tensor
    for one seed, one value per seed for a stack."""
    return x.mean(dim=tuple(range(-sample_dims, 0)))
