"""The core measurements on real networks, checked against independent computations and theory."""

from __future__ import annotations

import json
import math
import statistics
import timeit
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.benchmark.utils.common import Measurement as TimerMeasurement
from torch.utils.benchmark.utils.common import TaskSpec

from conftest import make_cell
from skipbench.engine import roofline
from skipbench.results import expand
from skipbench.measurements import STREAM_DATA, STREAM_EVAL
from skipbench.measurements.throughput import _rate_record
from skipbench.registry import load_registry
from skipbench.specs import Variant


def measure(registry, name, variant, depth, width=16, batch=8, seeds=(0,), **options):
    cell = make_cell(registry, name, variant, depth, width, batch, seeds, **options)
    return expand(registry.measurements[name].run(cell))


def by_metric(records, metric):
    return [r for r in records if r["metric"] == metric]


def per_seed(records, metric):
    """seed -> [value by index] for a per-block metric."""
    out = defaultdict(dict)
    for r in by_metric(records, metric):
        out[r["seed"]][r["index"]] = r["value"]
    return {seed: [vals[i] for i in sorted(vals)] for seed, vals in out.items()}


def scalar(records, metric, seed=None):
    [r] = [r for r in by_metric(records, metric) if r["index"] is None and (seed is None or r["seed"] == seed)]
    return r


PLAIN_NO_HEAD = Variant("plain-trunk", "plain", network={"head": "none"})


# -- gradient flow ------------------------------------------------------------------------------
def test_gradient_flow_records_every_block_and_seed(registry):
    recs = measure(registry, "gradient-flow", registry.variants["residual"], depth=6, seeds=(0, 1))
    for metric in ("grad_norm", "signal_norm", "act_norm", "rel_grad_norm"):
        got = per_seed(recs, metric)
        assert sorted(got) == [0, 1]
        assert all(len(v) == 3 for v in got.values()), metric  # 6 layers = 3 residual blocks
        assert all(math.isfinite(x) and x > 0 for v in got.values() for x in v)
    for metric in ("grad_ratio", "signal_ratio", "act_growth"):
        assert sorted(r["seed"] for r in by_metric(recs, metric)) == [0, 1]


def test_grad_ratio_is_first_over_last_grad_norm(registry):
    recs = measure(registry, "gradient-flow", registry.variants["plain"], depth=5, seeds=(3, 4, 5))
    norms = per_seed(recs, "grad_norm")
    for seed, values in norms.items():
        assert scalar(recs, "grad_ratio", seed)["value"] == pytest.approx(values[0] / values[-1], rel=1e-12)
    signals = per_seed(recs, "signal_norm")
    for seed, values in signals.items():
        assert scalar(recs, "signal_ratio", seed)["value"] == pytest.approx(values[0] / values[-1], rel=1e-12)


def test_gradient_flow_matches_a_numpy_backprop(registry):
    """A 2-layer plain ReLU net, recomputed by hand in float64 from the same weights and data."""
    width, batch, seed = 6, 5, 7
    cell = make_cell(registry, "gradient-flow", PLAIN_NO_HEAD, 2, width, batch, (seed,))
    net = cell.build(seed)
    data = cell.normal(seed, STREAM_DATA, 2 * batch).double().numpy()
    x, t = data[:batch], data[batch:]
    (w1, b1), (w2, b2) = [(b[0].weight.detach().double().numpy(), b[0].bias.detach().double().numpy())
                          for b in net.blocks]
    z1 = x @ w1.T + b1
    h1 = np.maximum(z1, 0)
    z2 = h1 @ w2.T + b2
    y = np.maximum(z2, 0)
    dz2 = (y - t) / batch * (z2 > 0)  # loss = 0.5 * sum((y - t)^2) / batch
    dw2 = dz2.T @ h1
    dh1 = dz2 @ w2
    dz1 = dh1 * (z1 > 0)
    dw1 = dz1.T @ x
    dx = dz1 @ w1

    recs = expand(registry.measurements["gradient-flow"].run(cell))
    assert per_seed(recs, "grad_norm")[seed] == pytest.approx([np.linalg.norm(dw1), np.linalg.norm(dw2)], rel=1e-5)
    assert per_seed(recs, "signal_norm")[seed] == pytest.approx([np.linalg.norm(dx), np.linalg.norm(dh1)], rel=1e-5)
    rms = [np.linalg.norm(h1) / math.sqrt(batch), np.linalg.norm(y) / math.sqrt(batch)]
    assert per_seed(recs, "act_norm")[seed] == pytest.approx(rms, rel=1e-5)
    rel = [np.linalg.norm(dw1) / np.linalg.norm(w1), np.linalg.norm(dw2) / np.linalg.norm(w2)]
    assert per_seed(recs, "rel_grad_norm")[seed] == pytest.approx(rel, rel=1e-5)
    assert scalar(recs, "act_growth")["value"] == pytest.approx(rms[1] / (np.linalg.norm(x) / math.sqrt(batch)), rel=1e-5)


