"""Weight initializations by name, shared by the network and the built-in plugins.

"xavier-seed" is the study's Xavier-normal, N(0, 1/fan_in); torch's xavier_normal_ uses
2/(fan_in + fan_out) and is available as "xavier-normal". Biases always start at zero except
under "torch-default", which keeps torch's own Linear initialization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Linear
from .specs import INITS


def init_linear(layer: nn.Linear, scheme: str, bias: float = 0.0) -> nn.Linear:
    """Initialize `layer` in place with the named scheme; return it."""
    if scheme not in INITS:
        raise ValueError(f"unknown initialization {scheme!r}; choose one of {', '.join(INITS)}")
    if scheme == "torch-default":
        return layer
    weight = layer.weight
    fan_in = weight.shape[1]
    with torch.no_grad():
        if scheme == "he-normal":
            weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        elif scheme == "xavier-seed":
            weight.normal_(0.0, math.sqrt(1.0 / fan_in))
        elif scheme == "xavier-normal":
            nn.init.xavier_normal_(weight)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(weight)
        elif scheme == "zeros":
            weight.zero_()
        if layer.bias is not None:
            layer.bias.fill_(bias)
    return layer


def _uninitialized_linear(in_dim: int, out_dim: int, bias: bool) -> nn.Linear:
    # nn.Linear without its own reset_parameters(), whose draws init_linear would overwrite:
    # building deep networks for many seeds is dominated by such per-layer costs
    layer = Linear.__new__(Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = in_dim, out_dim
    layer.weight = nn.Parameter(torch.empty(out_dim, in_dim))
    layer.bias = nn.Parameter(torch.empty(out_dim)) if bias else None
    return layer


def linear(in_dim: int, out_dim: int, scheme: str, bias: bool = True, bias_value: float = 0.0) -> nn.Linear:
    """A new Linear layer initialized with the named scheme (drawing only that scheme's numbers);
    a skipbench.layers.Linear, so that it also runs stacked seeds."""
    if scheme == "torch-default":
        return Linear(in_dim, out_dim, bias=bias)
    return init_linear(_uninitialized_linear(in_dim, out_dim, bias), scheme, bias_value)


ACTIVATIONS = ("relu", "gelu", "tanh", "identity")


def activation(name: str) -> nn.Module:
    """The activation module for a name in ACTIVATIONS."""
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity}[name]()
