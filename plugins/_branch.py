"""Pieces the built-in residual families share: the two-layer branch F(x) = W2 act(W1 x), and
learnable scalars and per-channel vectors shaped to multiply one seed's or a stack's tensors."""

import torch
from torch import nn

from skipbench.inits import activation as make_activation
from skipbench.inits import linear


class Branch(nn.Module):
    """F(x) = W2 act(W1 x): two square Linear layers, `init` for W1 and `last_init` (default
    `init`) for W2."""

    def __init__(self, dim: int, activation: str, bias: bool, init: str, last_init: str | None = None):
        super().__init__()
        self.fc1 = linear(dim, dim, init, bias)
        self.act = make_activation(activation)
        self.fc2 = linear(dim, dim, last_init or init, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def scalar_parameter(value: float) -> nn.Parameter:
    """A learnable scalar, stored with shape (1,) (a stack of seeds makes it (seeds, 1))."""
    return nn.Parameter(torch.full((1,), float(value)))


def as_scalar(p: torch.Tensor) -> torch.Tensor:
    """A (1,) or stacked (seeds, 1) scalar shaped to broadcast against (rows, features) or
    (seeds, rows, features)."""
    return p.unsqueeze(-1)


def as_channels(p: torch.Tensor) -> torch.Tensor:
    """A (features,) or stacked (seeds, features) vector shaped to broadcast against
    (rows, features) or (seeds, rows, features)."""
    return p.unsqueeze(-2)
