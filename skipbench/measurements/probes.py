"""Probes: diagnostics that blocks expose (a highway gate's mean, a learnable scale, ...).

A builder names its probes; its blocks implement ``skipbench_probes() -> dict[str, float]``
describing their most recent forward pass. Each probe is recorded per block (index = block)
and as the mean over blocks (no index).
"""

from __future__ import annotations

import torch

from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, record


def inputs(cell: Cell, seed: int, rows: int, kind: str) -> torch.Tensor:
    """Probe inputs: N(0, 1) or uniform(-2, 2), from the seed's data stream."""
    gen = cell.generator(seed, STREAM_DATA)
    if kind == "uniform":
        return (torch.rand(rows, cell.width, generator=gen) * 4 - 2).to(cell.device)
    return torch.randn(rows, cell.width, generator=gen).to(cell.device)


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
    ),
    applies=lambda builder: bool(builder.probes),
    description="diagnostics exposed by the blocks (for example the highway gate mean)",
)
