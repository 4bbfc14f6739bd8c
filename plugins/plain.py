"""plain: no skip connection, one Linear layer and its activation per block."""

from torch import nn

import skipbench
from skipbench import BlockBuilder
from skipbench.inits import activation as make_activation
from skipbench.inits import linear

from ._common import base_params


def build(in_dim: int, activation: str, bias: bool, init: str) -> nn.Module:
    """Linear(in_dim, in_dim) followed by the activation."""
    return nn.Sequential(linear(in_dim, in_dim, init, bias), make_activation(activation))


@skipbench.hookimpl
def skipbench_register_builders():
    yield BlockBuilder("plain", build, base_params(), layers_per_block=1, skip_kind="none", seed_batched=True,
                       description="y = act(W x + b): no skip connection")
