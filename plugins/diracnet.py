"""diracnet: no explicit skip connection; each layer's weight is W = diag(a) I + diag(b) W_hat
(Zagoruyko & Komodakis 2017, "DiracNets: Training Very Deep Neural Networks Without
Skip-Connections").

W_hat is the raw weight with each output unit's row normalized to unit L2 norm, as in the
paper's reference code; a starts at 1 and b at 0.1 (the reference code's values, a choice the
paper's text leaves to it). The layer computes act(a * x + b * (W_hat x) + bias), which is
act((diag(a) I + diag(b) W_hat) x + bias) without forming the matrix.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.layers import linear as linear_op

from ._branch import as_channels
from ._common import base_params


class DiracLayer(nn.Module):
    """act((diag(a) I + diag(b) W_hat) x + bias), W_hat row-normalized."""

    def __init__(self, dim, activation, bias, init, a_init, b_init):
        super().__init__()
        self.fc = linear(dim, dim, init, bias)
        self.a = nn.Parameter(torch.full((dim,), a_init))
        self.b = nn.Parameter(torch.full((dim,), b_init))
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc.weight
        w_hat = w / w.norm(dim=-1, keepdim=True)
        y = as_channels(self.a) * x + as_channels(self.b) * linear_op(x, w_hat, None)
        return self.act(y if self.fc.bias is None else y + as_channels(self.fc.bias))


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("a_init", "float", 1.0, help="initial a, the identity's per-unit weight"),
        Param("b_init", "float", 0.1, help="initial b, the normalized weight's per-unit scale"),
    )
    yield BlockBuilder("diracnet", DiracLayer, params, layers_per_block=1, skip_kind="other", seed_batched=True,
                       description="act((diag(a) I + diag(b) W_hat) x), W_hat row-normalized, a = 1, b = 0.1 at init "
                                   "(DiracNets, Zagoruyko & Komodakis 2017)")
