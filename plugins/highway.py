"""highway: y = T * H(x) + (1 - T) * x with a learned gate T (Srivastava et al. 2015)."""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.layers import per_seed_mean
from skipbench.specs import INITS

from ._common import base_params


class HighwayLayer(nn.Module):
    """H = act(W_H x + b_H), T = sigmoid(W_T x + b_T), y = T H + (1 - T) x."""

    # the gate's matrix is not a layer of the main path: depth counts W_H only (skipbench check)
    skipbench_side_weights = ("gate.weight",)

    def __init__(self, dim, activation, bias, init, gate_bias, gate_init):
        super().__init__()
        self.transform = linear(dim, dim, init, bias)
        self.gate = linear(dim, dim, gate_init, True, gate_bias)
        self.act = make_activation(activation)
        self.last_gate = torch.full((1,), float("nan"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x))
        self.last_gate = t.detach()
        return torch.lerp(x, self.act(self.transform(x)), t)  # x + t (H - x): T H + (1 - T) x in one pass

    def skipbench_probes(self) -> dict:
        """The last forward pass's gate values, and their mean over the batch and the units (as
        tensors: one mean per seed when the block runs stacked seeds)."""
        return {"gate_mean": per_seed_mean(self.last_gate), "gate": self.last_gate}


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("gate_bias", "float", -2.0, help="initial gate bias b_T: negative favours carrying x"),
        Param("gate_init", "str", "xavier-seed", INITS, "initialization of the gate's weight"),
    )
    yield BlockBuilder("highway", HighwayLayer, params, layers_per_block=1, skip_kind="gated", seed_batched=True,
                       probes=("gate_mean", "gate"),
                       description="y = T H(x) + (1 - T) x, T = sigmoid(W_T x + b_T)")
