"""highway: y = T * H(x) + (1 - T) * x with a learned gate T (Srivastava et al. 2015).

Theory (the builder's prediction of the probes' gate_mean of block 0): with N(0, 1) probe inputs
(option inputs = "normal") and no stem, block 0 sees x ~ N(0, I_width). Gate unit j's
pre-activation is then w_j . x + b ~ N(b, ||w_j||^2) for its fixed weights w_j, and with
i.i.d. N(0, sigma^2) entries ||w_j||^2 = sigma^2 U, U ~ chi^2(width) (sigma^2 = 2 / width for
He-normal, 1 / width for xavier-seed and xavier-normal; orthogonal rows have ||w_j|| = 1; zero
weights give sigmoid(b)). The gate mean averages sigmoid over rows and units, so its expectation
over seeds is E_U E_Z[sigmoid(b + sigma sqrt(U) Z)] exactly: theory.gaussian_sigmoid_mean, by
quadrature. Plugging in ||w_j||^2 = sigma^2 width instead (Z ~ N(b, 1) for xavier-seed) is off
by 2.5e-4 at width 32 and 1.8e-3 at width 4 (bias -2): about a seventh of one seed's spread, so
a bias a z-test over a few thousand seeds finds. Deeper blocks see non-Gaussian inputs: no
prediction.
torch-default draws the gate's bias: no prediction.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.layers import per_seed_mean
from skipbench.specs import INITS, Prediction

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


# Var(W_ij) * width of the gate's weight, by init (None: ||w_j|| = 1 exactly, orthogonal rows)
GATE_VARIANCE = {"he-normal": 2.0, "xavier-seed": 1.0, "xavier-normal": 1.0, "zeros": 0.0, "orthogonal": None}


def first_gate_mean(setting) -> float | None:
    """E[gate_mean of block 0] for N(0, 1) probe inputs and no stem (None otherwise)."""
    from skipbench.theory import gaussian_sigmoid_mean

    params = setting.params if setting.n_blocks > 1 else setting.last_params
    if setting.options.get("inputs") != "normal" or setting.network["stem"] != "none":
        return None
    if params["gate_init"] not in GATE_VARIANCE:
        return None
    gain, width = GATE_VARIANCE[params["gate_init"]], setting.width
    if gain is None:  # orthogonal: every row has norm 1
        return gaussian_sigmoid_mean(params["gate_bias"], 1.0)
    return gaussian_sigmoid_mean(params["gate_bias"], gain / width, width)


PREDICTIONS = (
    Prediction("gate_mean", first_gate_mean, index=0, measurement="probes",
               formula="E_U E_Z sigmoid(b + sigma sqrt(U) Z), Z ~ N(0, 1), U ~ chi^2(width), sigma^2 = Var(W_T) "
                       "(block 0, N(0, 1) inputs, no stem; Gauss-Hermite and Gauss-Laguerre quadrature)",
               source="Srivastava, Greff & Schmidhuber 2015 (Highway Networks); "
                      "quadrature: skipbench.theory.gaussian_sigmoid_mean"),
)


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("gate_bias", "float", -2.0, help="initial gate bias b_T: negative favours carrying x"),
        Param("gate_init", "str", "xavier-seed", INITS, "initialization of the gate's weight"),
    )
    yield BlockBuilder("highway", HighwayLayer, params, layers_per_block=1, skip_kind="gated", seed_batched=True,
                       probes=("gate_mean", "gate"),
                       description="y = T H(x) + (1 - T) x, T = sigmoid(W_T x + b_T)", predictions=PREDICTIONS)
