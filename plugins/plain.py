"""plain: no skip connection, one Linear layer and its activation per block.

Theory (the builder's prediction of gradient-flow's act_growth): for a fixed input h and a
weight matrix with i.i.d. N(0, sigma^2) entries (or Haar-orthogonal), W h has symmetric
coordinates of total second moment g ||h||^2 (g = n sigma^2: 2 for He-normal, 1 for
xavier-seed, xavier-normal and orthogonal), so E||relu(W h)||^2 = g/2 ||h||^2 and
E||W h||^2 = g ||h||^2 exactly, with zero biases. By the tower property over the blocks
E[act_growth^2] = E[||a_L||^2 / ||a_0||^2] = prod over blocks of c_l, exactly, for any input:
1 for He-normal ReLU nets (He et al. 2015). Other activations and torch's default init (which
draws non-zero biases) have no prediction.
"""

from torch import nn

import skipbench
from skipbench import BlockBuilder
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.specs import Prediction

from ._common import base_params

# n Var(W_ij) of each init, where the theory is exact (torch-default draws biases: none)
GAINS = {"he-normal": 2.0, "xavier-seed": 1.0, "xavier-normal": 1.0, "orthogonal": 1.0, "zeros": 0.0}
# E||act(u)||^2 / E||u||^2 for u with symmetric coordinates
ACTIVATION_FACTORS = {"relu": 0.5, "identity": 1.0}


def block_factor(params) -> float | None:
    """E[||block(h)||^2] / ||h||^2 for a fixed h (None: no closed form for these parameters)."""
    if params["init"] not in GAINS or params["activation"] not in ACTIVATION_FACTORS:
        return None
    return GAINS[params["init"]] * ACTIVATION_FACTORS[params["activation"]]


def act_growth_squared(setting) -> float | None:
    """E[act_growth^2] = product of the blocks' factors (1 for He-normal ReLU), see above."""
    first, last = block_factor(setting.params), block_factor(setting.last_params)
    if first is None or last is None:
        return None
    return first ** (setting.n_blocks - 1) * last


PREDICTIONS = (
    Prediction("act_growth", act_growth_squared, moment=2, measurement="gradient-flow",
               formula="prod_l n Var(W_l) c(act_l) with c(relu) = 1/2, c(identity) = 1, zero biases "
                       "(= 1 for He-normal ReLU layers: E||a_L||^2 = ||a_0||^2)",
               source="He et al. 2015, Delving Deep into Rectifiers, eq. 10; tower property over the layers"),
)


def build(in_dim: int, activation: str, bias: bool, init: str) -> nn.Module:
    """Linear(in_dim, in_dim) followed by the activation."""
    return nn.Sequential(linear(in_dim, in_dim, init, bias), make_activation(activation))


@skipbench.hookimpl
def skipbench_register_builders():
    yield BlockBuilder("plain", build, base_params(), layers_per_block=1, skip_kind="none", seed_batched=True,
                       description="y = act(W x + b): no skip connection", predictions=PREDICTIONS)
