"""rezero and skipinit: x + alpha F(x) with a learnable scalar alpha that starts at zero.

ReZero (Bachlechner et al. 2020, "ReZero is All You Need") puts the scalar on any residual
branch, here F(x) = W2 act(W1 x). SkipInit (De & Smith 2020, "Batch Normalization Biases
Residual Blocks Towards the Identity Function in Deep Networks") is the same scalar placed at the
end of the residual branch of a ResNet without BatchNorm; its normalizer-free ResNet-v2 branch is
pre-activation, F(x) = W2 act(W1 act(x)). With alpha = 0 each block, and so the trunk, is the
identity at initialization.

Theory (the builders' prediction of identity's mse_init): with alpha_init = 0 in every block, no
stem and no head (head "none", or "auto", which adds none at equal widths) the network is x +
0 * F(x) = x in floating point (F finite), so mse_init is 0 exactly, in every seed.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.specs import Prediction

from ._branch import Branch, as_scalar, scalar_parameter
from ._common import base_params


class ScaledBranchBlock(nn.Module):
    """x + alpha F(x); F = W2 act(W1 x), or with `preactivation` W2 act(W1 act(x))."""

    def __init__(self, dim, activation, bias, init, alpha_init, preactivation=False):
        super().__init__()
        self.pre = make_activation(activation) if preactivation else None
        self.branch = Branch(dim, activation, bias, init)
        self.alpha = scalar_parameter(alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.pre is None else self.pre(x)
        return x + as_scalar(self.alpha) * self.branch(z)


def build_rezero(in_dim, activation, bias, init, alpha_init):
    """A ReZero block: x + alpha W2 act(W1 x)."""
    return ScaledBranchBlock(in_dim, activation, bias, init, alpha_init)


def build_skipinit(in_dim, activation, bias, init, alpha_init):
    """A SkipInit block: x + alpha W2 act(W1 act(x)) (the normalizer-free pre-activation branch)."""
    return ScaledBranchBlock(in_dim, activation, bias, init, alpha_init, preactivation=True)


def identity_network(setting) -> bool:
    """Whether the network around the trunk adds nothing: no stem, no head (the trunk's width
    is the input's, so head "auto" adds none)."""
    return setting.network["stem"] == "none" and setting.network["head"] in ("none", "auto")


def mse_init(setting) -> float | None:
    """0 where every block's alpha starts at 0 and nothing surrounds the trunk; else None."""
    zero = setting.params["alpha_init"] == 0 and setting.last_params["alpha_init"] == 0
    return 0.0 if zero and identity_network(setting) else None


PREDICTIONS = (
    Prediction("mse_init", mse_init, measurement="identity",
               formula="0 exactly: alpha = 0 makes every block x + 0 F(x) = x (no stem, no head)",
               source="Bachlechner et al. 2020 (ReZero); De & Smith 2020 (SkipInit)"),
)


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (Param("alpha_init", "float", 0.0, help="initial value of the learnable scalar alpha"),)
    yield BlockBuilder("rezero", build_rezero, params, layers_per_block=2, skip_kind="scaled", seed_batched=True,
                       description="x + alpha W2 act(W1 x), learnable scalar alpha, 0 at init "
                                   "(ReZero, Bachlechner et al. 2020)", predictions=PREDICTIONS)
    yield BlockBuilder("skipinit", build_skipinit, params, layers_per_block=2, skip_kind="scaled", seed_batched=True,
                       description="x + alpha W2 act(W1 act(x)), learnable scalar alpha at the end of a "
                                   "normalizer-free pre-activation branch, 0 at init (SkipInit, De & Smith 2020)",
                       predictions=PREDICTIONS)
