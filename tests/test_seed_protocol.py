"""The `seed` profile against an independent NumPy implementation of the study's protocol.

PROTOCOLS.md states exactly how SEED.md's numbers were made. The NumPy code here and in
benchmarks/protocol_numpy.py (the networks and their hand-written backward pass, which that
benchmark also times as the study's per-seed way) is written from that text alone: it calls
nothing of skipbench's to build, run or differentiate a network. It serves as an oracle in three
ways:

1. Shared weights: skipbench's networks for the seed profile's own variants are built, their
   weight matrices copied into NumPy (biases are taken from the protocol, not copied, so that
   skipbench's bias initialization is checked too), fed the very data skipbench feeds them, and
   the per-layer / per-block gradient norms, grad_ratio and mse_init must be the same numbers.
2. Independent weights: NumPy's own generator draws 64 networks per cell, and the medians must
   agree with skipbench's 64-seed medians within their Monte-Carlo error.
3. The study's exact facts: weight counts, output widths, and the highway gate mean.

Finally the real CLI runs the whole profile and its report is checked against seed.toml.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import tomllib
from pathlib import Path
from typing import Callable

import matplotlib.image
import numpy as np
import pytest
import torch

from conftest import ROOT
from skipbench import grid, harness
from skipbench.results import expand
from skipbench.measurements import STREAM_DATA, STREAM_EVAL, Cell, gradient_flow, identity, params, probes
from skipbench.registry import load_registry

PROFILE_TOML = Path(harness.__file__).resolve().parent / "profiles" / "seed.toml"
N_SEEDS = 64
RATIO_EPS = 1e-10  # PROTOCOLS.md: first / (last + 1e-10)

# The study's published constants (PROTOCOLS.md, experiment 3 and the highway gate).
STUDY_VARIANTS = {  # variant of the seed profile: (experiment, depth, weights, output width, layout)
    "seed-residual-block": ("variants-residual", 2, 2048, 32, "residual-block"),
    "seed-dense-block": ("variants-dense", 4, 3584, 96, "dense-block"),
    "seed-highway": ("variants-highway", 1, 2048, 32, "highway"),
}
STUDY_GATE_MEAN = 0.154
STUDY_GATE_BIAS = -2.0
DENSE_GROWTH = 16


# -- the oracle: the protocol in NumPy -------------------------------------------------------------
def _load_protocol():
    """benchmarks/protocol_numpy.py: the protocol's networks and their hand-written backward pass
    in NumPy (the per-seed baseline of benchmarks/seeds.py, and this file's oracle)."""
    spec = importlib.util.spec_from_file_location("protocol_numpy", ROOT / "benchmarks" / "protocol_numpy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()
relu, he, xavier_seed = protocol.relu, protocol.he, protocol.xavier_seed
np_plain, np_residual, np_gradient_profile = protocol.plain_net, protocol.residual_net, protocol.gradient_profile


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def np_forward(kind: str, net: dict, x: np.ndarray) -> np.ndarray:
    """Output of the plain or residual network (rows are samples; a layer computes x W^T + b)."""
    if kind == "plain":
        h = x
        for i, (w, b) in enumerate(net["layers"]):
            z = h @ w.T + b
            h = z if i == len(net["layers"]) - 1 else relu(z)  # ReLU after every layer but the last
        return h
    w, b = net["stem"]
    h = relu(x @ w.T + b)
    for w1, b1, w2, b2 in net["blocks"]:
        h = relu(h + relu(h @ w1.T + b1) @ w2.T + b2)  # post-activation: ReLU after the addition
    w, b = net["head"]
    return h @ w.T + b  # no activation


def np_grad_ratio(profile: list[float]) -> float:
    return profile[0] / (profile[-1] + RATIO_EPS)


def np_identity_mse(kind: str, net: dict, x: np.ndarray) -> float:
    return float(np.mean((np_forward(kind, net, x) - x) ** 2))


def np_study_block(layout: str, rng: np.random.Generator, width: int) -> tuple[dict, Callable[[np.ndarray], np.ndarray]]:
    """Experiment 3's blocks at `width`: (named arrays, forward)."""
    if layout == "residual-block":
        arrays = {"W1": he(rng, width, width), "b1": np.zeros(width), "W2": he(rng, width, width), "b2": np.zeros(width)}

        def forward(x):
            return relu(x + relu(x @ arrays["W1"].T + arrays["b1"]) @ arrays["W2"].T + arrays["b2"])
    elif layout == "dense-block":
        arrays = {}
        for i in range(4):
            arrays[f"W{i}"] = he(rng, DENSE_GROWTH, width + DENSE_GROWTH * i)
            arrays[f"b{i}"] = np.zeros(DENSE_GROWTH)

        def forward(x):
            features = x
            for i in range(4):  # layer i reads the input and every earlier layer's output
                out = relu(features @ arrays[f"W{i}"].T + arrays[f"b{i}"])
                features = np.concatenate([features, out], axis=1)
            return features
    else:
        arrays = {"W_H": he(rng, width, width), "b_H": np.zeros(width),
                  "W_T": xavier_seed(rng, width, width), "b_T": np.full(width, STUDY_GATE_BIAS)}

        def forward(x):
            return np_highway(arrays, x)[0]
    return arrays, forward


def np_highway(arrays: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(output, gate T) of a highway layer."""
    h = relu(x @ arrays["W_H"].T + arrays["b_H"])
    gate = sigmoid(x @ arrays["W_T"].T + arrays["b_T"])
    return gate * h + (1 - gate) * x, gate


# -- statistics ------------------------------------------------------------------------------------
Z_MEDIAN_CI = 2.576  # 99 % two-sided normal quantile
AGREEMENT_SIGMAS = 4.0


def median_se(values) -> float:
    """Distribution-free standard error of a sample median.

    The ranks of a distribution-free confidence interval for the median follow Binomial(n, 1/2):
    the order statistics at ranks n/2 -+ z sqrt(n)/2 enclose the median with probability ~ the
    normal coverage of z, so that interval spans about 2 z standard errors of the sample median.
    Rounding the ranks outwards makes the estimate slightly conservative.
    """
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    half = Z_MEDIAN_CI * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return float(v[hi] - v[lo]) / (2 * Z_MEDIAN_CI)


def assert_medians_agree(ours, theirs, what: str) -> None:
    """The medians of two independent 64-draw samples of the same distribution differ by a
    normal-ish variable of standard deviation hypot(SE1, SE2) (asymptotic normality of the
    sample median). Allowing 4 of those standard deviations keeps the false-alarm rate of one
    comparison near 6e-5 (the seeds are fixed anyway, so the outcome is deterministic), while a
    wrong variance, a missing activation or a misplaced ReLU moves these medians by far more."""
    m1, m2 = float(np.median(ours)), float(np.median(theirs))
    tol = AGREEMENT_SIGMAS * math.hypot(median_se(ours), median_se(theirs))
    assert abs(m1 - m2) <= tol, f"{what}: NumPy median {m1:.4g} vs skipbench median {m2:.4g} (tolerance {tol:.3g})"


# -- skipbench side ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_run():
    """(registry, plans by experiment name) of the seed profile, in a registry of this module's
    own (make_run adds the profile's variants to the registry it is given)."""
    registry = load_registry(entrypoints=False, env=False, pyproject=None)
    run = grid.make_run(registry, "seed")
    return registry, {plan.experiment: plan for plan in run.plans}


def make_cell(seed_run, experiment: str, variant: str, depth: int, seeds, **options) -> Cell:
    """The Cell the harness would build for this task of the seed profile (with the experiment's
    network overrides, which its plan's variants carry), options optionally overridden."""
    registry, plans = seed_run
    plan = plans[experiment]
    v = next(v for v in plan.variants if v.name == variant)
    measurement = options.pop("measurement", None) or plan.measurements[0]
    assert measurement in plan.measurements
    return Cell(registry, v, depth, plan.widths[0], plan.batch, tuple(seeds), plan.device,
                {**plan.options[measurement], **options})


def _shape_list(net: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in net.parameters()]


def copy_weights(kind: str, net: torch.nn.Module, depth: int, width: int) -> dict:
    """The skipbench network as the oracle's structure: weight matrices copied (float64), biases
    as the protocol says (zero). First checks that the module holds exactly the protocol's
    parameters, in forward order, and that its biases start at zero."""
    weights = [p.detach().double().numpy().copy() for p in net.parameters() if p.dim() >= 2]
    biases = [p.detach().double().numpy() for p in net.parameters() if p.dim() == 1]
    n_linear = depth if kind == "plain" else 2 + 2 * (depth // 2)
    assert _shape_list(net) == [(width, width), (width,)] * n_linear
    assert all(np.all(b == 0) for b in biases), "the protocol's biases start at zero"
    if kind == "plain":
        return {"layers": [(w, np.zeros(width)) for w in weights]}
    blocks = [(weights[1 + 2 * i], np.zeros(width), weights[2 + 2 * i], np.zeros(width)) for i in range(depth // 2)]
    return {"stem": (weights[0], np.zeros(width)), "blocks": blocks, "head": (weights[-1], np.zeros(width))}


def by_seed(records: list[dict], metric: str) -> dict[int, float]:
    """Per-seed scalar values of a metric (index None)."""
    out = {r["seed"]: r["value"] for r in records if r["metric"] == metric and r["index"] is None}
    assert out, f"no {metric} records"
    return out


def profiles_by_seed(records: list[dict], metric: str) -> dict[int, list[float]]:
    out: dict[int, dict[int, float]] = {}
    for r in records:
        if r["metric"] == metric and r["index"] is not None:
            out.setdefault(r["seed"], {})[r["index"]] = r["value"]
    return {seed: [v[i] for i in sorted(v)] for seed, v in out.items()}


KIND = {"seed-plain": "plain", "seed-residual": "residual"}


# -- 1. shared weights: the same numbers -----------------------------------------------------------
@pytest.mark.parametrize("depth", [5, 10, 20])
@pytest.mark.parametrize("variant", ["seed-plain", "seed-residual"])
def test_gradient_profile_matches_numpy_backward(seed_run, variant, depth):
    seeds = (0, 1, 2)
    cell = make_cell(seed_run, "gradient-flow", variant, depth, seeds)
    assert cell.dtype == torch.float64, "the gradient-flow experiment runs in float64"
    assert cell.options["norm_combine"] == "sum" and cell.options["ratio_eps"] == RATIO_EPS
    records = expand(gradient_flow.run(cell))
    profiles, ratios = profiles_by_seed(records, "grad_norm"), by_seed(records, "grad_ratio")
    kind = KIND[variant]
    for seed in seeds:
        oracle = copy_weights(kind, cell.build(seed), depth, cell.width)
        data = cell.normal(seed, STREAM_DATA, 2 * cell.batch).double().numpy()
        x, t = data[: cell.batch], data[cell.batch:]
        expected = np_gradient_profile(kind, oracle, x, t)
        assert len(expected) == (depth if kind == "plain" else depth // 2)
        np.testing.assert_allclose(profiles[seed], expected, rtol=1e-9, atol=0,
                                   err_msg=f"{variant} depth {depth} seed {seed}: grad_norm profile")
        assert ratios[seed] == pytest.approx(np_grad_ratio(expected), rel=1e-9, abs=0)


@pytest.mark.parametrize("depth", [2, 5, 10, 20])
@pytest.mark.parametrize("variant", ["seed-plain", "seed-residual"])
def test_identity_mse_init_matches_numpy_forward(seed_run, variant, depth):
    seeds = (0, 1, 2)
    # mse_init is the evaluation before the first training step: steps = 0 measures just that
    cell = make_cell(seed_run, "identity", variant, depth, seeds, steps=0)
    assert cell.dtype == torch.float32 and cell.width == 32 and cell.options["eval_batch"] == 500
    mse = by_seed(expand(identity.run(cell)), "mse_init")
    kind = KIND[variant]
    for seed in seeds:
        oracle = copy_weights(kind, cell.build(seed), depth, cell.width)
        x = cell.normal(seed, STREAM_EVAL, cell.options["eval_batch"]).double().numpy()
        # skipbench computes in float32, the oracle in float64 from the same float32 numbers
        assert mse[seed] == pytest.approx(np_identity_mse(kind, oracle, x), rel=1e-5), f"{variant} depth {depth} seed {seed}"


@pytest.mark.parametrize("variant", sorted(STUDY_VARIANTS))
def test_study_blocks_match_numpy_forward(seed_run, variant):
    """Experiment 3's blocks compute what the protocol says (same weights, same input)."""
    experiment, depth, _, _, layout = STUDY_VARIANTS[variant]
    cell = make_cell(seed_run, experiment, variant, depth, (0, 1), measurement="params")
    for seed in cell.seeds:
        net = cell.build(seed)
        arrays, forward = np_study_block(layout, np.random.default_rng(seed), cell.width)
        theirs = dict(net.named_parameters())
        assert len(theirs) == len(arrays)
        mats = [p for p in theirs.values() if p.dim() >= 2]
        vecs = [p for p in theirs.values() if p.dim() == 1]
        if layout == "highway":  # the transform H and the gate T, told apart by name
            arrays["W_H"] = theirs["blocks.0.transform.weight"].detach().double().numpy()
            arrays["W_T"] = theirs["blocks.0.gate.weight"].detach().double().numpy()
            assert np.all(theirs["blocks.0.transform.bias"].detach().numpy() == 0)
            assert np.all(theirs["blocks.0.gate.bias"].detach().numpy() == np.float32(STUDY_GATE_BIAS))
        else:
            names = [k for k in arrays if k.startswith("W")]
            assert [tuple(m.shape) for m in mats] == [arrays[k].shape for k in names]
            for k, m in zip(names, mats):
                arrays[k] = m.detach().double().numpy()
            assert all(np.all(v.detach().numpy() == 0) for v in vecs)
        x = cell.normal(seed, STREAM_DATA, cell.batch)
        with torch.no_grad():
            out = net(x).double().numpy()
        np.testing.assert_allclose(out, forward(x.double().numpy()), rtol=1e-5, atol=1e-5)


def test_highway_gate_mean_matches_numpy_gate(seed_run):
    cell = make_cell(seed_run, "variants-highway", "seed-highway", 1, (0, 1, 2), measurement="probes")
    assert cell.options["rows"] == 100 and cell.options["inputs"] == "normal"
    means = by_seed(expand(probes.run(cell)), "gate_mean")
    for seed in cell.seeds:
        theirs = dict(cell.build(seed).named_parameters())
        arrays = {"W_H": theirs["blocks.0.transform.weight"].detach().double().numpy(), "b_H": np.zeros(cell.width),
                  "W_T": theirs["blocks.0.gate.weight"].detach().double().numpy(),
                  "b_T": np.full(cell.width, STUDY_GATE_BIAS)}
        # the probe's N(0, 1) inputs are the seed's data stream, as for gradient flow
        x = cell.normal(seed, STREAM_DATA, cell.options["rows"]).double().numpy()
        assert means[seed] == pytest.approx(float(np_highway(arrays, x)[1].mean()), rel=1e-5)


# -- 2. independent weights: the same distributions ----------------------------------------------
def numpy_seeds(kind: str, depth: int, width: int, rows: int, targets: bool):
    """(network, inputs, targets) drawn with NumPy's own generator for N_SEEDS fixed seeds."""
    for seed in range(N_SEEDS):
        rng = np.random.default_rng(seed)
        net = (np_plain if kind == "plain" else np_residual)(rng, depth, width)
        x = rng.standard_normal((rows, width))
        yield net, x, (rng.standard_normal((rows, width)) if targets else None)


@pytest.mark.parametrize("depth", [10, 20])
@pytest.mark.parametrize("variant", ["seed-plain", "seed-residual"])
def test_grad_ratio_distribution_matches_numpy(seed_run, variant, depth):
    cell = make_cell(seed_run, "gradient-flow", variant, depth, range(N_SEEDS))
    theirs = np.log(list(by_seed(expand(gradient_flow.run(cell)), "grad_ratio").values()))
    assert len(theirs) == N_SEEDS
    kind = KIND[variant]
    ours = np.log([np_grad_ratio(np_gradient_profile(kind, net, x, t))
                   for net, x, t in numpy_seeds(kind, depth, cell.width, cell.batch, True)])
    assert_medians_agree(ours, theirs, f"log grad_ratio, {variant} depth {depth}")


@pytest.mark.parametrize("depth", [5, 10])
@pytest.mark.parametrize("variant", ["seed-plain", "seed-residual"])
def test_mse_init_distribution_matches_numpy(seed_run, variant, depth):
    cell = make_cell(seed_run, "identity", variant, depth, range(N_SEEDS), steps=0)
    # medians commute with the logarithm; in log space the spread is closer to normal, which the
    # standard error of the median assumes
    theirs = np.log(list(by_seed(expand(identity.run(cell)), "mse_init").values()))
    assert len(theirs) == N_SEEDS
    kind = KIND[variant]
    ours = np.log([np_identity_mse(kind, net, x)
                   for net, x, _ in numpy_seeds(kind, depth, cell.width, cell.options["eval_batch"], False)])
    assert_medians_agree(ours, theirs, f"log mse_init, {variant} depth {depth}")


# -- 3. the study's exact facts ---------------------------------------------------------------------
def published_entries() -> list[dict]:
    return tomllib.loads(PROFILE_TOML.read_text())["published"]


@pytest.mark.parametrize("variant", sorted(STUDY_VARIANTS))
def test_study_counts_and_widths(seed_run, variant):
    experiment, depth, study_weights, study_width, layout = STUDY_VARIANTS[variant]
    # the profile publishes the study's numbers for this cell
    published = {p["metric"]: p["value"] for p in published_entries() if p["variant"] == variant
                 and p["experiment"] == experiment and p["depth"] == depth}
    assert published["weights"] == study_weights and published["out_width"] == study_width

    cell = make_cell(seed_run, experiment, variant, depth, (0,), measurement="params")
    measured = {r["metric"]: r["value"] for r in params.run(cell) if r["index"] is None}

    arrays, forward = np_study_block(layout, np.random.default_rng(0), cell.width)
    np_weights = sum(a.size for a in arrays.values() if a.ndim >= 2)
    np_params = sum(a.size for a in arrays.values())
    np_width = forward(np.random.default_rng(1).standard_normal((cell.batch, cell.width))).shape[1]

    assert np_weights == study_weights and np_width == study_width
    assert measured["weights"] == study_weights
    assert measured["out_width"] == study_width
    assert measured["params"] == np_params  # biases too, its own column


def gate_mean_expectation(rows: int, width: int, gate_bias: float, rng: np.random.Generator) -> float:
    """E[mean of T] for a fresh highway layer on N(0, 1) inputs. Given an input row x, each unit
    of W_T x + b_T is N(b_T, s^2) with s^2 = Var(W_T) ||x||^2 = ||x||^2 / width, so a row's
    expected gate is E[sigmoid(Z)], Z ~ N(b_T, s^2), done by Gauss-Hermite quadrature; the rows'
    ||x||^2 are averaged over by Monte-Carlo (chi-squared with `width` degrees of freedom)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # probabilists' Hermite: weight e^{-z^2/2}
    weights = weights / weights.sum()
    s = np.sqrt((rng.standard_normal((20_000, width)) ** 2).sum(axis=1) / width)
    return float((sigmoid(gate_bias + s[:, None] * nodes[None, :]) @ weights).mean())


def test_highway_gate_mean_is_the_studys(seed_run):
    cell = make_cell(seed_run, "variants-highway", "seed-highway", 1, range(N_SEEDS), measurement="probes")
    assert cell.options["rows"] == 100
    means = np.array(list(by_seed(expand(probes.run(cell)), "gate_mean").values()))
    assert len(means) == N_SEEDS
    median = float(np.median(means))

    # the published 0.154 is ONE draw: it differs from the median by one seed's spread (robust
    # SD = IQR / 1.349) plus the median's own Monte-Carlo error
    q1, q3 = np.percentile(means, [25, 75])
    one_draw = math.hypot((q3 - q1) / 1.349, median_se(means))
    assert abs(median - STUDY_GATE_MEAN) <= AGREEMENT_SIGMAS * one_draw, (median, one_draw)

    # the theory: E[sigmoid(Z)], Z ~ N(-2, ||x||^2 / 32); its quadrature and Monte-Carlo error is
    # ~1e-5, far below the median's
    expected = gate_mean_expectation(cell.options["rows"], cell.width, STUDY_GATE_BIAS, np.random.default_rng(2024))
    assert abs(median - expected) <= AGREEMENT_SIGMAS * median_se(means), (median, expected, median_se(means))
    assert abs(expected - STUDY_GATE_MEAN) <= AGREEMENT_SIGMAS * one_draw, (expected, STUDY_GATE_MEAN)


# -- 4. end to end: the real CLI ---------------------------------------------------------------------
def _simple_table(lines: list[str]) -> list[dict[str, str]]:
    """Rows of a `simple` tabulate table (header, dashes, rows up to a blank line), split at the
    column spans its dashes line gives."""
    header, dashes = lines[0], lines[1]
    spans, pos = [], 0
    for chunk in dashes.split(" "):
        if chunk:
            spans.append((pos, pos + len(chunk)))
        pos += len(chunk) + 1
    names = [header[a:b].strip() for a, b in spans]
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        cells = [line[a:(spans[k + 1][0] if k + 1 < len(spans) else None)].strip() for k, (a, _) in enumerate(spans)]
        rows.append(dict(zip(names, cells)))
    return rows


def _table_after(stdout: str, title: str) -> list[dict[str, str]]:
    """Rows of the `simple` tabulate table following the line containing `title`; a table split to
    fit the terminal ("(part i of n: ...)" before each part) is joined back, part by part."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line) + 1
    if not lines[start].startswith("(part "):
        return _simple_table(lines[start:])
    rows, n = [], int(lines[start].split(" of ")[1].split(":")[0])
    for _ in range(n):
        part = _simple_table(lines[start + 1:])
        rows = part if not rows else [{**a, **b} for a, b in zip(rows, part)]
        start += 1 + 2 + len(part) + 1  # the part's line, header and dashes, rows, the blank line
    return rows


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_cli_seed_profile_end_to_end(run_cli, tmp_path):
    profile = tomllib.loads(PROFILE_TOML.read_text())
    out = tmp_path / "run"
    # one torch thread: as fast alone on a small machine, and immune to the many-fold slowdown of
    # OpenMP threads oversubscribing the cores when other runs share the machine
    proc = run_cli("run", "--profile", "seed", "--seeds", "8", "--threads", "1", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = _table_after(proc.stdout, "published values against the measured distributions")
    assert len(rows) == len(profile["published"])
    placement = "published value in the measured distribution"
    for pub in profile["published"]:
        match = [r for r in rows if r["experiment"] == pub["experiment"] and r["variant"] == pub["variant"]
                 and r["depth"] == str(pub["depth"]) and r["metric"] == pub["metric"]]
        assert len(match) == 1, f"no row for {pub}"
        row = match[0]
        assert _number(row["published"]) == pytest.approx(pub["value"], rel=0.01)  # shown to 3 digits
        _number(row["measured median"])  # measured, a number
        assert row[placement], row
        if pub["metric"] in ("weights", "out_width"):
            assert row[placement] == "exact", row
        for metric in pub.get("also", []):
            assert row["also measured"].startswith(f"{metric} "), row

    for figure in profile["figures"]:
        for ext in ("png", "svg"):
            path = out / f"{figure['name']}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
        assert "<svg" in (out / f"{figure['name']}.svg").read_text()[:2000]
        image = matplotlib.image.imread(out / f"{figure['name']}.png")
        assert image.ndim == 3 and image.shape[0] >= 100 and image.shape[1] >= 100, image.shape
        colours = np.unique(image.reshape(-1, image.shape[2]), axis=0)
        assert len(colours) > 16, f"{figure['name']}.png is nearly blank ({len(colours)} colours)"

    with open(out / "results.csv", newline="") as f:
        experiments = {row["experiment"] for row in csv.DictReader(f)}
    assert {e["name"] for e in profile["experiments"]} <= experiments