@pytest.mark.parametrize("how", ["sum", "global"])
def test_norm_combine_over_a_residual_blocks_matrices(registry, how):
    """sum: ||dW1|| + ||dW2|| per block (the study); global: sqrt(||dW1||^2 + ||dW2||^2)."""
    width, batch, seed = 8, 4, 2
    variant = Variant("res-trunk", "residual", network={"head": "none"})
    cell = make_cell(registry, "gradient-flow", variant, 6, width, batch, (seed,), norm_combine=how)
    net = cell.build(seed)
    data = cell.normal(seed, STREAM_DATA, 2 * batch)
    x, t = data[:batch], data[batch:]
    loss = 0.5 * ((net(x) - t) ** 2).sum() / batch
    expected = []
    for block in net.blocks:
        g1, g2 = torch.autograd.grad(loss, [block.fc1.weight, block.fc2.weight], retain_graph=True)
        n1, n2 = g1.norm().item(), g2.norm().item()
        expected.append(n1 + n2 if how == "sum" else math.hypot(n1, n2))
    recs = expand(registry.measurements["gradient-flow"].run(cell))
    assert per_seed(recs, "grad_norm")[seed] == pytest.approx(expected, rel=1e-5)


def test_identity_at_init_gives_undefined_grad_ratio(registry):
    """A residual net with branch_scale 0 is the identity: every branch gradient is 0, ratio 0/0."""
    variant = Variant("rezero", "residual", params={"branch_scale": 0.0})
    recs = measure(registry, "gradient-flow", variant, depth=4, seeds=(0, 1))
    assert all(v == 0.0 for vals in per_seed(recs, "grad_norm").values() for v in vals)
    for seed in (0, 1):
        r = scalar(recs, "grad_ratio", seed)
        assert r["value"] is None and r["status"] == "undefined"
        assert "0/0" in r["error"]


def test_ratio_eps_is_added_to_the_last_norm(registry):
    variant = Variant("rezero", "residual", params={"branch_scale": 0.0})
    r = scalar(measure(registry, "gradient-flow", variant, depth=4, ratio_eps=1e-10), "grad_ratio")
    assert r["value"] == 0.0 and r.get("status") is None


def _median_act_growth_sq(registry, init, seeds=64, depth=8, width=64):
    variant = Variant("t", "plain", params={"init": init}, network={"head": "none"})
    recs = measure(registry, "gradient-flow", variant, depth, width, batch=64, seeds=range(seeds))
    return statistics.median(r["value"] ** 2 for r in by_metric(recs, "act_growth"))


def test_he_normal_preserves_activation_norm_and_torch_default_shrinks_it(registry):
    """Theory: E[||a_L||^2 / ||a_0||^2] = 1 for He-normal (the median drifts slightly below);
    PyTorch's default Linear init shrinks it by about 6x per ReLU layer."""
    he = _median_act_growth_sq(registry, "he-normal")
    default = _median_act_growth_sq(registry, "torch-default")
    assert 0.6 <= he <= 1.4
    assert default < 0.05
    assert default < he / 20


# -- identity -----------------------------------------------------------------------------------
def test_mse_init_matches_recomputation(registry):
    variant = registry.variants["residual"]
    cell = make_cell(registry, "identity", variant, 4, width=12, seeds=(5, 6), steps=0, eval_batch=40)
    recs = expand(registry.measurements["identity"].run(cell))
    for seed in (5, 6):
        net = cell.build(seed)
        x = cell.normal(seed, STREAM_EVAL, 40)
        with torch.no_grad():
            expected = torch.mean((net(x) - x) ** 2).item()
        assert scalar(recs, "mse_init", seed)["value"] == pytest.approx(expected, rel=1e-6)
        assert expected > 0


