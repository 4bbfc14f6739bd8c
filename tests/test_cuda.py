"""`--device cuda` end to end: vectorized seeds, timing and memory on a real GPU.

Every test here needs a CUDA device and is skipped, with the reason, where torch sees none.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_cell
from skipbench import results
from skipbench.engine import roofline
from skipbench.measurements import gradient_flow, identity, throughput
from skipbench.specs import Variant

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.mark.parametrize("variant", ["plain", "residual", "dense", "highway"])
def test_vectorized_seeds_on_cuda_match_the_cpu(registry, variant):
    """The same weights (built on the CPU, then moved), the same records within float64 rounding."""
    v = registry.variants[variant]
    v64 = Variant(f"{variant}-f64", v.builder, v.params, {**v.network, "dtype": "float64"})
    for run, options in ((gradient_flow.run, {}), (identity.run, {"steps": 10, "eval_every": 5, "eval_batch": 20})):
        name = "gradient-flow" if run is gradient_flow.run else "identity"
        on_gpu = run(make_cell(registry, name, v64, 4, 32, 16, (0, 1, 2), "cuda", **options))
        on_cpu = run(make_cell(registry, name, v64, 4, 32, 16, (0, 1, 2), "cpu", **options))
        assert [(r["metric"], r["seed"], r["index"]) for r in on_gpu] == [(r["metric"], r["seed"], r["index"]) for r in on_cpu]
        for g, c in zip(on_gpu, on_cpu):
            if c["value"] is not None:
                assert g["value"] == pytest.approx(c["value"], rel=1e-6, abs=1e-9), (g, c)


def test_throughput_on_cuda_is_timed_synchronized_with_memory_from_the_allocator(registry):
    recs = {r["metric"]: r for r in throughput.run(make_cell(registry, "throughput", "plain", 8, 32, 16, device="cuda",
                                                             min_run_time=0.05))}
    net = make_cell(registry, "throughput", "plain", 8, 32, 16, device="cuda").build(0)
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    assert recs["peak_mem_bytes"]["value"] >= 2 * param_bytes
    assert recs["fwd_samples_per_s"]["value"] > 0 and recs["matmul_gflop_per_s"]["size"] == roofline.MATMUL_SIZE["cuda"]
    assert 0 < recs["fwd_of_matmul"]["value"] < 1.5


def test_cuda_clock_waits_for_queued_kernels():
    """Timed with the clock, queued kernels count in full (CUDA events measure them on the GPU);
    an unsynchronized clock would see only the time to queue them."""
    a = torch.randn(4096, 4096, device="cuda")
    clock = roofline.clock("cuda")
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = clock()
    begin.record()
    for _ in range(20):
        a = a @ a / 64
    end.record()
    t1 = clock()
    torch.cuda.synchronize()
    assert (t1 - t0) * 1000 >= 0.9 * begin.elapsed_time(end)


def test_run_device_cuda_end_to_end(run_cli, tmp_path):
    proc = run_cli("run", "plain", "residual", "highway", "--profile", "quick", "-m", "gradient-flow", "-m", "identity",
                   "-m", "throughput", "-m", "probes", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    meta, table = results.load(tmp_path / "run")
    assert meta["device"] == "cuda" and meta["peak_mem_method"] == "torch.cuda.max_memory_allocated"
    assert not results.count(table, "failed")
    assert set(table["measurement"].to_pylist()) == {"gradient-flow", "identity", "throughput", "probes"}
