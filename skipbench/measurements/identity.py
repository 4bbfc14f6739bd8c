"""Identity: how far the network is from f(x) = x at initialization, and how fast it learns it.

mse_init is the mean over all elements of (net(x) - x)^2 on an evaluation batch of N(0, 1)
inputs. Training draws a fresh N(0, 1) batch each step and minimizes the same MSE; every
`eval_every` steps the evaluation batch gives one point of the loss curve (metric loss_curve,
index = step). steps_to_threshold is the first evaluated step at or below `threshold`. A seed
whose evaluation MSE turns NaN or inf stops there; the non-finite value is its result.

All seeds of a chunk train together (see batched.py): one vectorized forward and backward per
step, and one optimizer over the stacked weights, which updates each seed exactly as its own
optimizer would. Blocks that cannot be vectorized train seed by seed.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..specs import Measurement, Param
from . import STREAM_EVAL, STREAM_TRAIN, Cell, batched, record, undefined


def _seed_records(seed: int, curve: list[tuple[int, float]], opt: dict) -> list[dict]:
    """The records of one seed from its evaluation curve [(step, mse), ...]."""
    out = [record("mse_init", curve[0][1], "mse", seed)]
    if opt["steps"] > 0:
        out.append(record("mse_trained", curve[-1][1], "mse", seed))
    out += [record("loss_curve", value, "mse", seed, step) for step, value in curve]
    reached = next((step for step, value in curve if value <= opt["threshold"]), None)
    out.append(record("steps_to_threshold", reached, "steps", seed) if reached is not None else
               undefined("steps_to_threshold", f"MSE <= {opt['threshold']} not reached in {opt['steps']} steps", "steps", seed))
    return out


# A seed's training inputs are drawn this many elements (or one step) at a time: few generator
# calls, and 256 KiB of float32 per seed in memory.
DRAW_ELEMENTS = 2**16


def _batches(cell: Cell, seeds, steps: int) -> Iterator[torch.Tensor]:
    """Each step's training inputs, (seeds, batch, width): every seed's own stream, drawn several
    steps at a time. The block size depends only on batch and width, so a seed gets the same
    inputs alone or among others; when batch * width is a multiple of 16 they are also exactly
    the step-by-step draws (torch's CPU normal sampler fills blocks of 16)."""
    gens = [cell.generator(seed, STREAM_TRAIN) for seed in seeds]
    per_block = max(1, DRAW_ELEMENTS // (cell.batch * cell.width))
    for start in range(0, steps, per_block):
        n = min(per_block, steps - start)
        yield from cell.place(torch.stack([torch.randn(n, cell.batch, cell.width, generator=g) for g in gens], dim=1))


def _optimizer(params, opt: dict) -> torch.optim.Optimizer:
    # fused: one pass over each tensor instead of one per arithmetic step (about 3x faster for
    # Adam on CPU); elementwise, so stacked seeds still update exactly as they would alone
    return (torch.optim.Adam if opt["optimizer"] == "adam" else torch.optim.SGD)(params, lr=opt["lr"], fused=True)


def _train(cell: Cell, seeds, forward, params, x_eval: torch.Tensor) -> list[list[tuple[int, float]]]:
    """Train the seeds' networks (forward maps (seeds, batch, width) inputs to outputs) and
    return each seed's evaluation curve."""
    opt = cell.options

    def mse() -> list[float]:
        with torch.no_grad():
            return ((forward(x_eval) - x_eval) ** 2).mean(dim=(1, 2)).tolist()

    curves = [[(0, v)] for v in mse()]
    live = [math.isfinite(c[0][1]) for c in curves]
    if opt["steps"] == 0:
        return curves
    optimizer = _optimizer(params, opt)
    for step, x in enumerate(_batches(cell, seeds, opt["steps"]), start=1):
        loss = ((forward(x) - x) ** 2).mean(dim=(1, 2)).sum()  # seeds are independent: each gets its own gradient
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % opt["eval_every"] == 0 or step == opt["steps"]:
            for j, value in enumerate(mse()):
                if live[j]:
                    curves[j].append((step, value))
                    live[j] = math.isfinite(value)
            if not any(live):
                break
    return curves


def run(cell: Cell, vectorize: bool = True) -> list[dict]:
    """Identity records for every seed of the cell."""
    out = []
    for seeds in batched.chunks(cell, max(cell.batch, cell.options["eval_batch"])):
        x_eval = torch.stack([cell.normal(seed, STREAM_EVAL, cell.options["eval_batch"]) for seed in seeds])
        stacked = batched.try_stack(cell, seeds, False, lambda widths, x=x_eval: (x[:, :2],)) if vectorize else None
        if stacked is not None:
            curves = _train(cell, seeds, stacked, list(stacked.params.values()), x_eval)
        else:
            curves = []
            for j, seed in enumerate(seeds):
                net = cell.build(seed)
                curves += _train(cell, [seed], lambda x, net=net: net(x[0])[None], list(net.parameters()), x_eval[j:j + 1])
        out += [r for seed, curve in zip(seeds, curves) for r in _seed_records(seed, curve, cell.options)]
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
