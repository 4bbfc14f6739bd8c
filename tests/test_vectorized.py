"""Seeds run together (batched.py: stacked weights under vmap) give each seed's own records.

The vectorized path of gradient-flow and identity is checked against the per-seed loop
(``vectorize=False``) record for record; the stacked weights against each seed's own build; the
fallback for blocks that cannot run under vmap; chunking; divergence of one seed; independence of
seeds; and float64 networks.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import conftest
from skipbench.measurements import batched, gradient_flow, identity, probes, replay
from skipbench.registry import load_registry
from skipbench.specs import BlockBuilder, Variant

BUILTINS = ["plain", "residual", "dense", "highway"]
SHORT_TRAINING = dict(steps=20, eval_every=5, eval_batch=16)
MEASURE = {"gradient-flow": gradient_flow.run, "identity": identity.run}


def make_cell(registry, name, variant, depth, width=8, batch=6, seeds=(0, 1, 2), **options):
    """conftest's make_cell with this file's small default sizes and three seeds."""
    return conftest.make_cell(registry, name, variant, depth, width, batch, seeds, **options)


def cell_options(name):
    return SHORT_TRAINING if name == "identity" else {}


def key(r):
    return (r["metric"], r["index"], r["seed"], r["unit"], r.get("status"))


def assert_same_records(got, expected, rel=1e-6):
    """Same records in the same order (metric, index, seed, unit, status); values equal within
    `rel` (non-finite values must be the same non-finite value, undefined ones both None)."""
    assert [key(r) for r in got] == [key(r) for r in expected]
    for g, e in zip(got, expected):
        a, b = g["value"], e["value"]
        if b is None or a is None:
            assert a is None and b is None and g.get("error") == e.get("error"), (g, e)
        elif isinstance(b, float) and not math.isfinite(b):
            assert isinstance(a, float) and (math.isnan(a) if math.isnan(b) else a == b), (g, e)
        else:
            assert a == pytest.approx(b, rel=rel, abs=1e-12), (g, e)


@pytest.fixture
def stack_spy(monkeypatch):
    """Records whether each batched.try_stack call could vectorize (True) or not (False)."""
    outcomes = []
    original = batched.try_stack

    def spy(*args, **kwargs):
        stacked = original(*args, **kwargs)
        outcomes.append(stacked is not None)
        return stacked

    monkeypatch.setattr(batched, "try_stack", spy)
    return outcomes


# -- blocks for the fallback, divergence and state tests ------------------------------------------
class ItemBlock(nn.Module):
    """x + fc(x) scaled by a Python float read with .item(): cannot run under vmap."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(x) / (1.0 + x.abs().max().item())


class BranchBlock(nn.Module):
    """Python control flow on a tensor's value: cannot run under vmap."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        if x.sum() > 0:
            return x + self.fc(x).relu()
        return x - self.fc(x).relu()


class DropoutBlock(nn.Module):
    """Random draws in the forward pass: under vmap they would depend on the chunk's other seeds."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return x + self.drop(self.fc(x))


class CountingBlock(nn.Module):
    """Updates its own buffer in place on every forward pass, and its output depends on it."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return x + self.fc(x) / self.calls


class CubeGain(nn.Module):
    """y = (1 + a^3) x with a ~ U(0, 1) per seed. Learning the identity with SGD drives a to 0,
    and diverges when a starts large: a -> a - 6 lr m2 a^5 (m2 = mean x^2 ~ 1) overshoots once
    6 lr a^4 > 2, so which seeds diverge depends only on their own draw of a."""

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Parameter(torch.rand(()))

    def forward(self, x):
        return x * (1 + self.a ** 3)


class ItemInit(nn.Module):
    """Construction reads a drawn value back into Python (.item()): a replay of another seed's
    build would reuse that seed's number."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        with torch.no_grad():
            self.fc.weight.div_(self.fc.weight.abs().max().item())

    def forward(self, x):
        return x + self.fc(x).relu()


TEST_BLOCKS = {"t-item": ItemBlock, "t-branch": BranchBlock, "t-dropout": DropoutBlock,
               "t-counting": CountingBlock, "t-cube": CubeGain, "t-item-init": ItemInit}

