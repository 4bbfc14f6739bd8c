"""Block throughput with pytest-benchmark: forward and forward+backward of every built-in variant.

In the default test run (``--benchmark-disable`` in pyproject's addopts) each benchmark body runs
once, as a smoke test. ``pytest --benchmark-only`` measures for real (warm-up on, see addopts),
one group per width; save a baseline with ``--benchmark-autosave`` and compare against it with
``--benchmark-compare --benchmark-compare-fail=min:5%``. Threads are pinned (SKIPBENCH_BENCH_THREADS,
default 1) and recorded in extra_info with the rest of the setting.
"""

from __future__ import annotations

import os

import pytest
import torch

from skipbench import network
from skipbench.registry import load_registry

VARIANTS = list(load_registry(entrypoints=False, env=False, pyproject=None).variants)
WIDTHS = (64, 256)
DEPTH = 8
BATCH = 128
THREADS = int(os.environ.get("SKIPBENCH_BENCH_THREADS", "1"))


@pytest.fixture
def pinned_threads():
    """torch's intra-op threads set to THREADS for the test, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)


def _setting(registry, benchmark, variant: str, width: int, pass_: str, threads: int):
    torch.manual_seed(0)
    net = network.build(registry, registry.variants[variant], DEPTH, width)
    x = torch.randn(BATCH, width, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"{pass_} width={width}"
    benchmark.extra_info.update(variant=variant, width=width, depth=DEPTH, batch=BATCH, **{"pass": pass_},
                                threads=torch.get_num_threads(), requested_threads=threads,
                                torch=torch.__version__)
    return net, x


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward(benchmark, registry, pinned_threads, variant, width):
    net, x = _setting(registry, benchmark, variant, width, "forward", pinned_threads)

    def forward():
        with torch.no_grad():
            return net(x)

    out = benchmark(forward)
    assert out.shape == (BATCH, width) and torch.isfinite(out).all()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward(benchmark, registry, pinned_threads, variant, width):
    net, x = _setting(registry, benchmark, variant, width, "forward+backward", pinned_threads)

    def forward_backward():
        net.zero_grad(set_to_none=True)
        loss = net(x).sum()
        loss.backward()
        return loss

    loss = benchmark(forward_backward)
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
