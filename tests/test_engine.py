"""The engine: many seeds run as one stack (engine/stack.py) give each seed its own records.

Every path (stacked arithmetic, vmap, the per-seed loop) is checked against the others record
for record; the stacked weights against each seed's own build; replayed builds, and builds that
must not be replayed (their construction reads a random draw into Python); the fallbacks for
blocks that cannot be stacked or vectorized; chunks; a seed alone against the same seed among
others; divergence of one seed; disjoint random streams; and float64 networks.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import conftest
from skipbench import layers
from skipbench.engine import optim, replay, stack, streams
from skipbench.measurements import gradient_flow, identity, probes
from skipbench.registry import load_registry
from skipbench.results import expand
from skipbench.specs import BlockBuilder, Variant

BUILTINS = ["plain", "residual", "dense", "highway"]
SHORT_TRAINING = dict(steps=20, eval_every=5, eval_batch=16)
MODULES = {"gradient-flow": gradient_flow, "identity": identity, "probes": probes}


def make_cell(registry, name, variant, depth, width=8, batch=8, seeds=(0, 1, 2), **options):
    """conftest's make_cell with this file's small default sizes and three seeds (rows x width
    a multiple of 32, see test_a_seeds_records_are_the_same_alone_and_in_any_chunk)."""
    return conftest.make_cell(registry, name, variant, depth, width, batch, seeds, **options)


def cell_options(name):
    return SHORT_TRAINING if name == "identity" else {}


def measure(name, cell, path=None):
    """The measurement's records for the cell (`path` forces the engine's path)."""
    return expand(MODULES[name].run(cell, path))


def paths(records):
    """How the seeds ran (the records' seeds_path, without the reason)."""
    return {r["seeds_path"].split(" ")[0] for r in records}


def key(r):
    return (r["metric"], r["index"], r["seed"], r["unit"], r.get("status"))


def assert_same_records(got, expected, rel=1e-6):
    """Same records in the same order (metric, index, seed, unit, status); values equal within
    `rel` (rel=0: bit for bit; non-finite values must be the same non-finite value, undefined
    ones both None)."""
    assert [key(r) for r in got] == [key(r) for r in expected]
    for g, e in zip(got, expected):
        a, b = g["value"], e["value"]
        if b is None or a is None:
            assert a is None and b is None and g.get("error") == e.get("error"), (g, e)
        elif not math.isfinite(b):
            assert not math.isfinite(a) and (math.isnan(a) if math.isnan(b) else a == b), (g, e)
        elif rel == 0:
            assert a == b, (g, e)
        else:
            assert a == pytest.approx(b, rel=rel, abs=1e-12), (g, e)


def of_seed(records, seed):
    return [r for r in records if r["seed"] == seed]


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


class BranchInit(nn.Module):
    """Construction branches on a random draw: half the seeds start with a zero weight. A replay
    of the recorded seed's build would give every seed that seed's branch."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        if torch.rand(()) < 0.5:
            with torch.no_grad():
                self.fc.weight.zero_()

    def forward(self, x):
        return x + self.fc(x).relu()


def scaled_by_a_draw(read, doc: str) -> type[nn.Module]:
    """A block x + s relu(W x + b) whose scale s its construction reads with `read()`."""

    class ScaledByADraw(nn.Module):
        __doc__ = doc

        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, dim)
            self.scale = read()

        def forward(self, x):
            return x + self.scale * self.fc(x).relu()

    return ScaledByADraw


ListInit = scaled_by_a_draw(lambda: 2.0 if torch.rand(1).tolist()[0] < 0.5 else 1.0,
                            "Construction reads draws with .tolist(), which no aten operation shows.")
NumpyInit = scaled_by_a_draw(lambda: 2.0 if torch.rand(1).numpy()[0] < 0.5 else 1.0,
                             "Construction reads draws with .numpy().")
PythonRandomInit = scaled_by_a_draw(random.random, "Construction draws from Python's global generator (not the seed's stream).")


class DishonestStacked(nn.Module):
    """Declares seed_batched but reduces over every seed at once (a mean over the whole input)."""

    def __init__(self, dim):
        super().__init__()
        from skipbench.layers import Linear

        self.fc = Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(x).relu() - x.mean()


TEST_BLOCKS = {"t-item": ItemBlock, "t-branch": BranchBlock, "t-dropout": DropoutBlock,
               "t-counting": CountingBlock, "t-cube": CubeGain, "t-item-init": ItemInit,
               "t-branch-init": BranchInit, "t-list-init": ListInit, "t-numpy-init": NumpyInit,
               "t-random-init": PythonRandomInit}

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
    reg.add_builder(BlockBuilder("t-dishonest", DishonestStacked, (), seed_batched=True, description="dishonest"))
    reg.add_variant(Variant("t-dishonest", "t-dishonest", network={"head": "none"}))
    return reg


@pytest.fixture(scope="module")
def dropin_registry(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vmap-dropins")
    (directory / "maxgated.py").write_text(DROPIN)
    reg = load_registry(plugin_dirs=[str(directory)], entrypoints=False, env=False, pyproject=None)
    assert "max-gated" in reg.variants, [i.as_dict() for i in reg.plugins.infos]
    return reg


# -- every path gives the same records ----------------------------------------------------------------
@pytest.mark.parametrize("depth", [2, 5])
@pytest.mark.parametrize("variant", BUILTINS + ["dense-efficient"])
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_stacked_arithmetic_equals_vmap_and_the_per_seed_loop(registry, name, variant, depth):
    cell = make_cell(registry, name, variant, depth, **cell_options(name))
    chosen = measure(name, cell)
    assert paths(chosen) == {"stacked"}  # the built-ins declare seed_batched and keep to it
    for path in ("vmap", "loop"):
        other = measure(name, cell, path)
        assert paths(other) == {path}
        assert_same_records(chosen, other)
    assert {r["seed"] for r in chosen} == set(cell.seeds)
    if name == "identity":
        steps = [r["index"] for r in chosen if r["metric"] == "loss_curve" and r["seed"] == 0]
        assert steps == list(range(0, SHORT_TRAINING["steps"] + 1, SHORT_TRAINING["eval_every"]))


@pytest.mark.parametrize("variant", BUILTINS + ["dense-efficient"])
def test_each_seeds_stacked_weights_are_its_own_build(registry, variant):
    seeds = (4, 0, 9)
    cell = make_cell(registry, "gradient-flow", variant, 4, seeds=seeds)
    nets = stack.SeedNets(cell)
    stacked = nets.stack(seeds)
    builds = [cell.build(seed) for seed in seeds]
    assert stacked.widths == builds[0].widths
    own = builds[0].state_dict()
    assert set(stacked.params) | set(stacked.buffers) == set(own)
    for j, net in enumerate(builds):
        for name, tensor in net.state_dict().items():
            stored = stacked.params.get(name, stacked.buffers.get(name))
            assert stored.shape == (len(seeds), *tensor.shape)
            assert torch.equal(stored[j], tensor), (seeds[j], name)
    weights = [n for n, p in builds[0].named_parameters() if p.dim() >= 2]
    assert weights and all(not torch.equal(stacked.params[n][0], stacked.params[n][1]) for n in weights)
    # the stacked network computes each seed's own network's output (batched products may
    # round differently from one seed's F.linear at some shapes: equal to float precision)
    x = cell.normals(seeds, streams.DATA, 5)
    with torch.no_grad():
        out = stacked(x)
        for j, net in enumerate(builds):
            torch.testing.assert_close(out[j], net(x[j]), rtol=1e-5, atol=1e-6)


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
def test_probes_of_stacked_seeds_equal_vmap_and_the_loop(registry, inputs):
    cell = make_cell(registry, "probes", "highway", 3, seeds=(0, 5, 7), rows=40, histogram_bins=8, inputs=inputs)
    got = measure("probes", cell)
    assert paths(got) == {"stacked"}
    assert {r["metric"] for r in got} == {"gate_mean", "gate_hist"}
    for path in ("vmap", "loop"):
        other = measure("probes", cell, path)
        assert_same_records(got, other)
        assert all(r["bin_lo"] == e["bin_lo"] for r, e in zip(got, other) if "bin_lo" in r)


def test_probes_given_as_python_numbers_fall_back_to_the_loop():
    reg = load_registry(entrypoints=False, env=False, pyproject=None)
    reg.add_builder(BlockBuilder("float-probe", FloatProbe, (), probes=("active",), description="float probe"))
    cell = make_cell(reg, "probes", Variant("fp", "float-probe", network={"head": "none"}), 2, seeds=(0, 1), rows=30)
    got = measure("probes", cell)
    assert paths(got) == {"loop"} and "vmap:" in got[0]["seeds_path"]  # says why
    means = [r["value"] for r in got if r["metric"] == "active" and r["index"] is None]
    assert len(means) == 2 and all(0 < m < 1 for m in means) and means[0] != means[1]


# -- builds replayed for the other seeds (replay.py) ------------------------------------------------
@pytest.mark.parametrize("variant", BUILTINS + ["dense-efficient", "float64"])
def test_replayed_builds_are_each_seeds_own_build(registry, variant):
    """The packaged variants' builds replay exactly: every seed's parameters, bit for bit."""
    v = variant64(registry, "residual") if variant == "float64" else registry.variants[variant]
    cell = make_cell(registry, "gradient-flow", v, 6, seeds=(3, 1, 4, 1000))
    nets = stack.SeedNets(cell)
    nets.template
    assert nets._replay is not None and nets.replay_reason == ""
    assert nets._replay.stackable  # every seed's draws in one call, the rest run once on the stack
    assert all(stack.check_replay(nets, s) for s in cell.seeds)
    whole = nets.stacked_state(cell.seeds)
    for j, seed in enumerate(cell.seeds):
        assert replay.same_state({n: t[j] for n, t in whole.items()}, replay.state(cell.build(seed))), seed


@pytest.mark.parametrize("variant, reason", [
    ("t-item-init", "_local_scalar_dense"), ("t-branch-init", "_local_scalar_dense"), ("t-list-init", "tolist"),
    ("t-numpy-init", "numpy"), ("t-random-init", "Python's random module")])
def test_a_build_that_reads_its_draws_into_python_is_never_replayed(test_registry, variant, reason):
    """Decided from what the build did, for every seed: no other seed's weights, ever."""
    seeds = tuple(range(12))
    cell = make_cell(test_registry, "gradient-flow", variant, 3, seeds=seeds)
    nets = stack.SeedNets(cell)
    nets.template
    assert nets._replay is None and reason in nets.replay_reason
    stacked = nets.stack(seeds)
    for j, seed in enumerate(seeds):
        own = replay.state(cell.build(seed))
        assert all(torch.equal(stacked.params[n][j], own[n]) for n in stacked.params), seed
    got = measure("gradient-flow", cell)
    assert paths(got) == {"vmap"}  # still vectorized: only the build is not replayed
    if variant != "t-random-init":  # that block's scale is a fresh Python draw at every build
        assert_same_records(got, measure("gradient-flow", cell, "loop"))


def test_a_build_branching_on_a_draw_gets_each_seeds_own_branch(test_registry):
    """The issue's case: `if torch.rand(()) < 0.5: zero the weight`. Each seed's stacked
    weight is zero exactly when its own build's is, over many seeds and chunkings."""
    seeds = tuple(range(40))
    cell = make_cell(test_registry, "gradient-flow", "t-branch-init", 1, seeds=seeds)
    zero = {s: bool((cell.build(s).blocks[0].fc.weight == 0).all()) for s in seeds}
    assert 5 < sum(zero.values()) < 35
    nets = stack.SeedNets(cell)
    for chunk in stack.chunks(seeds, 1, budget=6):
        stacked = nets.stack(chunk)
        for j, s in enumerate(chunk):
            assert bool((stacked.params["blocks.0.fc.weight"][j] == 0).all()) == zero[s], s
    # and in the records: a block whose weights are all zero has an undefined relative gradient
    rel = {r["seed"]: r for r in measure("gradient-flow", cell) if r["metric"] == "rel_grad_norm"}
    assert {s for s, r in rel.items() if r.get("status") == "undefined"} == {s for s, z in zero.items() if z}


# -- blocks that cannot be stacked or vectorized ----------------------------------------------------------
@pytest.mark.parametrize("variant", ["t-item", "t-branch", "t-dropout"])
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_unvectorizable_blocks_fall_back_to_the_loop_and_say_why(test_registry, name, variant):
    cell = make_cell(test_registry, name, variant, 3, seeds=(0, 1, 2, 3), **cell_options(name))
    got = measure(name, cell)
    assert paths(got) == {"loop"} and "vmap:" in got[0]["seeds_path"]
    assert_same_records(got, measure(name, cell, "loop"), rel=0)  # the fallback is the loop: bit for bit
    assert {r["seed"] for r in got} == set(cell.seeds)
    assert all(r["value"] is None or math.isfinite(r["value"]) for r in got)
    # a dropout block draws from its seed's own forward stream: the same alone
    alone = measure(name, make_cell(test_registry, name, variant, 3, seeds=(2,), **cell_options(name)))
    assert_same_records(alone, of_seed(got, 2), rel=0)


def test_a_block_that_breaks_its_seed_batched_declaration_runs_under_vmap(test_registry):
    cell = make_cell(test_registry, "gradient-flow", "t-dishonest", 3, seeds=(0, 1, 2))
    got = measure("gradient-flow", cell)
    assert paths(got) == {"vmap"} and "differ" in got[0]["seeds_path"]
    assert_same_records(got, measure("gradient-flow", cell, "loop"))
    assert not all(a["value"] == b["value"] for a, b in zip(got, measure("gradient-flow", cell, "stacked")))


@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_dropin_block_reading_item_falls_back(dropin_registry, name):
    cell = make_cell(dropin_registry, name, "max-gated", 4, seeds=(5, 6, 7), **cell_options(name))
    got = measure(name, cell)
    assert paths(got) == {"loop"}
    per_block = [r for r in got if r["metric"] in ("grad_norm", "loss_curve")]
    assert per_block and all(r["value"] is not None and math.isfinite(r["value"]) for r in per_block)


@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_blocks_updating_their_own_buffers_match_the_loop(test_registry, name):
    """Buffers are stacked per seed; choosing the path must not count as a forward pass."""
    cell = make_cell(test_registry, name, "t-counting", 3, seeds=(0, 1, 2), **cell_options(name))
    got = measure(name, cell)
    assert paths(got) == {"vmap"}
    assert_same_records(got, measure(name, cell, "loop"))


# -- chunks, and a seed alone ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["residual", "dense", "highway"])
@pytest.mark.parametrize("name", ["gradient-flow", "identity", "probes"])
def test_a_seeds_records_are_the_same_alone_and_in_any_chunk(registry, monkeypatch, name, variant):
    """Bit for bit, at one thread, where every block's rows x features is a multiple of 32:
    torch's elementwise loops run 2 x 16 floats at a time (AVX-512) and finish a tensor's
    remainder in scalar code, whose transcendental functions round differently; a seed's slab
    of a stack is then computed exactly as alone."""
    if name == "probes" and variant != "highway":
        pytest.skip("only highway blocks have probes")
    seeds = (0, 1, 2, 3, 4)
    cell = make_cell(registry, name, variant, 4, seeds=seeds, **cell_options(name))
    whole = measure(name, cell)
    for budget in (1, 2 * 10**5, 10**6):  # one seed per chunk, a few, all
        monkeypatch.setattr(stack, "CHUNK_BYTES", budget)
        got = measure(name, cell)
        for s in seeds:
            assert_same_records(of_seed(got, s), of_seed(whole, s), rel=0)
    monkeypatch.undo()
    for s in (0, 3):
        alone = measure(name, make_cell(registry, name, variant, 4, seeds=(s,), **cell_options(name)))
        assert_same_records(alone, of_seed(whole, s), rel=0)
    three = [r["value"] for r in of_seed(whole, 3)]
    assert three != [r["value"] for r in of_seed(whole, 4)]


def test_chunks_are_sized_in_bytes_and_even():
    """As few chunks as the budget allows, of even sizes; one chunk fewer where each then
    exceeds the budget by at most CHUNK_SLACK (a chunk's steps cost their overhead whatever its
    size); every seed once, in order."""
    seeds = tuple(range(10))
    assert [len(c) for c in stack.chunks(seeds, 100, budget=1000)] == [10]
    assert [len(c) for c in stack.chunks(seeds, 300, budget=1000)] == [3, 3, 2, 2]  # 4 x 300 > 1100
    assert [len(c) for c in stack.chunks(seeds, 5000, budget=1000)] == [1] * 10
    assert [len(c) for c in stack.chunks(seeds, 105, budget=1000)] == [10]  # 1050 <= 1100
    assert [len(c) for c in stack.chunks(seeds, 115, budget=1000)] == [5, 5]  # 1150 > 1100
    sixty_four = tuple(range(64))  # identity's dense network at depth 20: 31 seeds fit the budget
    assert [len(c) for c in stack.chunks(sixty_four, 604, budget=31 * 604 + 100)] == [32, 32]
    for per_seed in (1, 99, 100, 101, 250, 300, 999, 5000):
        parts = list(stack.chunks(seeds, per_seed, budget=1000))
        assert sum(parts, ()) == seeds and max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all(len(c) * per_seed <= 1000 * (1 + stack.CHUNK_SLACK) or len(c) == 1 for c in parts)


def test_evaluation_sub_batches_depend_on_the_cell_alone(registry):
    one = make_cell(registry, "identity", "dense", 40, seeds=(0,), eval_batch=5000)
    many = make_cell(registry, "identity", "dense", 40, seeds=tuple(range(64)), eval_batch=5000)
    widths = stack.SeedNets(one).widths
    rows = identity.eval_rows(one, widths)
    assert rows == identity.eval_rows(many, widths) and 1 <= rows < 5000


# -- divergence ----------------------------------------------------------------------------------------------
def test_a_diverging_seed_stops_only_its_own_curve(test_registry):
    seeds, steps = tuple(range(8)), 10
    opts = dict(steps=steps, eval_every=1, eval_batch=16, optimizer="sgd", lr=1.0)
    cell = make_cell(test_registry, "identity", "t-cube", 1, seeds=seeds, **opts)
    recs = measure("identity", cell)
    assert paths(recs) == {"vmap"}
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
    assert_same_records(recs, measure("identity", cell, "loop"))
    # the diverged seeds' NaN weights never leak into the others: the same without them
    alone = measure("identity", make_cell(test_registry, "identity", "t-cube", 1, seeds=sorted(kept), **opts))
    assert_same_records(alone, [r for r in recs if r["seed"] in kept])


def test_a_nonfinite_block_at_initialization_stops_only_its_seed(registry):
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
    recs = measure("identity", cell)
    assert paths(recs) == {"vmap"}
    for s in seeds:
        curve = [r for r in recs if r["metric"] == "loss_curve" and r["seed"] == s]
        if s in blown:
            assert len(curve) == 1 and not math.isfinite(curve[0]["value"])
        else:
            assert len(curve) == SHORT_TRAINING["steps"] // SHORT_TRAINING["eval_every"] + 1
            assert all(math.isfinite(r["value"]) for r in curve)
    assert_same_records(recs, measure("identity", cell, "loop"))


# -- random streams ----------------------------------------------------------------------------------------
def test_no_two_streams_of_a_run_share_a_key():
    """Keys are distinct modulo 2**32 (all that torch's CPU generator uses) for every (seed,
    stream) of runs far larger than any profile's."""
    seeds = range(0, 200_000)
    keys = [streams.key(s, k) for s in seeds for k in streams.STREAMS.values()]
    assert len({k % 2**32 for k in keys}) == len(keys)
    at_the_top = [streams.key(s, k) for s in range(streams.MAX_SEED - 1000, streams.MAX_SEED) for k in range(4)]
    assert len({k % 2**32 for k in at_the_top + keys}) == len(at_the_top) + len(keys)
    with pytest.raises(ValueError):
        streams.key(streams.MAX_SEED, streams.DATA)


def test_torch_uses_only_the_low_32_bits_of_a_seed():
    """Why keys must differ modulo 2**32: a 64-bit key would not make streams distinct."""
    a = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, torch.randn(4, generator=torch.Generator().manual_seed(7 + 2**32)))


