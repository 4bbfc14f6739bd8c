"""bn-residual: the pre-activation residual block with BatchNorm (He et al. 2016, "Identity
Mappings in Deep Residual Networks"): x + W2 act(BN(W1 act(BN(x)))).

BatchNorm normalizes over the batch's rows in training mode and uses its running statistics in
eval mode; each seed has its own (skipbench.layers.BatchNorm).
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.layers import BatchNorm

from ._common import base_params

# no bias on the Linear layers: as in the paper's convolutions, BatchNorm's own shift follows each one
PARAMS = tuple(Param("bias", "bool", False, help=p.help) if p.name == "bias" else p for p in base_params())


class BNResidualBlock(nn.Module):
    """x + W2 act(BN2(W1 act(BN1(x))))."""

    def __init__(self, dim, activation, bias, init):
        super().__init__()
        self.bn1, self.bn2 = BatchNorm(dim), BatchNorm(dim)
        self.fc1 = linear(dim, dim, init, bias)
        self.fc2 = linear(dim, dim, init, bias)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.act(self.bn1(x)))
        return x + self.fc2(self.act(self.bn2(h)))


@skipbench.hookimpl
def skipbench_register_builders():
    yield BlockBuilder("bn-residual", BNResidualBlock, PARAMS, layers_per_block=2, skip_kind="additive",
                       seed_batched=True,
                       description="x + W2 act(BN(W1 act(BN(x)))): pre-activation with BatchNorm (He et al. 2016)")
