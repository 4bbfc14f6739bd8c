"""Probes: diagnostics that blocks expose (a highway gate's mean, a learnable scale, ...).

A builder names its probes; its blocks implement ``skipbench_probes() -> dict`` describing their
most recent forward pass. All seeds of a chunk run in one vectorized pass (see batched.py) when
the probes are tensors (a number as a 0-dim tensor); otherwise seed by seed. A number is
recorded per block (index = block) and as the mean over blocks (no index). A tensor holds raw
values (say every gate value of the batch): with ``histogram_bins > 0`` it is recorded as a
density histogram, metric NAME_hist, index = bin, with the block and the bin's edges as extra
fields.
"""

from __future__ import annotations

import torch
from torch import nn

from ..network import SkipNet
from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, batched, record


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


class ProbedNet(nn.Module):
    """A SkipNet whose forward also returns every block's probes: run under vmap, probe tensors
    come back with a leading seed dimension (a probe given as a Python number cannot, and its
    variant falls back to the per-seed loop)."""

    def __init__(self, net: SkipNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[dict]:
        """[block 0's probes, block 1's probes, ...] after a forward pass on `x`."""
        self.net(x)
        return [block.skipbench_probes() for block in self.net.blocks]


def _seed_records(cell: Cell, seed: int, probes: list[dict]) -> list[dict]:
    """The records of one seed from each block's probes."""
    out, values = [], {}
    for i, block_probes in enumerate(probes):
        for name, value in block_probes.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                out += histogram(name, value, seed, i, cell.options)
                continue
            values.setdefault(name, []).append(float(value))
            out.append(record(name, float(value), "", seed, i))
    return out + [record(name, sum(v) / len(v), "", seed) for name, v in values.items()]


def run(cell: Cell, vectorize: bool = True) -> list[dict]:
    """Probe records for every seed of the cell."""
    out = []
    rows, kind = cell.options["rows"], cell.options["inputs"]
    for seeds in batched.chunks(cell, rows):
        x = torch.stack([inputs(cell, seed, rows, kind) for seed in seeds])
        stacked = batched.try_stack(cell, seeds, ProbedNet, lambda widths: (x[:, :2],)) if vectorize else None
        if stacked is not None:
            with torch.no_grad():
                probes = stacked(x)
            out += [r for j, seed in enumerate(seeds) for r in _seed_records(
                cell, seed, [{name: value[j] for name, value in block.items()} for block in probes])]
            continue
        for j, seed in enumerate(seeds):
            net = ProbedNet(cell.build(seed))
            with torch.no_grad():
                out += _seed_records(cell, seed, net(x[j]))
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