def test_a_seeds_data_are_no_other_seeds_weights(registry):
    """Before, seed 0's gradient-flow inputs were, draw for draw, seed 1's first weight matrix
    divided by its standard deviation."""
    cell = make_cell(registry, "gradient-flow", "plain", 2, width=16, batch=16, seeds=(0, 1))
    w = cell.build(1).blocks[0][0].weight.detach()
    draws = w.flatten() / math.sqrt(2.0 / 16)
    data = cell.normal(0, streams.DATA, 16).flatten()
    assert not torch.allclose(data[:16], draws[:16])
    corr = np.corrcoef(data.numpy(), draws.numpy())[0, 1]
    assert abs(corr) < 0.2
    first = {(s, k): torch.randn(8, generator=streams.generator(s, k)) for s in range(20) for k in (1, 2, 3)}
    for s in range(20):
        streams.seed_weights(s)
        first[(s, 0)] = torch.randn(8)
    values = [tuple(v.tolist()) for v in first.values()]
    assert len(set(values)) == len(values)


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
def test_float64_networks_compute_in_float64(registry, variant):
    v64 = variant64(registry, variant)
    cell = make_cell(registry, "gradient-flow", v64, 4)
    net = cell.build(0)
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert cell.normal(0, 0, 3).dtype == torch.float64
    stacked = stack.SeedNets(cell).stack(cell.seeds)
    assert {p.dtype for p in stacked.params.values()} == {torch.float64}
    out, inputs, outputs = stacked.trace(cell.normals(cell.seeds, streams.DATA, 2))
    assert out.dtype == torch.float64 and all(a.dtype == torch.float64 for a in inputs + outputs)
    # the weights are the float32 draws, widened: the same network as float32, computed more exactly
    net32 = make_cell(registry, "gradient-flow", variant, 4).build(0)
    for (n64, p64), (n32, p32) in zip(net.named_parameters(), net32.named_parameters()):
        assert n64 == n32 and torch.equal(p64, p32.double())
    for name in ("gradient-flow", "identity"):
        cell = make_cell(registry, name, v64, 4, **cell_options(name))
        got = measure(name, cell)
        assert paths(got) == {"stacked"}
        assert_same_records(got, measure(name, cell, "loop"), rel=1e-12)
        f32 = measure(name, make_cell(registry, name, variant, 4, **cell_options(name)))
        assert_same_records(got, f32, rel=1e-3)  # the same computation, ...
        assert [r["value"] for r in got] != [r["value"] for r in f32]  # ... in another precision


