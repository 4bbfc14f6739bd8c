"""Throughput and peak memory of forward and forward+backward passes.

Timing is torch.utils.benchmark's: `blocked_autorange` warms up, picks the number of runs per
block adaptively and synchronizes CUDA around each block. The thread count is set explicitly.
samples/s is batch / median time; `iqr` is the spread in the same unit.

Peak memory of one forward+backward pass is read from the allocators (see memory.py).
"""

from __future__ import annotations

import statistics

import torch
from torch.utils.benchmark import Timer

from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, record
from .memory import peak_memory


def _rate_record(metric: str, timing, batch: int) -> dict:
    times = timing.times
    # inclusive: quartiles stay within the observed times ("exclusive", the default, extrapolates
    # beyond them for few blocks and can give a negative or infinite spread)
    q25, _, q75 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return record(metric, batch / timing.median, "samples/s", iqr=batch / q25 - batch / q75,
                  repeats=len(times) * timing.number_per_run)


def run(cell: Cell) -> list[dict]:
    """Forward and forward+backward samples/s with IQR, and peak memory, for the cell."""
    net = cell.build(cell.seeds[0])
    x = cell.normal(cell.seeds[0], STREAM_DATA, cell.batch)
    threads = torch.get_num_threads()

    def forward():
        with torch.no_grad():
            net(x)

    def forward_backward():
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()

    min_time = cell.options["min_run_time"]
    out = []
    for metric, fn in (("fwd_samples_per_s", forward), ("fwdbwd_samples_per_s", forward_backward)):
        timing = Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_time)
        out.append(_rate_record(metric, timing, cell.batch))
    out.append(record("peak_mem_bytes", peak_memory(net, x), "B"))
    for r in out:
        r["threads"] = threads
    return out


MEASUREMENT = Measurement(
    name="throughput",
    run=run,
    metrics=("fwd_samples_per_s", "fwdbwd_samples_per_s", "peak_mem_bytes"),
    options=(Param("min_run_time", "float", 0.2, help="seconds of timing per pass (torch.utils.benchmark)", minimum=0),),
    seeded=False,
    exclusive=True,
    description="forward and forward+backward samples/s (median, IQR), peak memory of forward+backward",
)