def test_residual_mse_init_follows_theory(registry):
    """x + a W2 relu(W1 x), He-normal, no head: E[mse] = (1 + 2 a^2)^L - 1 for N(0, 1) inputs."""
    a, blocks = 0.5, 3
    variant = Variant("t", "residual", params={"order": "branch-only", "branch_scale": a}, network={"head": "none"})
    recs = measure(registry, "identity", variant, 2 * blocks, width=64, seeds=range(64), steps=0, eval_batch=256)
    mean = statistics.fmean(r["value"] for r in by_metric(recs, "mse_init"))
    assert mean == pytest.approx((1 + 2 * a * a) ** blocks - 1, rel=0.1)


def test_training_lowers_mse_and_curve_is_indexed_by_step(registry):
    recs = measure(registry, "identity", registry.variants["residual"], 4, seeds=(0, 1), steps=22, eval_every=5,
                   eval_batch=64, threshold=1e-12)
    for seed in (0, 1):
        curve = sorted((r["index"], r["value"]) for r in by_metric(recs, "loss_curve") if r["seed"] == seed)
        assert [step for step, _ in curve] == [0, 5, 10, 15, 20, 22]
        init, trained = scalar(recs, "mse_init", seed)["value"], scalar(recs, "mse_trained", seed)["value"]
        assert curve[0][1] == init and curve[-1][1] == trained
        assert trained < 0.5 * init
        unreached = scalar(recs, "steps_to_threshold", seed)
        assert unreached["value"] is None and unreached["status"] == "undefined"
        assert "not reached in 22 steps" in unreached["error"]


def test_steps_to_threshold_is_the_first_evaluated_step_below_it(registry):
    recs = measure(registry, "identity", registry.variants["residual"], 4, seeds=(0,), steps=30, eval_every=5,
                   eval_batch=64)
    curve = sorted((r["index"], r["value"]) for r in by_metric(recs, "loss_curve"))
    threshold = curve[3][1]  # certainly reached, at step 15 at the latest
    recs = measure(registry, "identity", registry.variants["residual"], 4, seeds=(0,), steps=30, eval_every=5,
                   eval_batch=64, threshold=threshold)
    expected = next(step for step, value in curve if value <= threshold)
    assert scalar(recs, "steps_to_threshold")["value"] == expected


def test_zero_initialized_identity_has_exactly_zero_mse(registry):
    variant = Variant("rezero", "residual", params={"branch_scale": 0.0, "order": "branch-only"},
                      network={"head": "none"})
    recs = measure(registry, "identity", variant, 4, seeds=(0, 1), steps=5, eval_every=5, eval_batch=32)
    for seed in (0, 1):
        assert scalar(recs, "mse_init", seed)["value"] == 0.0
        assert scalar(recs, "mse_trained", seed)["value"] == 0.0
        assert scalar(recs, "steps_to_threshold", seed)["value"] == 0


def test_steps_to_threshold_without_training(registry):
    """steps = 0: 0 where the network meets the threshold at initialization, else undefined
    because there was no training (not "not reached in 0 steps")."""
    zero = Variant("z", "residual", params={"branch_scale": 0.0, "order": "branch-only"}, network={"head": "none"})
    recs = measure(registry, "identity", zero, 4, seeds=(0,), steps=0, eval_batch=32)
    assert scalar(recs, "steps_to_threshold")["value"] == 0
    recs = measure(registry, "identity", registry.variants["residual"], 4, seeds=(0,), steps=0, eval_batch=32)
    undefined = scalar(recs, "steps_to_threshold")
    assert undefined["value"] is None and undefined["status"] == "undefined"
    assert undefined["error"] == "no training (steps = 0) and MSE <= 0.01 not met at initialization"


