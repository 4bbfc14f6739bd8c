"""Parameters and cost: counts read from the module's parameters, FLOPs from torch's counter.

Counts are never typed-in formulas: they come from the built module. `weights` counts only
parameters with two or more dimensions (the study's convention); `params` counts biases too.
block_width is each block's output width (index = block), as found by running the blocks.
FLOPs per sample come from torch.utils.flop_counter on a forward pass of two samples, halved
(training-mode BatchNorm cannot run on one), where a multiply-add counts as 2 FLOPs. The network
is in eval mode (inference cost) unless the run forces a mode; every record's ``mode`` says which.
"""

from __future__ import annotations

import torch

from ..specs import Measurement
from . import Cell, in_mode, record
from ..engine.roofline import count_flops


def run(cell: Cell) -> list[dict]:
    """Parameter, width and FLOP records for the cell (seed-independent)."""
    mode = cell.mode_for("eval")
    net = cell.build(cell.seeds[0]).train(mode == "train")
    params = list(net.parameters())
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # a block drawing in forward leaves no trace
        flops = count_flops(lambda: net(cell.place(torch.zeros(2, cell.width)))) // 2
    records = [
        record("params", sum(p.numel() for p in params), "count"),
        record("trainable_params", sum(p.numel() for p in params if p.requires_grad), "count"),
        record("weights", sum(p.numel() for p in params if p.dim() >= 2), "count"),
        record("out_width", net.out_width, "features"),
        *(record("block_width", w, "features", index=i) for i, w in enumerate(net.widths[1:])),
        record("flops", flops, "FLOP/sample"),
    ]
    return in_mode(records, mode)


MEASUREMENT = Measurement(
    name="params",
    run=run,
    metrics=("params", "trainable_params", "weights", "out_width", "flops", "block_width"),
    seeded=False,
    description="total, trainable and weight-only parameter counts, trunk output width, FLOPs per sample (multiply-add = 2)",
)
