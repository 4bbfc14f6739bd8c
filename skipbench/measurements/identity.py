"""Identity: how far the network is from f(x) = x at initialization, and how fast it learns it.

mse_init is the mean over all elements of (net(x) - x)^2 on an evaluation batch of N(0, 1)
inputs. Training draws a fresh N(0, 1) batch each step and minimizes the same MSE; every
`eval_every` steps the evaluation batch gives one point of the loss curve (metric loss_curve,
index = step). steps_to_threshold is the first evaluated step at or below `threshold` (0 where
the network meets it at initialization, also with steps = 0); where no evaluated step does it is
undefined, with the reason: not reached in `steps` steps, no training (steps = 0), or the MSE
became NaN or inf first (by the step of the evaluation that saw it). A seed whose evaluation MSE
turns NaN or inf stops there; the non-finite value is its result.

Modes (column ``mode``): the network is at initialization and trains in training mode
(module.train()); the trained network is evaluated in eval mode (module.eval()). So mse_init and
the curve's point at step 0 are in training mode: at initialization nothing has been learnt,
BatchNorm's running statistics are still their initial values (mean 0, variance 1) and say
nothing about the network, and this is the network the first training step starts from. Every
later curve point and mse_trained are in eval mode. steps_to_threshold has the mode of the
point that reached the threshold (eval mode where none did). A run may force one mode on all of
them (a profile's ``mode``, ``--mode``). An evaluation never changes the network: buffers and
forward-stream draws are restored after it, so training is the same whatever `eval_every`. In
training mode the evaluation batch's sub-batches (see eval_rows) are what BatchNorm normalizes.

Learnable scalars (a block's trainable parameters of one value per seed, say ReZero's alpha):
scalar_init and scalar_trained are their values at initialization and after training, per block
(index) and parameter name within it (extra column ``param``), in the training mode.

The seeds of a chunk train together as one stack (engine/stack.py): one forward and backward
per step, and one optimizer over the stacked weights, which updates each seed exactly as its own
optimizer would. Chunks are sized by the bytes a seed keeps alive while training or while
evaluating (never both at once: an evaluation runs between steps), so all seeds of a cell
usually train together; the evaluation batch runs in sub-batches whose size depends on the
cell alone (never on the chunk), so a seed's numbers are the same alone or among others.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..engine import optim
from ..engine import stack as stacks
from ..results import Columns
from ..specs import Measurement, Param
from . import STREAM_EVAL, STREAM_TRAIN, Cell, in_mode

KEPT_PER_WIDTH = 6  # training activations a seed keeps per unit of block width (see gradient_flow)
PARAM_COPIES = 4  # weights, gradients, and Adam's two moments
EVAL_BYTES = 8 * 2**20  # a seed's evaluation sub-batch: about this many bytes of activations


def _columns(seeds: tuple[int, ...], curves: list[list[tuple[int, float]]], opt: dict,
             modes: dict[str, str]) -> list[Columns]:
    """The columns of the seeds' evaluation curves [(step, mse), ...]; `modes`: the mode of
    the evaluation at initialization ("init") and of the trained network ("eval")."""
    s = np.asarray(seeds, dtype=np.int64)

    def mode_at(step: int | None) -> str:
        return modes["init"] if step == 0 else modes["eval"]

    out = in_mode([Columns("mse_init", np.array([c[0][1] for c in curves]), "mse", s)], modes["init"])
    if opt["steps"] > 0:
        out += in_mode([Columns("mse_trained", np.array([c[-1][1] for c in curves]), "mse", s)], modes["eval"])
    out.append(Columns("loss_curve", np.array([v for c in curves for _, v in c]), "mse",
                       np.repeat(s, [len(c) for c in curves]), np.array([t for c in curves for t, _ in c]),
                       extra={"mode": [mode_at(t) for c in curves for t, _ in c]}))
    reached = [next((step for step, value in c if value <= opt["threshold"]), None) for c in curves]
    steps = Columns("steps_to_threshold", np.array([np.nan if r is None else r for r in reached], dtype=np.float64),
                    "steps", s, extra={"mode": [mode_at(r) for r in reached]})
    why = [_unreached(c, opt) if r is None else None for c, r in zip(curves, reached)]
    out.append(steps.undefined_where([w is not None for w in why], why))  # a reason per seed
    return out


def _unreached(curve: list[tuple[int, float]], opt: dict) -> str:
    """Why a seed's curve has no steps_to_threshold (its undefined reason)."""
    step, value = curve[-1]
    target = f"MSE <= {opt['threshold']}"
    if not math.isfinite(value):
        when = "at initialization" if step == 0 else f"by step {step}"
        return f"MSE became {value} {when}, before reaching {target}"
    if opt["steps"] == 0:
        return f"no training (steps = 0) and {target} not met at initialization"
    return f"{target} not reached in {opt['steps']} steps"


def learnable_scalars(stack: stacks.SeedStack) -> list[tuple[int, str, torch.Tensor]]:
    """(block, name, stacked parameter) of each block's trainable parameters of one value per
    seed."""
    return [(i, n, p) for i in range(stack.n_blocks) for n, p in stack.block_params(i).items()
            if p.requires_grad and p[0].numel() == 1]


