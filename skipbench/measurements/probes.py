"""Probes: diagnostics that blocks expose (a highway gate's mean, a learnable scale, ...).

A builder names its probes; its blocks implement ``skipbench_probes() -> dict`` describing their
most recent forward pass, as tensors (a number as a 0-dim tensor; a seed-batched block gives one
per seed, see skipbench.layers.per_seed_mean). All seeds of a chunk run as one stack
(engine/stack.py), which returns every probe with a leading seed dimension. A number is
recorded per block (index = block) and as the mean over blocks (no index). A tensor holds raw
values (say every gate value of the batch): with ``histogram_bins > 0`` it is recorded as a
density histogram, metric NAME_hist, index = bin, with the block and the bin's edges as extra
fields.

The network runs in training mode, as at the start of training (a run may force a mode; column
``mode`` says which).
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import stack as stacks
from ..results import Columns
from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, in_mode

KEPT_PER_WIDTH = 3  # a block's output, its input and the raw probe values it keeps


def inputs(cell: Cell, seed: int, rows: int, kind: str) -> torch.Tensor:
    """Probe inputs: N(0, 1) or uniform(-2, 2), from the seed's data stream."""
    gen = cell.generator(seed, STREAM_DATA)
    if kind == "uniform":
        return cell.place(torch.rand(rows, cell.width, generator=gen) * 4 - 2)
    return cell.place(torch.randn(rows, cell.width, generator=gen))


def histograms(name: str, values: torch.Tensor, seeds: np.ndarray, block: int, options: dict) -> list[Columns]:
    """Density histograms of raw probe values (seeds, ...), one row per (seed, bin); none when
    histogram_bins is 0."""
    bins, lo, hi = options["histogram_bins"], options["histogram_min"], options["histogram_max"]
    if bins == 0:
        return []
    width = (hi - lo) / bins
    flat = values.detach().double().cpu().flatten(1)
    density = torch.stack([torch.histc(v, bins, lo, hi) for v in flat]) / (flat.shape[1] * width)
    edges = lo + np.arange(bins) * width
    return [Columns(f"{name}_hist", density.numpy().reshape(-1), "density", np.repeat(seeds, bins),
                    np.tile(np.arange(bins), len(seeds)),
                    extra={"block": np.full(len(seeds) * bins, block), "bin_lo": np.tile(edges, len(seeds)),
                           "bin_hi": np.tile(edges + width, len(seeds))})]


def _columns(cell: Cell, seeds: tuple[int, ...], probes: list[dict]) -> list[Columns]:
    """The columns of each block's probes (values with a leading seed dimension)."""
    s = np.asarray(seeds, dtype=np.int64)
    out, scalars = [], {}
    for i, block_probes in enumerate(probes):
        for name, value in block_probes.items():
            value = torch.as_tensor(value)
            if value[0].numel() > 1:
                out += histograms(name, value, s, i, cell.options)
                continue
            scalars.setdefault(name, []).append(value.reshape(len(seeds)).double().cpu().numpy())
    for name, per_block in scalars.items():
        values = np.stack(per_block)  # blocks x seeds
        out.append(Columns(name, values.T.reshape(-1), "", np.repeat(s, len(per_block)),
                           np.tile(np.arange(len(per_block)), len(seeds))))
        out.append(Columns(name, values.mean(axis=0), "", s))
    return out


def run(cell: Cell, path: str | None = None) -> list[Columns]:
    """Probe columns for every seed of the cell (`path`: force one of
    engine.stack.PATHS)."""
    rows, kind = cell.options["rows"], cell.options["inputs"]
    mode = cell.mode_for("train")
    nets = stacks.SeedNets(cell, path)
    out = []
    for seeds in stacks.chunks(cell.seeds, stacks.seed_bytes(nets, rows, KEPT_PER_WIDTH, 1)):
        x = torch.stack([inputs(cell, seed, rows, kind) for seed in seeds])
        stack = nets.stack(seeds, x[:, :2], probes=True, modes=(mode,))
        with torch.no_grad(), stack.mode(mode):
            probes = stack.trace(x, probes=True)[3]
        out += in_mode(stack.tag(_columns(cell, seeds, probes)), mode)
    return out


MEASUREMENT = Measurement(
    name="probes",
    run=run,
    metrics=("gate_mean",),
    options=(
        Param("rows", "int", 500, help="samples in the probe batch", minimum=1),
        Param("inputs", "str", "normal", ("normal", "uniform"), "N(0, 1) or uniform(-2, 2) inputs"),
        Param("histogram_bins", "int", 0, help="bins of the histograms of raw probe values (0: none)", minimum=0),
        Param("histogram_min", "float", 0.0, help="lower edge of the histograms"),
        Param("histogram_max", "float", 1.0, help="upper edge of the histograms"),
    ),
    applies=lambda builder: bool(builder.probes),
    description="diagnostics exposed by the blocks (for example the highway gate mean)",
)
