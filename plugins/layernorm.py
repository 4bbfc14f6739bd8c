"""preln and postln: a residual block with LayerNorm before the branch or after the addition.

Post-LN, LN(x + F(x)), is the original Transformer's (Vaswani et al. 2017); pre-LN,
x + F(LN(x)), keeps an identity path from input to output (Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture", compare both). F(x) = W2 act(W1 x). The final
LayerNorm that pre-LN Transformers put after the last block is left out: the network's linear
head follows the trunk. DeepNorm (deepnorm.py) is post-LN with alpha x and F scaled by beta.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.layers import LayerNorm

from ._branch import Branch
from ._common import base_params

PLACEMENTS = ("pre", "post")


class NormResidual(nn.Module):
    """pre: x + F(LN(x)); post: LN(alpha x + F(x)) (alpha = 1 is plain post-LN)."""

    def __init__(self, dim, activation, bias, init, placement, alpha=1.0):
        super().__init__()
        self.branch = Branch(dim, activation, bias, init)
        self.norm = LayerNorm(dim)
        self.placement, self.alpha = placement, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "pre":
            return x + self.branch(self.norm(x))
        skip = x if self.alpha == 1.0 else self.alpha * x
        return self.norm(skip + self.branch(x))


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (Param("placement", "str", "pre", PLACEMENTS, "LayerNorm before the branch or after the addition"),)
    yield BlockBuilder("ln-residual", NormResidual, params, layers_per_block=2, skip_kind="additive", seed_batched=True,
                       description="pre: x + F(LN(x)) (Xiong et al. 2020); post: LN(x + F(x)) (Vaswani et al. 2017)")
