"""stochastic-depth: residual blocks whose branch is dropped at random in training (Huang et al.
2016, "Deep Networks with Stochastic Depth").

Block l (1-based) of L survives with probability p_l = 1 - (l / L) (1 - p_L), the paper's
linear decay (p_L = 0.5 by default), so (3L - 1) / 4 blocks are kept in expectation. One draw per
block per forward pass: the whole mini-batch keeps or drops the branch, as in the paper. In eval
mode the branch is scaled by p_l, the paper's test rule. The block is x + b F(x), F(x) =
W2 act(W1 x); the paper's ResNet applies ReLU after the addition, left out here (a choice, as
for the other normalizer-free residual blocks) so that a dropped block is exactly the identity.

Theory (the builder's prediction of the probes' kept, the mean over blocks): in training mode
block l keeps its branch with probability min(1, p_l), one draw per forward pass, so the
expected fraction of kept blocks is the mean of the p_l: 1 - (L + 1) / (2L) (1 - p_L) for the
linear decay ((3L - 1) / (4L) at p_L = 0.5). In eval mode the probe reports 1 for every block.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.layers import seed_uniform
from skipbench.specs import Prediction

from ._branch import Branch
from ._common import base_params


def survival_probability(block_index: int, n_blocks: int, p_last: float) -> float:
    """p_l = 1 - (l / L) (1 - p_L) for block l = block_index + 1 of L = n_blocks."""
    return 1.0 - (block_index + 1) / n_blocks * (1.0 - p_last)


class StochasticDepthBlock(nn.Module):
    """x + b F(x): b ~ Bernoulli(p_l) per forward in training, b = p_l in eval mode."""

    def __init__(self, dim, activation, bias, init, p_last, block_index, n_blocks):
        super().__init__()
        self.branch = Branch(dim, activation, bias, init)
        self.p = survival_probability(block_index, n_blocks, p_last)
        self.last_kept = torch.full((1, 1), float("nan"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_seed = (*x.shape[:-2], 1, 1)  # one value per seed, broadcasting against x
        if not self.training:
            self.last_kept = x.new_ones(per_seed)
            return x + self.p * self.branch(x)
        keep = (seed_uniform(x) < self.p).to(x.dtype)  # one draw per seed, from its own forward stream
        self.last_kept = keep.detach().expand(per_seed)
        # multiplied rather than skipped: no branching on a drawn value, so the forward stays one program
        return x + keep * self.branch(x)

    def skipbench_probes(self) -> dict:
        """Whether the last forward pass kept the branch (1) or dropped it (0), one per seed."""
        return {"kept": self.last_kept.reshape(self.last_kept.shape[:-2])}


def kept_fraction(setting) -> float:
    """E[kept, mean over blocks]: the mean over blocks of min(1, p_l) in training mode (each
    block's own p_last, the last block's from last_block), 1 in eval mode."""
    if setting.mode == "eval":
        return 1.0
    n = setting.n_blocks
    p = [survival_probability(i, n, (setting.last_params if i == n - 1 else setting.params)["p_last"])
         for i in range(n)]
    return sum(min(1.0, max(0.0, q)) for q in p) / n


PREDICTIONS = (
    Prediction("kept", kept_fraction, measurement="probes",
               formula="mean_l p_l = 1 - (L + 1) / (2L) (1 - p_L), p_l = 1 - l / L (1 - p_L) (training mode)",
               source="Huang et al. 2016 (Deep Networks with Stochastic Depth): "
                      "E[kept blocks] = (3L - 1) / 4 at p_L = 0.5"),
)


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("p_last", "float", 0.5, help="p_L, the last block's survival probability", minimum=0.0),
    )
    yield BlockBuilder("stochastic-depth", StochasticDepthBlock, params, layers_per_block=2, skip_kind="additive",
                       seed_batched=True, position=True, probes=("kept",),
                       description="x + b F(x), b ~ Bernoulli(p_l), p_l = 1 - l/L (1 - p_L) in training, "
                                   "b = p_l in eval (stochastic depth, Huang et al. 2016)", predictions=PREDICTIONS)