def test_float64_keeps_finite_what_overflows_in_float32(registry):
    """The seed protocol's reason for float64: a post-activation residual net's activations grow
    about 2.4x in squared norm per block, so at 100 layers float32 gradient norms overflow."""
    base = dict(builder="residual", params={"order": "post"})
    nets = {dt: Variant(f"post-{dt}", network={"stem": "linear-relu", "head": "linear", "dtype": dt}, **base)
            for dt in ("float32", "float64")}
    recs = {dt: measure("gradient-flow", make_cell(registry, "gradient-flow", v, 100, width=64, batch=16, seeds=(0,)))
            for dt, v in nets.items()}
    assert any(r["value"] is not None and not math.isfinite(r["value"]) for r in recs["float32"])
    assert all(r["value"] is not None and math.isfinite(r["value"]) for r in recs["float64"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_fused_optimizers_update_bit_for_bit_as_torch_optim(kind, dtype):
    """engine/optim.py calls torch.optim's fused kernels itself (torch.optim's step imports the
    compiler): every parameter equal, bit for bit, to torch.optim.Adam/SGD(fused=True) after
    many steps of large and small gradients, one parameter skipping steps (no gradient)."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(5, 7, 3), (5, 1), (5, 4)]
    ours = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = (optim.Adam if kind == "adam" else optim.SGD)(ours, lr=1e-2)
    opt_theirs = (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(theirs, lr=1e-2, fused=True)
    for step in range(40):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            grad = torch.randn(p.shape, generator=gen, dtype=dtype) * 10.0 ** (step % 5 - 2)
            p.grad, q.grad = (None, None) if i == 2 and step % 3 == 0 else (grad.clone(), grad.clone())
        opt_ours.step()
        opt_theirs.step()
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
    assert all(p.grad is None for p in ours)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    first = torch.randn(shapes[0], generator=torch.Generator().manual_seed(7), dtype=dtype)
    assert not torch.equal(ours[0].detach(), first)  # the steps did move it


def test_a_run_never_imports_the_compiler(tmp_path):
    """Nothing a run measures imports torch._dynamo or torch._inductor (about 1.5 s in every
    worker process): the replay's recorder, the optimizers, the FLOP counter and the memory
    reading all stay clear of them. Every measurement of the quick profile, in this process."""
    code = ("import sys; from skipbench import cli; "
            "status = cli.main(['run', 'plain', 'residual', 'dense', 'highway', '--profile', 'quick', "
            "'--jobs', '1', '--no-figures', '--seeds', '1', '--out', 'run']); "
            "print(status, sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=conftest.clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []"
    measured = {m for m in pq.read_table(tmp_path / "run" / "results.parquet")["measurement"].to_pylist()}
    assert {"identity", "params", "throughput", "gradient-flow"} <= measured


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_a_stacked_linear_layer_gives_each_seed_its_own_linear_layers_weight_gradients(dtype, bias):
    """Every seed's weight and bias gradients of skipbench.layers.linear over stacked weights
    equal, bit for bit, that seed's own F.linear's, in float64 too (where autograd's gradient
    of the batched product baddbmm(b, x, W^T) rounds differently), and the weight's gradient
    comes in the weight's own layout: a training step accumulates it without a copy. Outputs
    and input gradients are the batched products' (equal to float precision: see
    test_each_seeds_stacked_weights_are_its_own_build)."""
    gen = torch.Generator().manual_seed(3)
    for seeds, rows, n_in, n_out in [(4, 100, 64, 64), (3, 32, 352, 32), (2, 100, 800, 16), (5, 7, 5, 11)]:
        x = torch.randn(seeds, rows, n_in, generator=gen, dtype=dtype, requires_grad=True)
        w = torch.randn(seeds, n_out, n_in, generator=gen, dtype=dtype, requires_grad=True)
        b = torch.randn(seeds, n_out, generator=gen, dtype=dtype, requires_grad=True) if bias else None
        g = torch.randn(seeds, rows, n_out, generator=gen, dtype=dtype)
        leaves = [x, w] + ([b] if bias else [])
        y = layers.linear(x, w, b)
        stacked = torch.autograd.grad(y, leaves, g)
        for j in range(seeds):
            own = F.linear(x[j], w[j], b[j] if bias else None)
            expected = torch.autograd.grad(own, leaves, g[j])
            torch.testing.assert_close(y[j], own)
            torch.testing.assert_close(stacked[0][j], expected[0][j])
            for got, want in zip(stacked[1:], expected[1:]):
                assert torch.equal(got[j], want[j])
        assert stacked[1].stride() == w.stride()
    layers.linear(x, w, b).square().sum().backward()
    assert w.grad.stride() == w.stride() and x.grad.shape == x.shape


HEAP_PROBE = """
import resource, sys, gc
import torch
from skipbench import harness
from skipbench.grid import make_run
from skipbench.registry import load_registry

def faults(rounds=5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        torch.ones(48 * 2**20 // 4)  # 48 MB: glibc maps blocks this large afresh, then unmaps them
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
frozen = gc.get_freeze_count()
harness._local_worker_init({}, make_run(load_registry(), "quick", ["plain"]).plans, 1)
faults(8)  # the heap grows until freed blocks are reused (glibc: within a few rounds)
print(plain, faults(), frozen, gc.get_freeze_count())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_worker_keeps_freed_memory_and_freezes_its_imports():
    """A local worker (harness._local_worker_init, in a fresh process) reuses the pages of a
    freed 48 MB tensor for the next one instead of faulting in fresh pages each time, and has
    moved its imports out of the garbage collector's way (engine/heap.py)."""
    result = subprocess.run([sys.executable, "-c", HEAP_PROBE], env=conftest.clean_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plain, kept, frozen_before, frozen_after = map(int, result.stdout.split())
    assert plain >= 5 * 10_000  # 48 MB is about 12,000 pages, faulted in each time
    assert kept < 1_000
    assert frozen_before == 0 and frozen_after > 100_000