def scalar_columns(metric: str, seeds: tuple[int, ...], named: list[tuple[int, str]], values: list[np.ndarray],
                   mode: str) -> list[Columns]:
    """`metric` for each (block, parameter) of `named`, its per-seed `values`: rows seed-major,
    index = block, extra column ``param``."""
    if not named:
        return []
    s = np.asarray(seeds, dtype=np.int64)
    table = np.stack(values)  # parameters x seeds
    return in_mode([Columns(metric, table.T.reshape(-1), "", np.repeat(s, len(named)),
                            np.tile(np.asarray([b for b, _ in named], dtype=np.int64), len(seeds)),
                            extra={"param": [n for _ in seeds for _, n in named]})], mode)


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


def _optimizer(params, opt: dict) -> optim.Adam | optim.SGD:
    # torch.optim's fused kernels (engine/optim.py): one pass over each tensor instead of one per
    # arithmetic step (about 3x faster for Adam on CPU); elementwise, so stacked seeds still
    # update exactly as they would alone
    return (optim.Adam if opt["optimizer"] == "adam" else optim.SGD)(params, lr=opt["lr"])


def eval_rows(cell: Cell, widths: list[int]) -> int:
    """Rows of one evaluation sub-batch: from the cell alone (see the module's docstring), a
    multiple of 32 where it splits the batch (so that a sub-batch's slab of every seed is
    computed in whole vector steps, as the whole batch's is)."""
    rows = EVAL_BYTES // (3 * max(widths) * cell.dtype.itemsize)
    return cell.options["eval_batch"] if rows >= cell.options["eval_batch"] else max(32, rows // 32 * 32)


def _train(cell: Cell, seeds, stack: stacks.SeedStack, x_eval: torch.Tensor, rows: int,
           modes: dict[str, str]) -> list[list[tuple[int, float]]]:
    """Train the seeds' networks (the stack) and return each seed's evaluation curve."""
    opt = cell.options

    def mse(mode: str) -> list[float]:
        with torch.no_grad(), stack.preserved(), stack.mode(mode):
            return ((stacks.run_in_rows(stack, x_eval, rows) - x_eval) ** 2).mean(dim=(1, 2)).tolist()

    curves = [[(0, v)] for v in mse(modes["init"])]
    live = [math.isfinite(c[0][1]) for c in curves]
    if opt["steps"] == 0:
        return curves
    optimizer = _optimizer(list(stack.params.values()), opt)
    with stack.mode(modes["train"]):  # set once: switching a deep network's modules every step costs
        for step, x in enumerate(_batches(cell, seeds, opt["steps"]), start=1):
            loss = ((stack(x) - x) ** 2).mean(dim=(1, 2)).sum()  # seeds are independent: each gets its own gradient
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % opt["eval_every"] == 0 or step == opt["steps"]:
                for j, value in enumerate(mse(modes["eval"])):
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
    training = stacks.activation_bytes(nets, cell.batch, KEPT_PER_WIDTH)
    evaluation = 3 * rows * max(nets.widths) * cell.dtype.itemsize
    # an evaluation runs between training steps, when no step's activations are alive
    per_seed = stacks.param_bytes(nets, PARAM_COPIES) + max(training, evaluation)
    modes = {"init": cell.mode_for("train"), "train": cell.mode_for("train"), "eval": cell.mode_for("eval")}
    out = []
    for seeds in stacks.chunks(cell.seeds, per_seed):
        x_eval = cell.normals(seeds, STREAM_EVAL, cell.options["eval_batch"])
        stack = nets.stack(seeds, x_eval[:, :2], modes=tuple(dict.fromkeys(modes.values())))
        scalars = learnable_scalars(stack)
        named = [(i, n) for i, n, _ in scalars]
        init = [p.detach().reshape(len(seeds)).double().cpu().numpy().copy() for _, _, p in scalars]
        curves = _train(cell, seeds, stack, x_eval, rows, modes)
        columns = _columns(seeds, curves, cell.options, modes) + scalar_columns("scalar_init", seeds, named, init,
                                                                                modes["train"])
        if cell.options["steps"] > 0:
            trained = [p.detach().reshape(len(seeds)).double().cpu().numpy().copy() for _, _, p in scalars]
            columns += scalar_columns("scalar_trained", seeds, named, trained, modes["train"])
        out += stack.tag(columns)
    return out


MEASUREMENT = Measurement(
    name="identity",
    run=run,
    metrics=("mse_init", "mse_trained", "steps_to_threshold", "loss_curve", "scalar_init", "scalar_trained"),
    options=(
        Param("steps", "int", 200, help="training steps (0: initialization only)", minimum=0),
        Param("lr", "float", 1e-2, help="learning rate", minimum=0),
        Param("optimizer", "str", "adam", ("adam", "sgd")),
        Param("threshold", "float", 0.01, help="MSE that counts as having learned the identity"),
        Param("eval_every", "int", 10, help="steps between points of the loss curve", minimum=1),
        Param("eval_batch", "int", 500, help="samples in the fixed evaluation batch", minimum=1),
    ),
    description="MSE against f(x) = x at initialization and after training; steps to a threshold",
    better={"mse_init": "lower", "mse_trained": "lower", "steps_to_threshold": "lower", "loss_curve": "lower"},
)
