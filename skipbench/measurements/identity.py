"""Identity: how far the network is from f(x) = x at initialization, and how fast it learns it.

mse_init is the mean over all elements of (net(x) - x)^2 on an evaluation batch of N(0, 1)
inputs. Training draws a fresh N(0, 1) batch each step and minimizes the same MSE; every
`eval_every` steps the evaluation batch gives one point of the loss curve (metric loss_curve,
index = step). steps_to_threshold is the first evaluated step at or below `threshold`.
"""

from __future__ import annotations

import math

import torch

from ..specs import Measurement, Param
from . import STREAM_EVAL, STREAM_TRAIN, Cell, record, undefined


def _mse(net, x: torch.Tensor) -> float:
    with torch.no_grad():
        return torch.mean((net(x) - x) ** 2).item()


def run(cell: Cell) -> list[dict]:
    """Identity records for every seed of the cell."""
    opt = cell.options
    out = []
    for seed in cell.seeds:
        net = cell.build(seed)
        x_eval = cell.normal(seed, STREAM_EVAL, opt["eval_batch"])
        curve = [(0, _mse(net, x_eval))]
        out.append(record("mse_init", curve[0][1], "mse", seed))
        if opt["steps"] > 0:
            optimizer = (torch.optim.Adam if opt["optimizer"] == "adam" else torch.optim.SGD)(net.parameters(), lr=opt["lr"])
            gen = cell.generator(seed, STREAM_TRAIN)
            for step in range(1, opt["steps"] + 1):
                x = torch.randn(cell.batch, cell.width, generator=gen).to(cell.device)
                loss = torch.mean((net(x) - x) ** 2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step % opt["eval_every"] == 0 or step == opt["steps"]:
                    curve.append((step, _mse(net, x_eval)))
                    if not math.isfinite(curve[-1][1]):
                        break  # diverged: the non-finite value is the result
            out.append(record("mse_trained", curve[-1][1], "mse", seed))
        out += [record("loss_curve", value, "mse", seed, step) for step, value in curve]
        reached = next((step for step, value in curve if value <= opt["threshold"]), None)
        out.append(record("steps_to_threshold", reached, "steps", seed) if reached is not None else
                   undefined("steps_to_threshold", f"MSE <= {opt['threshold']} not reached in {opt['steps']} steps", "steps", seed))
    return out


MEASUREMENT = Measurement(
    name="identity",
    run=run,
    metrics=("mse_init", "mse_trained", "steps_to_threshold", "loss_curve"),
    options=(
        Param("steps", "int", 200, help="training steps (0: initialization only)", minimum=0),
        Param("lr", "float", 1e-2, help="learning rate", minimum=0),
        Param("optimizer", "str", "adam", ("adam", "sgd")),
        Param("threshold", "float", 0.01, help="MSE that counts as having learned the identity"),
        Param("eval_every", "int", 10, help="steps between points of the loss curve", minimum=1),
        Param("eval_batch", "int", 500, help="samples in the fixed evaluation batch", minimum=1),
    ),
    description="MSE against f(x) = x at initialization and after training; steps to a threshold",
)
