"""fixup: residual blocks that train without normalization (Zhang, Dauphin & Ma 2019, "Fixup
Initialization: Residual Learning Without Normalization").

The paper's rules for a branch of m weight layers in a network of L residual branches: the last
layer starts at zero; the others get the standard (He) initialization scaled by L^(-1/(2m-2));
a scalar bias (init 0) comes before each weight layer and activation, and a scalar multiplier
(init 1) and a last scalar bias (init 0) end the branch, as in the paper's BasicBlock. Here
m = 2 and L is the trunk's block count. The paper's ResNet applies ReLU after the addition; this
block does not unless `post_activation` is set, so the trunk is exactly the identity at
initialization (a choice: the benchmark's normalizer-free residual blocks have no activation
outside the branch).

Theory (the builder's prediction of identity's mse_init): without post_activation, no stem and
no head, each block is x + 0 * scale + 0 = x at initialization (W2 = 0, the last bias 0), so
mse_init is 0 exactly, in every seed.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import ACTIVATIONS
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.specs import INITS, Prediction

from ._branch import as_scalar, scalar_parameter

BRANCH_LAYERS = 2  # the paper's m


def fixup_scale(n_blocks: int, m: int = BRANCH_LAYERS) -> float:
    """L^(-1/(2m-2)): the factor on the standard init of a branch's non-last layers."""
    return n_blocks ** (-1.0 / (2 * m - 2))


class FixupBlock(nn.Module):
    """x + scale W2 (act(W1 (x + b1a) + b1b) + b2a) + b2b, W2 = 0 and W1 scaled at init."""

    def __init__(self, dim, activation, init, post_activation, block_index, n_blocks):
        super().__init__()
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = (scalar_parameter(0.0) for _ in range(4))
        self.fc1 = linear(dim, dim, init, bias=False)
        with torch.no_grad():
            self.fc1.weight.mul_(fixup_scale(n_blocks))
        self.act = make_activation(activation)
        self.fc2 = linear(dim, dim, "zeros", bias=False)
        self.scale = scalar_parameter(1.0)
        self.post = make_activation(activation) if post_activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x + as_scalar(self.bias1a)) + as_scalar(self.bias1b))
        y = x + self.fc2(h + as_scalar(self.bias2a)) * as_scalar(self.scale) + as_scalar(self.bias2b)
        return y if self.post is None else self.post(y)


def mse_init(setting) -> float | None:
    """0 without post_activation, stem or head (see the module's docstring); else None."""
    post = setting.params["post_activation"] or setting.last_params["post_activation"]
    bare = setting.network["stem"] == "none" and setting.network["head"] in ("none", "auto")
    return 0.0 if bare and not post else None


PREDICTIONS = (
    Prediction("mse_init", mse_init, measurement="identity",
               formula="0 exactly: W2 = 0 and the last scalar bias 0 make every block the identity "
                       "(no activation after the addition, no stem, no head)",
               source="Zhang, Dauphin & Ma 2019 (Fixup)"),
)


@skipbench.hookimpl
def skipbench_register_builders():
    params = (
        Param("activation", "str", "relu", ACTIVATIONS, "nonlinearity inside the branch"),
        Param("init", "str", "he-normal", INITS, "standard initialization of W1 before the Fixup scaling"),
        Param("post_activation", "bool", False, help="the paper's ResNet's activation after the addition"),
    )
    yield BlockBuilder("fixup", FixupBlock, params, layers_per_block=BRANCH_LAYERS, skip_kind="additive",
                       seed_batched=True, position=True,
                       description="x + s W2 (act(W1 (x + b) + b) + b) + b: W2 zero, W1 He times L^(-1/(2m-2)), "
                                   "scalar biases and multiplier (Fixup, Zhang et al. 2019)", predictions=PREDICTIONS)