DROPIN = '''\
"""A drop-in plugin whose block reads a value with .item() in its forward: not vmap-able."""
from torch import nn

import skipbench


class GatedByMax(nn.Module):
    def __init__(self, dim, scale):
        super().__init__()
        self.fc1, self.fc2, self.scale = nn.Linear(dim, dim), nn.Linear(dim, dim), scale

    def forward(self, x):
        peak = x.abs().max().item()
        return x + self.scale * self.fc2(self.fc1(x).relu()) / (1.0 + peak)


@skipbench.hookimpl
def skipbench_register_builders():
    yield skipbench.BlockBuilder("max-gated", GatedByMax, (skipbench.Param("scale", "float", 0.5),),
                                 layers_per_block=2, skip_kind="scaled", description="reads .item()")


@skipbench.hookimpl
def skipbench_register_variants():
    yield skipbench.Variant("max-gated", "max-gated", params={"scale": 0.75})
'''


@pytest.fixture(scope="module")
def test_registry():
    """A registry of its own (the shared one stays untouched) with the test blocks above."""
    reg = load_registry(entrypoints=False, env=False, pyproject=None)
    for name, cls in TEST_BLOCKS.items():
        reg.add_builder(BlockBuilder(name, cls, (), description=cls.__doc__.splitlines()[0]))
        reg.add_variant(Variant(name, name, network={"head": "none"}))
    return reg


