"""layerscale: x + diag(lambda) F(LN(x)), a learnable per-channel lambda that starts small
(Touvron et al. 2021, "Going deeper with Image Transformers", CaiT).

CaiT initializes every lambda to epsilon, chosen by depth: 0.1 up to 18 blocks, 1e-5 up to 24,
1e-6 beyond (its section 2). Its residual branches are pre-LayerNorm (F(eta(x)), eta a
LayerNorm), as here; its FFN's GELU is available as `activation = "gelu"` (the default is ReLU,
as in every built-in builder, so that variants differ only in their skip connection).
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.layers import LayerNorm

from ._branch import Branch, as_channels
from ._common import base_params


def cait_epsilon(n_blocks: int) -> float:
    """CaiT's initial lambda for a network of `n_blocks` residual blocks."""
    if n_blocks <= 18:
        return 0.1
    return 1e-5 if n_blocks <= 24 else 1e-6


class LayerScaleBlock(nn.Module):
    """x + lambda * F(LN(x)), lambda a per-channel vector (LN omitted without `norm`)."""

    def __init__(self, dim, activation, bias, init, epsilon, norm, block_index, n_blocks):
        super().__init__()
        self.norm = LayerNorm(dim) if norm else nn.Identity()
        self.branch = Branch(dim, activation, bias, init)
        self.lam = nn.Parameter(torch.full((dim,), epsilon if epsilon > 0 else cait_epsilon(n_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + as_channels(self.lam) * self.branch(self.norm(x))


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("epsilon", "float", 0.0, help="initial lambda; 0: by block count as CaiT (0.1, 1e-5, 1e-6)", minimum=0.0),
        Param("norm", "bool", True, help="pre-LayerNorm on the branch, as in CaiT"),
    )
    yield BlockBuilder("layerscale", LayerScaleBlock, params, layers_per_block=2, skip_kind="scaled",
                       seed_batched=True, position=True,
                       description="x + diag(lambda) F(LN(x)), lambda per channel, epsilon at init chosen by depth "
                                   "(LayerScale, Touvron et al. 2021)")