def test_steps_to_threshold_of_a_diverged_seed_names_the_non_finite_mse(registry):
    """A seed whose MSE turns non-finite says so, at the step of the evaluation that saw it."""
    recs = measure(registry, "identity", registry.variants["residual"], 4, seeds=(0, 1), steps=20, eval_every=2,
                   eval_batch=32, optimizer="sgd", lr=1e30)
    for seed in (0, 1):
        step, value = max((r["index"], r["value"]) for r in by_metric(recs, "loss_curve") if r["seed"] == seed)
        assert not math.isfinite(value) and step < 20  # the curve stopped there
        undefined = scalar(recs, "steps_to_threshold", seed)
        assert undefined["status"] == "undefined"
        assert undefined["error"] == f"MSE became {value} by step {step}, before reaching MSE <= 0.01"


# -- params -------------------------------------------------------------------------------------
def _counts(net: nn.Module):
    """(params, weights) counted from the Linear modules, independently of the measurement."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    weights = sum(m.in_features * m.out_features for m in layers)
    return weights + sum(m.out_features for m in layers if m.bias is not None), weights


@pytest.mark.parametrize("name", ["plain", "residual", "dense", "highway"])
def test_param_counts_match_the_modules(registry, name):
    cell = make_cell(registry, "params", registry.variants[name], 4, width=12)
    recs = {r["metric"]: r["value"] for r in registry.measurements["params"].run(cell)}
    net = cell.build(0)
    params, weights = _counts(net)
    assert recs["params"] == params == sum(p.numel() for p in net.parameters())
    assert recs["weights"] == weights
    assert recs["out_width"] == net.widths[-1]


def test_residual_and_dense_counts(registry):
    res = {r["metric"]: r["value"] for r in measure(registry, "params", Variant("r", "residual", network={"head": "none"}),
                                                    2, width=32)}
    assert (res["weights"], res["params"], res["out_width"]) == (2048, 2112, 32)
    dense = {r["metric"]: r["value"] for r in measure(registry, "params", Variant("d", "dense", {"growth_rate": 16},
                                                                                     {"head": "none"}), 4, width=32)}
    assert dense["weights"] == 16 * (32 + 48 + 64 + 80) == 3584
    assert dense["out_width"] == 96
    assert dense["flops"] == 2 * dense["weights"]


def test_bias_free_params_equal_weights(registry):
    recs = {r["metric"]: r["value"] for r in measure(registry, "params", Variant("p", "plain", {"bias": False}), 3)}
    assert recs["params"] == recs["weights"] == 3 * 16 * 16


@pytest.mark.parametrize("depth, width, head", [(3, 16, "none"), (5, 8, "none"), (3, 16, "linear")])
def test_flops_count_a_multiply_add_as_two(registry, depth, width, head):
    recs = {r["metric"]: r["value"] for r in measure(registry, "params", Variant("p", "plain", network={"head": head}),
                                                     depth, width=width)}
    layers = depth + (head == "linear")
    assert recs["flops"] == 2 * layers * width * width


def _closed_form_params(builder: str, depth: int, w: int, growth: int) -> int:
    """Parameters of a trunk without a head, from each family's definition (biases on)."""
    if builder == "plain":  # depth layers W x + b
        return depth * (w * w + w)
    if builder == "residual":  # depth // 2 blocks of two layers
        return depth // 2 * 2 * (w * w + w)
    if builder == "highway":  # per layer: the transform H and the gate T
        return depth * 2 * (w * w + w)
    return sum((w + i * growth) * growth + growth for i in range(depth))  # dense: layer i sees w + i g


@pytest.mark.parametrize("builder", ["plain", "residual", "highway", "dense"])
@pytest.mark.parametrize("depth, width", [(2, 8), (4, 12), (6, 32)])
def test_param_counts_equal_the_closed_form(registry, builder, depth, width):
    variant = Variant("v", builder, network={"head": "none"})
    growth = registry.params_of(variant).get("growth_rate", 0)
    recs = {r["metric"]: r["value"] for r in measure(registry, "params", variant, depth, width=width)}
    assert recs["params"] == _closed_form_params(builder, depth, width, growth)
    assert recs["trainable_params"] == recs["params"]  # every parameter of these families trains