@pytest.fixture(scope="module")
def dropin_registry(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vmap-dropins")
    (directory / "maxgated.py").write_text(DROPIN)
    reg = load_registry(plugin_dirs=[str(directory)], entrypoints=False, env=False, pyproject=None)
    assert "max-gated" in reg.variants, [i.as_dict() for i in reg.plugins.infos]
    return reg


# -- vectorized == per-seed loop --------------------------------------------------------------------
@pytest.mark.parametrize("depth", [2, 5])
@pytest.mark.parametrize("variant", BUILTINS)
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_vectorized_equals_the_per_seed_loop(registry, stack_spy, name, variant, depth):
    cell = make_cell(registry, name, variant, depth, **cell_options(name))
    vectorized = MEASURE[name](cell)
    assert stack_spy == [True]  # the built-ins run under vmap: this is not the loop twice
    loop = MEASURE[name](cell, vectorize=False)
    assert stack_spy == [True]  # vectorize=False never tries
    assert_same_records(vectorized, loop)
    assert {r["seed"] for r in vectorized} == set(cell.seeds)
    if name == "identity":
        steps = [r["index"] for r in vectorized if r["metric"] == "loss_curve" and r["seed"] == 0]
        assert steps == list(range(0, SHORT_TRAINING["steps"] + 1, SHORT_TRAINING["eval_every"]))


@pytest.mark.parametrize("variant", BUILTINS)
@pytest.mark.parametrize("traced", [True, False])
def test_each_seeds_weights_are_its_own_build(registry, variant, traced):
    seeds = (4, 0, 9)
    cell = make_cell(registry, "gradient-flow", variant, 4, seeds=seeds)
    stacked = batched.try_stack(cell, seeds, traced, lambda widths: (
        (torch.zeros(len(seeds), 2, cell.width), batched.zero_deltas(cell, len(seeds), 2, widths)) if traced
        else (torch.zeros(len(seeds), 2, cell.width),)))
    assert stacked is not None and stacked.seeds == seeds
    prefix = "net." if traced else ""
    builds = [cell.build(seed) for seed in seeds]
    assert stacked.widths == builds[0].widths
    own = builds[0].state_dict()
    assert set(stacked.params) | set(stacked.buffers) == {prefix + k for k in own}
    for j, net in enumerate(builds):
        for name, tensor in net.state_dict().items():
            stored = stacked.params.get(prefix + name, stacked.buffers.get(prefix + name))
            assert stored.shape == (len(seeds), *tensor.shape)
            assert torch.equal(stored[j], tensor), (seeds[j], name)
    weights = [n for n, p in builds[0].named_parameters() if p.dim() >= 2]
    assert weights and all(not torch.equal(stacked.params[prefix + n][0], stacked.params[prefix + n][1])
                           for n in weights)  # different seeds, different draws


# -- probes -------------------------------------------------------------------------------------------
class FloatProbe(nn.Module):
    """Reports its probe as a Python number: cannot come back from vmap with a seed dimension."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.last = float("nan")

    def forward(self, x):
        y = self.fc(x).relu()
        self.last = y
        return x + y

    def skipbench_probes(self):
        return {"active": float((self.last > 0).float().mean())}


@pytest.mark.parametrize("inputs", ["normal", "uniform"])
def test_probes_of_all_seeds_at_once_equal_the_per_seed_loop(registry, stack_spy, inputs):
    cell = make_cell(registry, "probes", "highway", 3, seeds=(0, 5, 7), rows=40, histogram_bins=8, inputs=inputs)
    got = probes.run(cell)
    assert stack_spy == [True]
    assert {r["metric"] for r in got} == {"gate_mean", "gate_hist"}
    assert_same_records(got, probes.run(cell, vectorize=False))
    assert all(r["bin_lo"] == e["bin_lo"] for r, e in zip(got, probes.run(cell, vectorize=False)) if "bin_lo" in r)


def test_probes_given_as_python_numbers_fall_back_to_the_loop(stack_spy):
    reg = load_registry(entrypoints=False, env=False, pyproject=None)
    reg.add_builder(BlockBuilder("float-probe", FloatProbe, (), probes=("active",), description="float probe"))
    cell = make_cell(reg, "probes", Variant("fp", "float-probe", network={"head": "none"}), 2, seeds=(0, 1), rows=30)
    got = probes.run(cell)
    assert stack_spy == [False]
    means = [r["value"] for r in got if r["metric"] == "active" and r["index"] is None]
    assert len(means) == 2 and all(0 < m < 1 for m in means) and means[0] != means[1]


# -- builds replayed for the other seeds (replay.py) ------------------------------------------------
@pytest.mark.parametrize("variant", BUILTINS + ["dense-efficient", "float64"])
def test_replayed_builds_are_each_seeds_own_build(registry, variant):
    """The packaged variants' builds replay exactly: every seed's parameters, bit for bit."""
    v = variant64(registry, "residual") if variant == "float64" else registry.variants[variant]
    cell = make_cell(registry, "gradient-flow", v, 6, seeds=(3, 1, 4, 1000))
    cell.widths
    _, recorded = replay.BuildReplay.record(lambda: cell.build(3))
    for seed in cell.seeds:
        assert replay.same_state(recorded.run(seed), replay.state(cell.build(seed))), seed
    net, states = batched.seed_states(cell, cell.seeds)
    assert cell._replay  # checked against a real build, and kept
    assert all(replay.same_state(st, replay.state(cell.build(s))) for s, st in zip(cell.seeds, states))


def test_a_build_that_reads_its_draws_into_python_is_not_replayed(test_registry, stack_spy):
    """A replay would reuse the recorded seed's Python number: the check against a real build
    of another seed catches it, and every seed is built."""
    cell = make_cell(test_registry, "gradient-flow", "t-item-init", 3, seeds=(0, 1, 2))
    cell.widths
    _, recorded = replay.BuildReplay.record(lambda: cell.build(0))
    assert not replay.same_state(recorded.run(1), replay.state(cell.build(1)))  # the check matters
    _, states = batched.seed_states(cell, cell.seeds)
    assert cell._replay is False
    assert all(replay.same_state(st, replay.state(cell.build(s))) for s, st in zip(cell.seeds, states))
    got = gradient_flow.run(cell)
    assert stack_spy == [True]  # still vectorized: only the build is not replayed
    assert_same_records(got, gradient_flow.run(cell, vectorize=False))


# -- blocks that cannot run under vmap ----------------------------------------------------------------
@pytest.mark.parametrize("variant", ["t-item", "t-branch", "t-dropout"])
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_unvectorizable_blocks_fall_back_to_the_loop(test_registry, stack_spy, name, variant):
    cell = make_cell(test_registry, name, variant, 3, seeds=(0, 1, 2, 3), **cell_options(name))
    got = MEASURE[name](cell)
    assert stack_spy == [False]
    loop = MEASURE[name](cell, vectorize=False)
    assert_same_records(got, loop, rel=0)  # the fallback is the loop: bit for bit
    assert {r["seed"] for r in got} == set(cell.seeds)
    assert all(r["value"] is None or math.isfinite(r["value"]) for r in got)
    alone = MEASURE[name](make_cell(test_registry, name, variant, 3, seeds=(2,), **cell_options(name)))
    assert_same_records(alone, [r for r in got if r["seed"] == 2], rel=0)


@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_dropin_block_reading_item_falls_back(dropin_registry, stack_spy, name):
    cell = make_cell(dropin_registry, name, "max-gated", 4, seeds=(5, 6, 7), **cell_options(name))
    got = MEASURE[name](cell)
    assert stack_spy == [False]
    assert_same_records(got, MEASURE[name](cell, vectorize=False), rel=0)
    per_block = [r for r in got if r["metric"] in ("grad_norm", "loss_curve")]
    assert per_block and all(r["value"] is not None and math.isfinite(r["value"]) for r in per_block)


@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_blocks_updating_their_own_buffers_match_the_loop(test_registry, stack_spy, name):
    """Buffers are stacked per seed; the vmap probe must not count as a forward pass."""
    cell = make_cell(test_registry, name, "t-counting", 3, seeds=(0, 1, 2), **cell_options(name))
    got = MEASURE[name](cell)
    assert stack_spy == [True]
    assert_same_records(got, MEASURE[name](cell, vectorize=False))


# -- chunking ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["residual", "dense"])
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_chunks_do_not_change_the_records(registry, monkeypatch, name, variant):
    seeds = (0, 1, 2, 3, 4)
    cell = make_cell(registry, name, variant, 4, seeds=seeds, **cell_options(name))
    whole = MEASURE[name](cell)
    rows = cell.batch if name == "gradient-flow" else max(cell.batch, cell.options["eval_batch"])
    per_seed = rows * sum(cell.build(seeds[0]).widths)
    assert [len(c) for c in batched.chunks(cell, rows)] == [len(seeds)]
    for limit, sizes in ((2 * per_seed, [2, 2, 1]), (1, [1] * len(seeds))):
        monkeypatch.setattr(batched, "MAX_ELEMENTS", limit)
        chunks = list(batched.chunks(cell, rows))
        assert [len(c) for c in chunks] == sizes
        assert tuple(s for c in chunks for s in c) == seeds
        calls = []
        original = batched.try_stack
        monkeypatch.setattr(batched, "try_stack", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
        assert_same_records(MEASURE[name](cell), whole)
        assert calls == chunks  # one vectorized pass per chunk
        monkeypatch.setattr(batched, "try_stack", original)


# -- divergence and independence -------------------------------------------------------------------------
def test_a_diverging_seed_stops_only_its_own_curve(test_registry, stack_spy):
    seeds, steps = tuple(range(8)), 10
    opts = dict(steps=steps, eval_every=1, eval_batch=16, optimizer="sgd", lr=1.0)
    cell = make_cell(test_registry, "identity", "t-cube", 1, seeds=seeds, **opts)
    recs = identity.run(cell)
    assert stack_spy == [True]
    curves = {s: [(r["index"], r["value"]) for r in recs if r["metric"] == "loss_curve" and r["seed"] == s] for s in seeds}
    diverged = {s for s, c in curves.items() if not math.isfinite(c[-1][1])}
    kept = set(seeds) - diverged
    assert diverged and kept, curves
    for s in diverged:  # stops at its first non-finite evaluation, which is its result
        values = [v for _, v in curves[s]]
        assert len(values) < steps + 1 and all(math.isfinite(v) for v in values[:-1])
        [trained] = [r for r in recs if r["metric"] == "mse_trained" and r["seed"] == s]
        assert not math.isfinite(trained["value"])
    for s in kept:  # the others train on, every step
        assert [i for i, _ in curves[s]] == list(range(steps + 1))
        assert all(math.isfinite(v) for _, v in curves[s]) and curves[s][-1][1] <= curves[s][0][1]
    # which seeds diverge follows from their own initial gain a alone (see CubeGain)
    gain = {s: cell.build(s).blocks[0].a.item() for s in seeds}
    assert min(gain[s] for s in diverged) > max(gain[s] for s in kept)
    assert_same_records(recs, identity.run(cell, vectorize=False))
    # the diverged seeds' NaN weights never leak into the others: the same without them
    alone = identity.run(make_cell(test_registry, "identity", "t-cube", 1, seeds=sorted(kept), **opts))
    assert_same_records(alone, [r for r in recs if r["seed"] in kept])


def test_a_nonfinite_block_at_initialization_stops_only_its_seed(registry, stack_spy):
    """A block that outputs inf for some seeds only (its own draw decides)."""

    class InfForSome(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, dim)
            self.register_buffer("blow", (torch.rand(()) < 0.3).to(torch.float32))

        def forward(self, x):
            return self.fc(x) + x * torch.where(self.blow > 0, torch.inf, 0.0)

    reg = load_registry(entrypoints=False, env=False, pyproject=None)
    reg.add_builder(BlockBuilder("inf-some", InfForSome))
    variant = Variant("inf-some", "inf-some", network={"head": "none"})
    seeds = tuple(range(8))
    cell = make_cell(reg, "identity", variant, 1, seeds=seeds, **SHORT_TRAINING)
    blown = {s for s in seeds if cell.build(s).blocks[0].blow.item()}
    assert blown and blown != set(seeds)
    recs = identity.run(cell)
    assert stack_spy == [True]
    for s in seeds:
        curve = [r for r in recs if r["metric"] == "loss_curve" and r["seed"] == s]
        if s in blown:
            assert len(curve) == 1 and not math.isfinite(curve[0]["value"])
        else:
            assert len(curve) == SHORT_TRAINING["steps"] // SHORT_TRAINING["eval_every"] + 1
            assert all(math.isfinite(r["value"]) for r in curve)
    assert_same_records(recs, identity.run(cell, vectorize=False))


@pytest.mark.parametrize("variant", BUILTINS)
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_a_seeds_records_do_not_depend_on_the_other_seeds(registry, name, variant):
    many = MEASURE[name](make_cell(registry, name, variant, 4, seeds=range(8), **cell_options(name)))
    alone = MEASURE[name](make_cell(registry, name, variant, 4, seeds=(3,), **cell_options(name)))
    assert_same_records(alone, [r for r in many if r["seed"] == 3])
    other = [r for r in many if r["seed"] == 4 and r["metric"] in ("grad_norm", "mse_init")]
    assert [r["value"] for r in other] != [r["value"] for r in alone if r["metric"] in ("grad_norm", "mse_init")]


@pytest.mark.parametrize("batch, width", [(4, 8), (3, 5)])
def test_training_inputs_are_each_seeds_own_stream_whatever_the_block(registry, monkeypatch, batch, width):
    monkeypatch.setattr(identity, "DRAW_ELEMENTS", 3 * batch * width)  # blocks of 3 steps: 7 steps need 3 blocks
    cell = make_cell(registry, "identity", "plain", 2, width=width, batch=batch, seeds=(5, 6))
    many = torch.stack(list(identity._batches(cell, (5, 6), 7)))
    alone = torch.stack(list(identity._batches(cell, (6,), 7)))
    assert many.shape == (7, 2, batch, width) and torch.equal(many[:, 1:], alone)
    assert not torch.equal(many[:, 0], many[:, 1])
    gen = cell.generator(6, identity.STREAM_TRAIN)
    step_by_step = torch.stack([torch.randn(batch, width, generator=gen) for _ in range(7)])
    # torch's CPU sampler fills blocks of 16: whole blocks draw as steps would, a tail does not
    assert torch.equal(alone[:, 0], step_by_step) == (batch * width % 16 == 0)


# -- float64 ---------------------------------------------------------------------------------------------
def variant64(registry, name):
    base = registry.variants[name]
    return Variant(f"{name}-f64", base.builder, base.params, {**base.network, "dtype": "float64"}, base.tags)


@pytest.mark.parametrize("variant", BUILTINS)
def test_float64_networks_compute_in_float64(registry, stack_spy, variant):
    v64 = variant64(registry, variant)
    cell = make_cell(registry, "gradient-flow", v64, 4)
    net = cell.build(0)
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert cell.normal(0, 0, 3).dtype == torch.float64
    x = torch.stack([cell.normal(s, 1, 2) for s in cell.seeds])
    stacked = batched.try_stack(cell, cell.seeds, True, lambda widths: (x, batched.zero_deltas(cell, 3, 2, widths)))
    assert {p.dtype for p in stacked.params.values()} == {torch.float64}
    out, acts = stacked(x, batched.zero_deltas(cell, 3, 2, stacked.widths))
    assert out.dtype == torch.float64 and all(a.dtype == torch.float64 for a in acts)
    # the weights are the float32 draws, widened: the same network as float32, computed more exactly
    net32 = make_cell(registry, "gradient-flow", variant, 4).build(0)
    for (n64, p64), (n32, p32) in zip(net.named_parameters(), net32.named_parameters()):
        assert n64 == n32 and torch.equal(p64, p32.double())
    for name in ("gradient-flow", "identity"):
        cell = make_cell(registry, name, v64, 4, **cell_options(name))
        stack_spy.clear()
        got = MEASURE[name](cell)
        assert stack_spy == [True]
        assert_same_records(got, MEASURE[name](cell, vectorize=False), rel=1e-12)
        f32 = MEASURE[name](make_cell(registry, name, variant, 4, **cell_options(name)))
        assert_same_records(got, f32, rel=1e-3)  # the same computation, ...
        assert [r["value"] for r in got] != [r["value"] for r in f32]  # ... in another precision


def test_float64_keeps_finite_what_overflows_in_float32(registry):
    """The seed protocol's reason for float64: a post-activation residual net's activations grow
    about 2.4x in squared norm per block, so at 100 layers float32 gradient norms overflow."""
    base = dict(builder="residual", params={"order": "post"})
    nets = {dt: Variant(f"post-{dt}", network={"stem": "linear-relu", "head": "linear", "dtype": dt}, **base)
            for dt in ("float32", "float64")}
    recs = {dt: gradient_flow.run(make_cell(registry, "gradient-flow", v, 100, width=64, batch=16, seeds=(0,)))
            for dt, v in nets.items()}
    assert any(r["value"] is not None and not math.isfinite(r["value"]) for r in recs["float32"])
    assert all(r["value"] is not None and math.isfinite(r["value"]) for r in recs["float64"])
