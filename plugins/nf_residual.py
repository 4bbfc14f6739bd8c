"""nf-residual: normalizer-free residual blocks (Brock, De & Smith 2021, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets", NF-ResNets):
x_{l+1} = x_l + alpha F(x_l / beta_l).

beta_l = sqrt(1 + l alpha^2) is the expected standard deviation of x_l at block l (0-based) for
unit-variance input, so F sees unit-variance input and the expected squared activation grows
as 1 + l alpha^2. F must preserve variance. The paper uses Scaled Weight Standardization; this
block uses an initialization with the same effect instead (a choice): F(z) = W2 relu(W1 z) with
W1 He-normal, N(0, 2/fan_in), and W2 N(0, 1/fan_in) (the layer after the ReLU sees non-centred
input of second moment E z^2), which gives E||F(z)||^2 = ||z||^2 exactly over the weights for any
fixed z. That identity needs ReLU, so the activation is fixed.

Theory (the builder's prediction of gradient-flow's act_growth): W2 is zero-mean and
independent of the rest, so for a fixed x_l, E||x_{l+1}||^2 = ||x_l||^2 + alpha^2 E||F(x_l /
beta_l)||^2 = ||x_l||^2 (1 + alpha^2 / beta_l^2) = ||x_l||^2 (1 + (l+1) alpha^2) / (1 + l alpha^2).
The factors telescope: E[act_growth^2] = E||x_L||^2 / ||x_0||^2 = 1 + L alpha^2 exactly, for any
input (the trunk input's norm cancels; biases start at zero). A last block with its own alpha
(last_block) computes its beta_l with that alpha; the prediction is then the product of the
factors 1 + alpha_l^2 / beta_l^2.
"""

import math

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.specs import Prediction

from ._branch import Branch


def expected_std(block_index: int, alpha: float) -> float:
    """beta_l = sqrt(1 + l alpha^2): the expected std of block l's input (unit-variance input)."""
    return math.sqrt(1.0 + block_index * alpha**2)


class NFBlock(nn.Module):
    """x + alpha W2 relu(W1 (x / beta_l))."""

    def __init__(self, dim, bias, alpha, block_index, n_blocks):
        super().__init__()
        self.branch = Branch(dim, "relu", bias, "he-normal", last_init="xavier-seed")
        self.alpha, self.beta = alpha, expected_std(block_index, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.branch(x / self.beta)


def act_growth_squared(setting) -> float:
    """E[act_growth^2] = prod_l (1 + alpha_l^2 / beta_l^2): 1 + L alpha^2 for one alpha."""
    out = 1.0
    for block in range(setting.n_blocks):
        alpha = (setting.last_params if block == setting.n_blocks - 1 else setting.params)["alpha"]
        out *= 1.0 + alpha**2 / expected_std(block, alpha) ** 2
    return out


PREDICTIONS = (
    Prediction("act_growth", act_growth_squared, moment=2, measurement="gradient-flow",
               formula="prod_l (1 + alpha^2 / beta_l^2) = 1 + n_blocks alpha^2 (E||F(z)||^2 = ||z||^2, "
                       "beta_l^2 = 1 + l alpha^2)",
               source="Brock, De & Smith 2021 (NF-ResNets): Var(x_l) = 1 + l alpha^2"),
)


@skipbench.hookimpl
def skipbench_register_builders():
    params = (
        Param("bias", "bool", True, help="whether layers have a bias (initialized to zero)"),
        Param("alpha", "float", 0.2, help="alpha: the growth of the activations' variance per block", minimum=0.0),
    )
    yield BlockBuilder("nf-residual", NFBlock, params, layers_per_block=2, skip_kind="scaled", seed_batched=True,
                       position=True,
                       description="x + alpha F(x / beta_l), beta_l = sqrt(1 + l alpha^2), variance-preserving F "
                                   "(NF-ResNets, Brock et al. 2021)", predictions=PREDICTIONS)
