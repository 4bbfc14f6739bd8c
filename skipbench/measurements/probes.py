"""Probes: diagnostics that blocks expose (a highway gate's mean, a learnable scale, ...).

A builder names its probes; its blocks implement ``skipbench_probes() -> dict`` describing their
most recent forward pass. A number is recorded per block (index = block) and as the mean over
blocks (no index). A tensor holds raw values (say every gate value of the batch): with
``histogram_bins > 0`` it is recorded as a density histogram, metric NAME_hist, index = bin,
with the block and the bin's edges as extra fields.
"""

from __future__ import annotations

import torch

from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, record


def inputs(cell: Cell, seed: int, rows: int, kind: str) -> torch.Tensor:
    """Probe inputs: N(0, 1) or uniform(-2, 2), from the seed's data stream."""
    gen = cell.generator(seed, STREAM_DATA)
    if kind == "uniform":
        return cell.place(torch.rand(rows, cell.width, generator=gen) * 4 - 2)
    return cell.place(torch.randn(rows, cell.width, generator=gen))


def histogram(name: str, values: torch.Tensor, seed: int, block: int, options: dict) -> list[dict]:
    """Density histogram records of raw probe values (none when histogram_bins is 0)."""
    bins, lo, hi = options["histogram_bins"], options["histogram_min"], options["histogram_max"]
    if bins == 0:
        return []
    counts = torch.histc(values.detach().double().flatten().cpu(), bins, lo, hi)
    width = (hi - lo) / bins
    density = counts / (values.numel() * width)
    return [record(f"{name}_hist", density[b].item(), "density", seed, b, block=block,
                   bin_lo=lo + b * width, bin_hi=lo + (b + 1) * width) for b in range(bins)]


def run(cell: Cell) -> list[dict]:
    """Probe records for every seed of the cell."""
    out = []
    for seed in cell.seeds:
        net = cell.build(seed)
        with torch.no_grad():
            net(inputs(cell, seed, cell.options["rows"], cell.options["inputs"]))
        values: dict[str, list[float]] = {}
        for i, block in enumerate(net.blocks):
            for name, value in block.skipbench_probes().items():
                if isinstance(value, torch.Tensor) and value.numel() > 1:
                    out += histogram(name, value, seed, i, cell.options)
                    continue
                values.setdefault(name, []).append(float(value))
                out.append(record(name, float(value), "", seed, i))
        out += [record(name, sum(v) / len(v), "", seed) for name, v in values.items()]
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
