"""dense: each layer reads the concatenation of everything before it (DenseNet, Huang et al. 2017).

A network of D dense layers is one dense block of D layers: layer i sees the block's input and
all earlier layers' outputs, because each layer returns cat(x, act(W x + b)).
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear

from ._common import base_params


class DenseLayer(nn.Module):
    """cat(x, act(W x + b)): the width grows by the growth rate."""

    def __init__(self, in_dim, activation, bias, init, growth_rate):
        super().__init__()
        self.fc = linear(in_dim, growth_rate, init, bias)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.act(self.fc(x))], dim=1)


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (Param("growth_rate", "int", 16, help="features each layer adds", minimum=1),)
    yield BlockBuilder("dense", DenseLayer, params, layers_per_block=1, skip_kind="concatenative",
                       description="y = [x, act(W x + b)]: features concatenate, width grows with depth")
