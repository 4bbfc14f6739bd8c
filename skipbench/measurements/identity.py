"""Identity: how far the network is from f(x) = x at initialization, and how fast it learns it.

mse_init is the mean over all elements of (net(x) - x)^2 on an evaluation batch of N(0, 1)
inputs. Training draws a fresh N(0, 1) batch each step and minimizes the same MSE; every
`eval_every` steps the evaluation batch gives one point of the loss curve (metric loss_curve,
index = step). steps_to_threshold is the first evaluated step at or below `threshold`. A seed
whose evaluation MSE turns NaN or inf stops there; the non-finite value is its result.

The seeds of a chunk train together as one stack (engine/stack.py): one forward and backward
per step, and one optimizer over the stacked weights, which updates each seed exactly as its own
optimizer would. Chunks are sized by the bytes a seed keeps alive while training, so all seeds of
a cell usually train together; the evaluation batch runs in sub-batches whose size depends on the
cell alone (never on the chunk), so a seed's numbers are the same alone or among others.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..engine import stack as stacks
from ..results import Columns
from ..specs import Measurement, Param
from . import STREAM_EVAL, STREAM_TRAIN, Cell

KEPT_PER_WIDTH = 6  # training activations a seed keeps per unit of block width (see gradient_flow)
PARAM_COPIES = 4  # weights, gradients, and Adam's two moments
EVAL_BYTES = 8 * 2**20  # a seed's evaluation sub-batch: about this many bytes of activations


def _columns(seeds: tuple[int, ...], curves: list[list[tuple[int, float]]], opt: dict) -> list[Columns]:
    """The columns of the seeds' evaluation curves [(step, mse), ...]."""
    s = np.asarray(seeds, dtype=np.int64)
    out = [Columns("mse_init", np.array([c[0][1] for c in curves]), "mse", s)]
    if opt["steps"] > 0:
        out.append(Columns("mse_trained", np.array([c[-1][1] for c in curves]), "mse", s))
    out.append(Columns("loss_curve", np.array([v for c in curves for _, v in c]), "mse",
                       np.repeat(s, [len(c) for c in curves]), np.array([t for c in curves for t, _ in c])))
    reached = [next((step for step, value in c if value <= opt["threshold"]), None) for c in curves]
    steps = Columns("steps_to_threshold", np.array([np.nan if r is None else r for r in reached], dtype=np.float64),
                    "steps", s)
    out.append(steps.undefined_where([r is None for r in reached],
                                     f"MSE <= {opt['threshold']} not reached in {opt['steps']} steps"))
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


def eval_rows(cell: Cell, widths: list[int]) -> int:
    """Rows of one evaluation sub-batch: from the cell alone (see the module's docstring), a
    multiple of 32 where it splits the batch (so that a sub-batch's slab of every seed is
    computed in whole vector steps, as the whole batch's is)."""
    itemsize = torch.empty((), dtype=cell.dtype).element_size()
    rows = EVAL_BYTES // (3 * max(widths) * itemsize)
    return cell.options["eval_batch"] if rows >= cell.options["eval_batch"] else max(32, rows // 32 * 32)


def _train(cell: Cell, seeds, forward, params, x_eval: torch.Tensor, rows: int) -> list[list[tuple[int, float]]]:
    """Train the seeds' networks (forward maps (seeds, batch, width) inputs to outputs) and
    return each seed's evaluation curve."""
    opt = cell.options

    def mse() -> list[float]:
        with torch.no_grad():
            return ((stacks.run_in_rows(forward, x_eval, rows) - x_eval) ** 2).mean(dim=(1, 2)).tolist()

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


def run(cell: Cell, path: str | None = None) -> list[Columns]:
    """Identity columns for every seed of the cell (`path`: force one of
    engine.stack.PATHS)."""
    nets = stacks.SeedNets(cell, path)
    rows = eval_rows(cell, nets.widths)
    itemsize = torch.empty((), dtype=cell.dtype).element_size()
    per_seed = (stacks.seed_bytes(cell, nets.widths, cell.batch, KEPT_PER_WIDTH, PARAM_COPIES, nets.template)
                + 3 * rows * max(nets.widths) * itemsize)
    out = []
    for seeds in stacks.chunks(cell.seeds, per_seed):
        x_eval = cell.normals(seeds, STREAM_EVAL, cell.options["eval_batch"])
        stack = nets.stack(seeds, x_eval[:, :2])
        curves = _train(cell, seeds, stack, list(stack.params.values()), x_eval, rows)
        out += stack.tag(_columns(seeds, curves, cell.options))
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
