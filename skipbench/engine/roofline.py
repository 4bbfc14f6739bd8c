"""The roofline column: a pass's achieved FLOP/s against the machine's dense matmul rate.

Samples/s do not travel between machines; the fraction of what the same machine reaches on a
large dense matrix product, measured in the same process with the same threads and dtype, does.
FLOPs come from torch.utils.flop_counter's formulas (a multiply-add counts as 2 FLOPs).
"""

from __future__ import annotations

import timeit
from typing import Callable

import torch
from torch.utils.benchmark import Timer
from torch.utils.benchmark.utils.timer import timer as benchmark_timer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

MATMUL_SIZE = {"cpu": 1024, "cuda": 4096}  # square matrices: large enough to run at full rate
_rates: dict[tuple, float] = {}


def clock(device: str | torch.device) -> Callable[[], float]:
    """The timer for blocked_autorange on `device`: on CUDA torch.utils.benchmark's own, which
    synchronizes the accelerator first, so that a block's time includes the kernels it queued;
    elsewhere the plain clock, without that call."""
    return benchmark_timer if torch.device(device).type == "cuda" else timeit.default_timer


def matmul_rate(device: str | torch.device, dtype: torch.dtype, threads: int, min_run_time: float = 0.2) -> float:
    """FLOP/s of one square dense matrix product in `dtype` on `device` with `threads` threads
    (measured once per process and setting)."""
    device = torch.device(device)
    key = (str(device), dtype, threads)
    if key not in _rates:
        n = MATMUL_SIZE[device.type]
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
        timing = Timer("torch.mm(a, b)", globals={"a": a, "b": b}, num_threads=threads,
                       timer=clock(device)).blocked_autorange(min_run_time=min_run_time)
        _rates[key] = 2 * n**3 / timing.median
    return _rates[key]


class _FlopCount(TorchDispatchMode):
    """The total that torch.utils.flop_counter.FlopCounterMode counts (its registry of formulas;
    an operation without one counted through its decomposition, as there), without the per-module
    breakdown. FlopCounterMode's dispatch is wrapped in torch._dynamo.disable, whose first call
    imports the compiler: about 1.2 s in each worker process that counts FLOPs, for nothing, as
    nothing here is compiled. tests/test_measurements.py checks the two totals agree."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running `fn()` once, forward and backward alike (torch.utils.flop_counter's
    formulas, see _FlopCount)."""
    counter = _FlopCount()
    with counter:
        fn()
    return counter.flops
