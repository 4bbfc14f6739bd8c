"""deepnorm: LN(alpha x + F(x)) with F's weights scaled by beta at initialization (Wang et al.
2022, "DeepNet: Scaling Transformers to 1,000 Layers").

The constants are the paper's encoder-only setting: alpha = (2N)^(1/4), beta = (8N)^(-1/4),
with N the number of blocks (a choice: the paper's N counts Transformer layers, each an attention
and an FFN sublayer; here each block is one two-layer sublayer). Both branch layers are scaled,
as the paper scales the FFN's, and the paper's Xavier-normal init is the default.
"""

import torch

import skipbench
from skipbench import BlockBuilder

from ._common import base_params
from .layernorm import NormResidual


def deepnorm_constants(n_blocks: int) -> tuple[float, float]:
    """(alpha, beta) of the encoder-only DeepNorm for `n_blocks` blocks."""
    return (2.0 * n_blocks) ** 0.25, (8.0 * n_blocks) ** -0.25


class DeepNormBlock(NormResidual):
    """LN(alpha x + F(x)), F = W2 act(W1 x) with W1, W2 drawn from `init` and multiplied by beta."""

    def __init__(self, dim, activation, bias, init, block_index, n_blocks):
        alpha, beta = deepnorm_constants(n_blocks)
        super().__init__(dim, activation, bias, init, "post", alpha)
        self.beta = beta
        with torch.no_grad():
            self.branch.fc1.weight.mul_(beta)
            self.branch.fc2.weight.mul_(beta)


@skipbench.hookimpl
def skipbench_register_builders():
    yield BlockBuilder("deepnorm", DeepNormBlock, base_params("xavier-normal"), layers_per_block=2,
                       skip_kind="scaled", seed_batched=True, position=True,
                       description="LN(alpha x + F(x)), alpha = (2N)^(1/4), F's weights times beta = (8N)^(-1/4) "
                                   "at init, N blocks (DeepNet, Wang et al. 2022)")
