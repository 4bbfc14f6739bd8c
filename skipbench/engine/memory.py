"""Peak memory of one forward+backward pass, read from torch's allocators.

CPU: the true peak of live tensor bytes. torch's profiler with ``profile_memory=True`` records
every allocation and free of torch's CPU allocator (its size and time); their running sum over
the pass, plus the bytes already live when it starts (the network's parameters and buffers and
the input), peaks at the answer. It sees what an accounting of saved tensors cannot: transients
inside ops and during backward, recomputation (torch.utils.checkpoint, custom autograd
Functions) and the gradients. Sizes are the bytes requested from the allocator (its 64-byte
alignment is not counted); memory that libraries take outside torch's allocator (BLAS, oneDNN
scratch space) and Python objects are not counted.

CUDA: ``torch.cuda.max_memory_allocated`` between ``reset_peak_memory_stats`` and the end of the
pass (synchronized): every tensor live on the device at the peak, the parameters and input
included and also any other tensor the process holds there, each block rounded up by the caching
allocator (to multiples of 512 bytes); memory it reserved but left unused is not counted.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
from typing import Iterable, Iterator

import torch
from torch._C._profiler import _ExtraFields_Allocation
from torch.autograd.profiler import profile

METHODS = {
    "cpu": "torch.profiler CPU allocator events (profile_memory): peak of live tensor bytes, "
           "parameters, buffers and input included",
    "cuda": "torch.cuda.max_memory_allocated",
}
_CPU_DEVICES = ("cpu", "mkldnn", "ideep")  # the device types torch's profiler counts as CPU memory
_PROFILER_NOISE = ("SyncActivityProfilerHandler.cpp", "Memory block of unknown size was allocated before the profiling")


def method(device: str) -> str:
    """How peak memory is read on `device` ("cpu" or "cuda"), for run metadata."""
    return METHODS["cuda" if str(device).startswith("cuda") else "cpu"]


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared storages count once)."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_memory(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of one forward+backward pass, ``net(x).sum().backward()`` (see the module's
    docstring for what each device counts). Gradients are reset to None first."""
    net.zero_grad(set_to_none=True)
    if x.is_cuda:
        return _cuda_peak(net, x)
    return _cpu_peak(net, x)


def _forward_backward(net: torch.nn.Module, x: torch.Tensor) -> None:
    net(x).sum().backward()


def _cuda_peak(net: torch.nn.Module, x: torch.Tensor) -> int:
    device = x.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    _forward_backward(net, x)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def _cpu_peak(net: torch.nn.Module, x: torch.Tensor) -> int:
    live = storage_bytes([*net.parameters(), *net.buffers(), x])
    events = allocation_events(lambda: _forward_backward(net, x))
    return live + running_peak(events)


def allocation_events(fn) -> list[tuple[int, int]]:
    """Run `fn()` under torch's profiler (profile_memory) and return, in time order, its CPU
    allocator events as (time in ns, bytes): positive for an allocation, negative for a free.
    Only blocks allocated during the run count: freeing an older tensor (state a module kept
    from an earlier call) is left out, as that tensor was never counted."""
    # garbage from before the run, collected during it, would also show up as frees: the cyclic
    # collector pauses for the window
    was_enabled = gc.isenabled()
    gc.disable()
    # the profiler torch.profiler.profile wraps: the wrapper's start imports torch._inductor
    # (about 1.5 s, with torch._dynamo), only to read a CUDA-graphs setting
    prof = profile(use_cpu=True, profile_memory=True)
    try:
        with _filtered_native_stderr(), prof:
            fn()
    finally:
        if was_enabled:
            gc.enable()
    # the profiler's event tree (what torch.profiler's own memory timeline reads) gives each
    # event's block address, so that frees can be matched to allocations
    found, stack = [], list(prof.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        alloc = event.extra_fields
        if isinstance(alloc, _ExtraFields_Allocation) and alloc.device.type in _CPU_DEVICES:
            found.append((event.start_time_ns, alloc.alloc_size < 0, alloc.ptr, alloc.alloc_size))
    out, live = [], set()
    # in time order; in the rare tie (the same nanosecond) allocations first, never under-reading
    for time_ns, _, ptr, nbytes in sorted(found):
        if nbytes > 0:
            live.add(ptr)
        elif ptr in live:
            live.remove(ptr)
        else:
            continue
        out.append((time_ns, nbytes))
    return out


def running_peak(events: Iterable[tuple[int, int]]) -> int:
    """The highest running sum of allocation sizes (frees negative), never below 0."""
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return peak


@contextlib.contextmanager
def _filtered_native_stderr() -> Iterator[None]:
    """Capture file descriptor 2 for the block, then pass on what was written to it except the
    profiler's own log lines: Kineto (torch's profiler backend) logs from C++ each time a profiler
    starts and stops, and torch's CPU allocator warns each time a block older than the profiler
    is freed under it (such frees are left out on purpose, see allocation_events)."""
    if sys.stderr is not None:
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(noise in line for noise in _PROFILER_NOISE))
            if kept and sys.stderr is not None:
                sys.stderr.write(kept)
                sys.stderr.flush()