FROZEN_PLUGIN = '''
import skipbench
import torch
from torch import nn


class Frozen(nn.Module):
    """x + relu(W x + b) * s, s frozen; a running mean as a buffer (not a parameter)."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.register_buffer("running", torch.zeros(dim))

    def forward(self, x):
        return x + self.scale * self.fc(x).relu()


@skipbench.hookimpl
def skipbench_register_builders():
    yield skipbench.BlockBuilder("frozen-scale", Frozen, skip_kind="scaled")
'''


def test_frozen_parameters_and_buffers_are_not_trainable_params(tmp_path):
    """A frozen parameter counts in params but not trainable_params; a buffer in neither."""
    (tmp_path / "frozenplug.py").write_text(FROZEN_PLUGIN)
    reg = load_registry(entrypoints=False, env=False, pyproject=None, plugin_dirs=[str(tmp_path)])
    depth, w = 3, 16
    recs = {r["metric"]: r["value"] for r in measure(reg, "params", Variant("f", "frozen-scale", network={"head": "none"}),
                                                     depth, width=w)}
    assert recs["params"] == depth * (w * w + w + w)
    assert recs["trainable_params"] == depth * (w * w + w) < recs["params"]
    assert recs["weights"] == depth * w * w


# -- throughput ---------------------------------------------------------------------------------
def test_throughput_records(registry):
    out = {}
    for depth in (2, 8):
        recs = measure(registry, "throughput", registry.variants["plain"], depth, width=32, batch=16, min_run_time=0.01)
        out[depth] = {r["metric"]: r for r in recs}
        for metric in ("fwd_samples_per_s", "fwdbwd_samples_per_s"):
            r = out[depth][metric]
            assert r["value"] > 0 and math.isfinite(r["value"])
            assert r["iqr"] >= 0 and r["unit"] == "samples/s" and r["repeats"] >= 1
        assert all(r["threads"] == torch.get_num_threads() for r in recs)
        net = make_cell(registry, "throughput", registry.variants["plain"], depth, width=32, batch=16).build(0)
        param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
        assert out[depth]["peak_mem_bytes"]["value"] >= 2 * param_bytes  # parameters and their gradients
    assert out[8]["peak_mem_bytes"]["value"] > out[2]["peak_mem_bytes"]["value"]


@pytest.mark.parametrize("variant", ["plain", "residual", "dense", "dense-efficient", "highway", "rezero", "preln"])
def test_flop_count_is_torch_flop_counters_total(registry, variant):
    """roofline.count_flops (torch.utils.flop_counter's formulas, without FlopCounterMode, whose
    dispatch imports the compiler) counts what FlopCounterMode counts, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    net = make_cell(registry, "throughput", registry.variants[variant], 3, width=16, batch=8).build(0)
    x = torch.randn(8, 16)

    def step():
        net(x).sum().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    assert counter.get_total_flops() > 0
    assert roofline.count_flops(step) == counter.get_total_flops()


def test_throughput_roofline_columns(registry):
    """Achieved GFLOP/s = FLOPs of the pass per sample x samples/s; the roofline column is its
    fraction of the dense matmul rate measured in the same process."""
    recs = {r["metric"]: r for r in measure(registry, "throughput", registry.variants["plain"], 4, width=64, batch=32,
                                            min_run_time=0.01)}
    net = make_cell(registry, "throughput", registry.variants["plain"], 4, width=64, batch=32).build(0)
    fwd_flops_per_sample = 2 * sum(p.numel() for p in net.parameters() if p.dim() == 2)  # a multiply-add is 2
    with torch.no_grad():
        assert roofline.count_flops(lambda: net(torch.zeros(32, 64))) == 32 * fwd_flops_per_sample
    matmul = recs["matmul_gflop_per_s"]
    assert matmul["unit"] == "GFLOP/s" and matmul["size"] == roofline.MATMUL_SIZE["cpu"] and matmul["value"] > 0
    fwd = recs["fwd_gflop_per_s"]["value"]
    assert fwd == pytest.approx(fwd_flops_per_sample * recs["fwd_samples_per_s"]["value"] / 1e9)
    assert recs["fwd_of_matmul"]["value"] == pytest.approx(fwd / matmul["value"])
    # backward costs about twice the forward in matrix products: more FLOPs per sample
    bwd_flops_per_sample = recs["fwdbwd_gflop_per_s"]["value"] * 1e9 / recs["fwdbwd_samples_per_s"]["value"]
    assert 2.5 * fwd_flops_per_sample <= bwd_flops_per_sample <= 3.5 * fwd_flops_per_sample
    assert recs["fwdbwd_of_matmul"]["unit"] == "fraction"


def test_matmul_rate_is_measured_once_per_setting():
    a = roofline.matmul_rate("cpu", torch.float32, torch.get_num_threads(), 0.01)
    assert a > 1e8 and roofline.matmul_rate("cpu", torch.float32, torch.get_num_threads(), 0.01) == a
    assert roofline.clock("cpu") is timeit.default_timer  # no synchronization off CUDA


@pytest.mark.parametrize("times", [[1e-3, 1e-2], [1e-3, 1.1e-3, 1e-2], [2e-3] * 5, [1e-3, 2e-3, 3e-3, 8e-3]])
def test_rate_iqr_is_never_negative(times):
    """A few timing blocks with an outlier must not give a negative spread."""
    timing = TimerMeasurement(number_per_run=1, raw_times=times, task_spec=TaskSpec(stmt="fn()", setup="pass"))
    r = _rate_record("fwd_samples_per_s", timing, 10)
    assert r["value"] == pytest.approx(10 / statistics.median(times))
    rates = sorted(10 / t for t in times)
    assert 0 <= r["iqr"] <= rates[-1] - rates[0]


# -- probes -------------------------------------------------------------------------------------
def _expected_gate_mean(bias, s2=1.0, nodes=80):
    """E[sigmoid(Z)], Z ~ N(bias, s2), by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return float(np.sum(w / (1 + np.exp(-(bias + math.sqrt(s2) * x)))) / np.sum(w))


