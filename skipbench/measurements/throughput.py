"""Throughput and peak memory of forward and forward+backward passes.

Timing is torch.utils.benchmark's: `blocked_autorange` warms up, picks the number of runs per
block adaptively, and on CUDA each block is timed with a synchronizing clock. The thread count is
set explicitly and recorded. samples/s is batch / median time; `iqr` is the spread in the same
unit. Each pass also gets its achieved FLOP/s and, as the roofline column, that rate's fraction
of the machine's dense matmul rate measured in the same run (see roofline.py).

Peak memory of one forward+backward pass is read from the allocators (see memory.py).

The forward pass is timed in eval mode (inference), forward+backward and its peak memory in
training mode, unless the run forces a mode; column ``mode`` says which (null for the matmul
rate, which runs no network).
"""

from __future__ import annotations

import statistics

import torch
from torch.utils.benchmark import Timer

from ..specs import Measurement, Param
from . import STREAM_DATA, Cell, in_mode, record
from ..engine.memory import peak_memory
from ..engine.roofline import MATMUL_SIZE, clock, count_flops, matmul_rate


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
    peak = matmul_rate(cell.device, cell.dtype, threads, min_time)
    out = [record("matmul_gflop_per_s", peak / 1e9, "GFLOP/s", size=MATMUL_SIZE[torch.device(cell.device).type])]
    for name, fn, default in (("fwd", forward, "eval"), ("fwdbwd", forward_backward, "train")):
        mode = cell.mode_for(default)
        net.train(mode == "train")
        timing = Timer("fn()", globals={"fn": fn}, num_threads=threads,
                       timer=clock(cell.device)).blocked_autorange(min_run_time=min_time)
        rate = _rate_record(f"{name}_samples_per_s", timing, cell.batch)
        achieved = count_flops(fn) / cell.batch * rate["value"]
        out += in_mode([rate, record(f"{name}_gflop_per_s", achieved / 1e9, "GFLOP/s"),
                        record(f"{name}_of_matmul", achieved / peak, "fraction")], mode)
    out.append(record("peak_mem_bytes", peak_memory(net, x), "B", mode=mode))  # forward+backward's mode
    for r in out:
        r["threads"] = threads
    return out


MEASUREMENT = Measurement(
    name="throughput",
    run=run,
    metrics=("fwd_samples_per_s", "fwdbwd_samples_per_s", "fwd_gflop_per_s", "fwd_of_matmul", "fwdbwd_gflop_per_s",
             "fwdbwd_of_matmul", "matmul_gflop_per_s", "peak_mem_bytes"),
    options=(Param("min_run_time", "float", 0.2, help="seconds of timing per pass (torch.utils.benchmark)", minimum=0),),
    seeded=False,
    exclusive=True,
    description="forward and forward+backward samples/s (median, IQR), achieved FLOP/s and its fraction of the "
                "machine's dense matmul rate, peak memory of forward+backward",
    better={"fwd_samples_per_s": "higher", "fwdbwd_samples_per_s": "higher", "fwd_gflop_per_s": "higher",
            "fwdbwd_gflop_per_s": "higher", "fwd_of_matmul": "higher", "fwdbwd_of_matmul": "higher",
            "matmul_gflop_per_s": "higher", "peak_mem_bytes": "lower"},
)
