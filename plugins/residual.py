"""residual: y = x + s * F(x) with a two-layer branch F, in post-, pre- or branch-only order."""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import init_linear, linear

from ._common import base_params

ORDERS = ("pre", "post", "branch-only")


class ResidualBlock(nn.Module):
    """post: act(x + s F(x)) (He et al. 2015); pre: x + s W2 act(W1 act(x)) (He et al. 2016);
    branch-only: x + s W2 act(W1 x), no activation outside the branch."""

    def __init__(self, dim, activation, bias, init, order, branch_scale, zero_init_last):
        super().__init__()
        self.fc1 = linear(dim, dim, init, bias)
        self.fc2 = linear(dim, dim, init, bias)
        if zero_init_last:
            init_linear(self.fc2, "zeros")
        self.act = make_activation(activation)
        self.order, self.scale = order, branch_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.fc2(self.act(self.fc1(self.act(x) if self.order == "pre" else x)))
        y = x + (branch if self.scale == 1.0 else self.scale * branch)  # 1.0 * b is b: skip the op
        return self.act(y) if self.order == "post" else y


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("order", "str", "pre", ORDERS, "where the activation sits relative to the addition"),
        Param("branch_scale", "float", 1.0, help="s in x + s F(x)"),
        Param("zero_init_last", "bool", False, help="start the branch's last layer at zero"),
    )
    yield BlockBuilder("residual", ResidualBlock, params, layers_per_block=2, skip_kind="additive", seed_batched=True,
                       description="y = x + s F(x), F two Linear layers (pre-, post-activation or branch-only)")