def _gate_means(registry, bias, seeds=range(16), depth=1):
    variant = Variant("hw", "highway", params={"gate_bias": bias}, network={"head": "none"})
    recs = measure(registry, "probes", variant, depth, width=64, seeds=seeds)
    return recs, [r["value"] for r in by_metric(recs, "gate_mean") if r["index"] is None]


def test_highway_gate_mean_matches_quadrature(registry):
    """One highway layer on N(0, I) inputs, gate weights N(0, 1/width): Z ~ N(b, ~1)."""
    _, means = _gate_means(registry, -2.0)
    assert statistics.fmean(means) == pytest.approx(_expected_gate_mean(-2.0), abs=0.005)
    assert _expected_gate_mean(-2.0) == pytest.approx(0.155, abs=0.001)


def test_gate_mean_falls_with_the_gate_bias(registry):
    lo = statistics.fmean(_gate_means(registry, -3.0, range(4))[1])
    mid = statistics.fmean(_gate_means(registry, -2.0, range(4))[1])
    hi = statistics.fmean(_gate_means(registry, -1.0, range(4))[1])
    assert lo < mid < hi


def test_probe_mean_is_the_mean_over_blocks(registry):
    recs, _ = _gate_means(registry, -2.0, seeds=(0, 1), depth=3)
    for seed in (0, 1):
        blocks = [r["value"] for r in by_metric(recs, "gate_mean") if r["seed"] == seed and r["index"] is not None]
        assert len(blocks) == 3
        assert scalar(recs, "gate_mean", seed)["value"] == pytest.approx(sum(blocks) / 3)


def test_probes_apply_only_to_builders_with_probes(registry):
    probes = registry.measurements["probes"]
    assert probes.applies_to(registry.builders["highway"])
    assert not any(probes.applies_to(registry.builders[b]) for b in ("plain", "residual", "dense"))


# -- determinism --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gradient-flow", "identity", "params", "probes"])
def test_same_seed_gives_bit_identical_records(registry, name):
    options = {"steps": 10, "eval_every": 5, "eval_batch": 32} if name == "identity" else {}
    variants = ["highway"] if name == "probes" else ["plain", "residual", "dense", "highway"]
    for v in variants:
        first = measure(registry, name, registry.variants[v], 4, seeds=(1, 2), **options)
        torch.manual_seed(123)  # whatever the global state, the records must not change
        second = measure(registry, name, registry.variants[v], 4, seeds=(1, 2), **options)
        assert json.dumps(first) == json.dumps(second)
        assert first
