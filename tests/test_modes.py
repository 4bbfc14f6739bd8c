"""Modes, random draws in forward, buffers and scalar parameters, with real blocks and gradients.

Each measurement runs its network in a stated mode (training or eval) and records it; a run can
force one. Blocks drawing with skipbench.layers.seed_uniform run stacked and give each seed its
own forward stream's draws on every path; buffers (BatchNorm's running statistics) are each
seed's own; every parameter of a block gets its gradient-norm record, and learnable scalars
their values at initialization and after training.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

import conftest
from test_engine import DropoutBlock  # nn.Dropout: draws in training (the loop), none in eval (vmap)
from skipbench import grid, layers
from skipbench.engine import stack, streams
from skipbench.measurements import gradient_flow, identity, probes
from skipbench.registry import load_registry
from skipbench.results import expand
from skipbench.specs import BlockBuilder, UsageError, Variant

SHORT_TRAINING = dict(steps=20, eval_every=5, eval_batch=16)
MODULES = {"gradient-flow": gradient_flow, "identity": identity, "probes": probes}


def make_cell(registry, name, variant, depth=3, seeds=(0, 1, 2), mode=None, **options):
    """A cell of width 8 and batch 8 (rows x width a multiple of 32: bit-exact stacks)."""
    if name == "identity":
        options = {**SHORT_TRAINING, **options}
    cell = conftest.make_cell(registry, name, variant, depth, 8, 8, seeds, **options)
    cell.mode = mode
    return cell


def measure(name, cell, path=None):
    return expand(MODULES[name].run(cell, path))


def of_seed(records, seed):
    return [r for r in records if r["seed"] == seed]


def values(records):
    return [(r["metric"], r["index"], r.get("param"), r["seed"], r["value"], r["mode"]) for r in records]


def assert_close(got, expected):
    """The same records, values within float rounding (another path's arithmetic: bmm against
    mm); a different draw keeps or drops a whole branch, far beyond it."""
    assert [v[:4] + v[5:] for v in values(got)] == [v[:4] + v[5:] for v in values(expected)]
    nan = float("nan")
    assert [nan if r["value"] is None else r["value"] for r in got] == pytest.approx(
        [nan if r["value"] is None else r["value"] for r in expected], rel=1e-5, abs=1e-6, nan_ok=True)


# -- test blocks -------------------------------------------------------------------------------------------
class SeedDrop(nn.Module):
    """Stochastic depth written with seed_uniform: x + b relu(W x + c), b = [u < 0.5] per seed in
    training, b = 0.5 in eval; exposes its last draw u as a probe."""

    def __init__(self, dim):
        super().__init__()
        self.fc = layers.Linear(dim, dim)
        self.u = torch.zeros(())

    def forward(self, x):
        if not self.training:
            return x + 0.5 * self.fc(x).relu()
        self.u = layers.seed_uniform(x)
        return x + (self.u < 0.5).to(x.dtype) * self.fc(x).relu()

    def skipbench_probes(self):
        return {"draw": self.u.reshape(self.u.shape[:-2])}


class RowDrop(nn.Module):
    """Per-sample stochastic depth with row_uniform: each row keeps the branch with probability 0.5."""

    def __init__(self, dim):
        super().__init__()
        self.fc = layers.Linear(dim, dim)

    def forward(self, x):
        keep = (layers.row_uniform(x) < 0.5).to(x.dtype) if self.training else 0.5
        return x + keep * self.fc(x).relu()


class ReZero(nn.Module):
    """x + alpha relu(W x + b), alpha learnable, 0 at initialization."""

    def __init__(self, dim):
        super().__init__()
        self.fc = layers.Linear(dim, dim)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.alpha * self.fc(x).relu()


class ScaledVector(nn.Module):
    """x + lam * relu(W x + b), lam a learnable per-feature vector (LayerScale's lambda), with a
    learnable scalar gain g (0.5 at initialization) and a frozen scalar."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.lam = nn.Parameter(torch.full((dim,), 0.1))
        self.g = nn.Parameter(torch.full((), 0.5))
        self.frozen = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x):
        return self.frozen * x + self.g * self.lam * self.fc(x).relu()


class TrainOnlyGain(nn.Module):
    """x + alpha x in training mode, x in eval mode (alpha 0.5): the MSE against x is 0.25 E[x^2]
    growth per block in training mode and exactly 0 in eval mode, so a record shows its mode."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((), 0.5))

    def forward(self, x):
        return x + self.alpha * x if self.training else x


class TorchBatchNorm(nn.Module):
    """x + relu(BN(W x)) with torch.nn.BatchNorm1d: its running statistics update in training.
    (No bias before the norm: its gradient would be rounding noise, which Adam amplifies.)"""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return x + self.bn(self.fc(x)).relu()


BLOCKS = {  # name: (class, seed_batched, probes)
    "t-seed-drop": (SeedDrop, True, ("draw",)),
    "t-row-drop": (RowDrop, True, ()),
    "t-rezero": (ReZero, True, ()),
    "t-rezero-vmap": (ReZero, False, ()),
    "t-vector": (ScaledVector, False, ()),
    "t-train-only": (TrainOnlyGain, False, ()),
    "t-torch-bn": (TorchBatchNorm, False, ()),
    "t-dropout": (DropoutBlock, False, ()),
}


class SeedBatchNorm(TorchBatchNorm):
    """x + relu(BN(W x)) with skipbench.layers.BatchNorm: runs stacked."""

    def __init__(self, dim):
        nn.Module.__init__(self)
        self.fc = layers.Linear(dim, dim, bias=False)
        self.bn = layers.BatchNorm(dim)


BLOCKS["t-seed-bn"] = (SeedBatchNorm, True, ())


@pytest.fixture(scope="module")
def reg():
    registry = load_registry(entrypoints=False, env=False, pyproject=None)
    for name, (cls, batched, found) in BLOCKS.items():
        registry.add_builder(BlockBuilder(name, cls, (), seed_batched=batched, probes=found,
                                          description=cls.__doc__.splitlines()[0]))
        registry.add_variant(Variant(name, name, network={"head": "none"}))
    return registry


# -- seed_uniform and row_uniform ------------------------------------------------------------------------------
def test_seed_uniform_draws_each_seeds_own_stream_on_a_stack_and_the_global_one_alone():
    x = torch.zeros(3, 5, 4)
    gens = [streams.generator(s, streams.FORWARD) for s in (7, 8, 9)]
    with layers.seed_generators(gens):
        u, rows = layers.seed_uniform(x), layers.row_uniform(x)
    assert u.shape == (3, 1, 1) and rows.shape == (3, 5, 1)
    for j, s in enumerate((7, 8, 9)):
        own = torch.rand((1, 1), generator=streams.generator(s, streams.FORWARD))
        assert torch.equal(u[j], own)
        after = streams.generator(s, streams.FORWARD)
        torch.rand((1, 1), generator=after)
        assert torch.equal(rows[j], torch.rand((5, 1), generator=after))
    torch.manual_seed(3)
    one = layers.seed_uniform(x[0])
    torch.manual_seed(3)
    assert one.shape == (1, 1) and torch.equal(one, torch.rand((1, 1)))
    assert layers.row_uniform(x[0]).shape == (5, 1)


def test_seed_uniform_refuses_a_stack_without_its_generators():
    with pytest.raises(ValueError, match="stacked"):
        layers.seed_uniform(torch.zeros(3, 5, 4))
    with layers.seed_generators([torch.Generator()] * 2), pytest.raises(ValueError, match="2 seeds"):
        layers.seed_uniform(torch.zeros(3, 5, 4))


@pytest.mark.parametrize("variant", ["t-seed-drop", "t-row-drop"])
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_blocks_drawing_with_seed_uniform_run_stacked_and_match_the_loop_alone_and_in_any_chunk(
        reg, monkeypatch, name, variant):
    seeds = (0, 1, 2, 3)
    cell = make_cell(reg, name, variant, 4, seeds)
    whole = measure(name, cell)
    assert {r["seeds_path"] for r in whole} == {"stacked"}
    assert_close(measure(name, cell, "loop"), whole)
    for budget in (1, 2 * 10**5):  # one seed per chunk, a few
        monkeypatch.setattr(stack, "CHUNK_BYTES", budget)
        got = measure(name, cell)
        assert all(values(of_seed(got, s)) == values(of_seed(whole, s)) for s in seeds)
    monkeypatch.undo()
    for s in (0, 3):
        alone = measure(name, make_cell(reg, name, variant, 4, (s,)))
        assert values(alone) == values(of_seed(whole, s))
    assert [r["value"] for r in of_seed(whole, 0)] != [r["value"] for r in of_seed(whole, 1)]


def test_each_seeds_draws_are_its_forward_streams_first_numbers(reg):
    seeds = (0, 1, 2, 3, 4)
    got = measure("probes", make_cell(reg, "probes", "t-seed-drop", 3, seeds))
    assert {r["seeds_path"] for r in got} == {"stacked"}
    for s in seeds:
        gen = streams.generator(s, streams.FORWARD)
        expected = [torch.rand((1, 1), generator=gen).item() for _ in range(3)]  # blocks 0, 1, 2 in order
        draws = [r["value"] for r in of_seed(got, s) if r["metric"] == "draw" and r["index"] is not None]
        assert draws == pytest.approx(expected, rel=0, abs=0)
    first = {r["seed"]: r["value"] for r in got if r["metric"] == "draw" and r["index"] == 0}
    assert len(set(first.values())) == len(seeds)


def test_a_dropout_block_runs_under_vmap_in_eval_mode_and_the_loop_in_training(reg):
    train = measure("gradient-flow", make_cell(reg, "gradient-flow", "t-dropout"))
    evaluated = measure("gradient-flow", make_cell(reg, "gradient-flow", "t-dropout", mode="eval"))
    assert {r["seeds_path"].split(" ")[0] for r in train} == {"loop"}
    assert {r["seeds_path"] for r in evaluated} == {"vmap"}
    assert {r["mode"] for r in train} == {"train"} and {r["mode"] for r in evaluated} == {"eval"}


# -- modes -------------------------------------------------------------------------------------------------
def test_identity_evaluates_at_initialization_in_training_mode_and_the_trained_network_in_eval_mode(reg):
    got = measure("identity", make_cell(reg, "identity", "t-train-only", 2, steps=10, eval_every=5))
    by = {(r["metric"], r["index"], r["seed"]): r for r in got}
    for s in (0, 1, 2):
        init = by[("mse_init", None, s)]
        assert init["mode"] == "train" and init["value"] > 0.5  # (1.5^2 - 1)^2 E[x^2] per two blocks
        assert by[("loss_curve", 0, s)]["mode"] == "train" and by[("loss_curve", 0, s)]["value"] == init["value"]
        for step in (5, 10):  # the trained network, in eval mode: exactly the identity
            assert by[("loss_curve", step, s)]["mode"] == "eval" and by[("loss_curve", step, s)]["value"] == 0
        assert by[("mse_trained", None, s)]["mode"] == "eval" and by[("mse_trained", None, s)]["value"] == 0
        assert by[("steps_to_threshold", None, s)]["value"] == 5 and by[("steps_to_threshold", None, s)]["mode"] == "eval"
        assert {by[("scalar_init", i, s)]["mode"] for i in (0, 1)} == {"train"}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_forced_mode_holds_for_every_record(reg, mode):
    got = measure("identity", make_cell(reg, "identity", "t-train-only", 2, mode=mode, steps=10, eval_every=5))
    assert {r["mode"] for r in got} == {mode}
    trained = [r["value"] for r in got if r["metric"] == "mse_trained"]
    assert all(v == 0 for v in trained) if mode == "eval" else all(v > 0 for v in trained)
    flow = measure("gradient-flow", make_cell(reg, "gradient-flow", "t-train-only", 2, mode=mode))
    assert {r["mode"] for r in flow} == {mode}
    gain = [r["value"] for r in flow if r["metric"] == "param_grad_norm"]
    assert all(g == 0 for g in gain) if mode == "eval" else all(g > 0 for g in gain)  # alpha unused in eval


def test_profiles_set_the_mode_at_top_level_and_per_experiment(registry, tmp_path):
    path = tmp_path / "modes.toml"
    path.write_text('mode = "eval"\ndepths = [2]\nseeds = 1\n'
                    '[[experiments]]\nname = "a"\nvariants = ["residual"]\n'
                    '[[experiments]]\nname = "b"\nvariants = ["residual"]\nmode = "train"\n')
    run = grid.make_run(registry, str(path))
    assert [p.mode for p in run.plans] == ["eval", "train"]
    assert [p.mode for p in grid.make_run(registry, str(path), mode="train").plans] == ["train", "train"]
    assert grid.make_plan(registry, "quick", ["residual"]).mode is None
    path.write_text('mode = "inference"\n')
    with pytest.raises(UsageError, match="mode must be one of 'train', 'eval'"):
        grid.make_run(registry, str(path), select_all=True)


# -- buffers -------------------------------------------------------------------------------------------------
BN_VARIANTS = ["t-torch-bn"] + (["t-seed-bn"] if "t-seed-bn" in BLOCKS else [])


@pytest.mark.parametrize("variant", BN_VARIANTS)
@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_batchnorm_records_are_each_seeds_own_alone_in_any_chunk_and_on_every_path(reg, monkeypatch, name, variant):
    """Bit for bit for the seed-aware BatchNorm (stacked); within float rounding for
    torch.nn.BatchNorm1d under vmap, whose batching rule reduces a chunk's seeds together (its
    weight and bias gradients differ in the last bit with the chunk's size). Another seed's
    statistics would change the values far beyond that."""
    seeds = (0, 1, 2, 3)
    cell = make_cell(reg, name, variant, 3, seeds)
    whole = measure(name, cell)
    assert {r["seeds_path"] for r in whole} == {"stacked" if variant == "t-seed-bn" else "vmap"}
    assert_close(measure(name, cell, "loop"), whole)

    def same(got, s):
        if variant == "t-seed-bn":
            assert values(of_seed(got, s)) == values(of_seed(whole, s))
        else:
            assert_close(of_seed(got, s), of_seed(whole, s))

    for budget in (1, 2 * 10**5):
        monkeypatch.setattr(stack, "CHUNK_BYTES", budget)
        got = measure(name, cell)
        for s in seeds:
            same(got, s)
    monkeypatch.undo()
    same(measure(name, make_cell(reg, name, variant, 3, (2,))), 2)
    assert [r["value"] for r in of_seed(whole, 0)] != [r["value"] for r in of_seed(whole, 1)]


@pytest.mark.parametrize("variant", BN_VARIANTS)
@pytest.mark.parametrize("path", ["stacked", "vmap", "loop"])
def test_running_statistics_are_each_seeds_own_and_evaluations_leave_them(reg, variant, path):
    if path == "stacked" and variant != "t-seed-bn":
        pytest.skip("torch.nn.BatchNorm1d does not run stacked")
    seeds = (0, 1, 2)
    cell = make_cell(reg, "gradient-flow", variant, 2, seeds)
    nets = stack.SeedNets(cell, path)
    st = nets.stack(seeds)
    x = cell.normals(seeds, streams.DATA, 8)
    before = {n: b.clone() for n, b in st.buffers.items()}
    with st.preserved(), st.mode("train"):
        st(x)
    assert all(torch.equal(before[n], b) for n, b in st.buffers.items())  # an evaluation changes nothing
    with st.mode("train"):
        st(x)
    mean = st.buffers["blocks.0.bn.running_mean"]
    assert not torch.equal(mean[0], mean[1]) and not torch.equal(mean[1], mean[2])
    for j, s in enumerate(seeds):  # each seed's slice is what its own network's forward leaves
        own = cell.build(s).train()
        own(x[j])
        for n, b in st.buffers.items():
            assert torch.allclose(b[j], own.get_buffer(n), rtol=1e-5, atol=1e-6), (n, s)


# -- scalar and vector parameters -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["t-rezero", "t-rezero-vmap"])
def test_rezero_alpha_gets_its_own_gradient_record_and_the_branch_none(reg, variant):
    seeds = (0, 1)
    cell = make_cell(reg, "gradient-flow", variant, 3, seeds)
    got = measure("gradient-flow", cell)
    rows = {(r["seed"], r["index"], r["param"]): r["value"] for r in got if r["metric"] == "param_grad_norm"}
    assert {p for _, _, p in rows} == {"alpha", "fc.weight", "fc.bias"}
    assert all(r["mode"] == "train" and r["unit"] == "l2" for r in got if r["metric"] == "param_grad_norm")
    for s in seeds:  # each seed's own network, its own data, torch's own backward
        net = cell.build(s).train()
        data = cell.normal(s, streams.DATA, 2 * cell.batch)
        x, target = data[:cell.batch], data[cell.batch:]
        (0.5 * ((net(x) - target) ** 2).sum() / cell.batch).backward()
        for i, block in enumerate(net.blocks):
            assert rows[(s, i, "fc.weight")] == 0 and rows[(s, i, "fc.bias")] == 0  # alpha = 0: no branch gradient
            assert rows[(s, i, "alpha")] > 0
            assert rows[(s, i, "alpha")] == pytest.approx(block.alpha.grad.abs().item(), rel=1e-5)
    assert [r["value"] for r in got if r["metric"] == "grad_norm"] == [0.0] * 6  # unchanged meaning


def test_vector_and_scalar_gradients_match_each_seeds_own_backward(reg):
    seeds = (0, 1, 2)
    cell = make_cell(reg, "gradient-flow", "t-vector", 2, seeds)
    got = measure("gradient-flow", cell)
    rows = {(r["seed"], r["index"], r["param"]): r["value"] for r in got if r["metric"] == "param_grad_norm"}
    assert {p for _, _, p in rows} == {"fc.weight", "fc.bias", "lam", "g"}  # the frozen scalar has none
    for s in seeds:
        net = cell.build(s).train()
        data = cell.normal(s, streams.DATA, 2 * cell.batch)
        (0.5 * ((net(data[:cell.batch]) - data[cell.batch:]) ** 2).sum() / cell.batch).backward()
        for i, block in enumerate(net.blocks):
            for name, p in block.named_parameters():
                if p.requires_grad:
                    assert rows[(s, i, name)] == pytest.approx(p.grad.norm().item(), rel=1e-5), (s, i, name)


@pytest.mark.parametrize("variant", ["t-rezero", "t-vector"])
def test_learnable_scalars_are_reported_at_initialization_and_after_training(reg, variant):
    """A ReZero trunk is exactly the identity at initialization: no gradient, alpha stays 0;
    the gain g of a block that is not the identity learns."""
    seeds = (0, 1)
    got = measure("identity", make_cell(reg, "identity", variant, 2, seeds, steps=10, eval_every=5))
    init = {(r["seed"], r["index"], r["param"]): r["value"] for r in got if r["metric"] == "scalar_init"}
    trained = {(r["seed"], r["index"], r["param"]): r["value"] for r in got if r["metric"] == "scalar_trained"}
    name, start = ("alpha", 0.0) if variant == "t-rezero" else ("g", 0.5)
    assert set(init) == set(trained) == {(s, i, name) for s in seeds for i in (0, 1)}  # scalars only
    assert all(v == start for v in init.values())
    if variant == "t-rezero":
        assert all(v == 0 for v in trained.values())
        assert [r["value"] for r in got if r["metric"] == "mse_init"] == [0.0, 0.0]
    else:
        assert all(math.isfinite(v) and v != start for v in trained.values())
    assert all(r["mode"] == "train" for r in got if r["metric"].startswith("scalar_"))
    assert not [r for r in measure("identity", make_cell(reg, "identity", variant, 2, seeds, steps=0))
                if r["metric"] == "scalar_trained"]


# -- the command line ---------------------------------------------------------------------------------------
DROPOUT_PLUGIN = '''\
"""A drop-in plugin whose block draws with nn.Dropout: its seeds run on the per-seed loop."""
from torch import nn

import skipbench


class Dropped(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc, self.drop = nn.Linear(dim, dim), nn.Dropout(0.5)

    def forward(self, x):
        return x + self.drop(self.fc(x))


@skipbench.hookimpl
def skipbench_register_builders():
    yield skipbench.BlockBuilder("dropped", Dropped, (), description="x + dropout(W x + b)")


@skipbench.hookimpl
def skipbench_register_variants():
    yield skipbench.Variant("dropped", "dropped")
'''


def _csv(run_dir):
    with open(run_dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_records_the_mode_and_says_once_per_variant_why_seeds_were_not_vectorized(run_cli, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dropped.py").write_text(DROPOUT_PLUGIN)
    out = tmp_path / "default"
    args = ("run", "residual", "dropped", "--profile", "quick", "-m", "gradient-flow", "-m", "identity",
            "--seeds", "2", "--no-figures", "--plugins-dir", str(plugins))
    result = run_cli(*args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = _csv(out)
    modes = {(r["measurement"], r["metric"], r["mode"]) for r in rows if r["variant"] == "residual"}
    assert {m for g, _, m in modes if g == "gradient-flow"} == {"train"}
    assert ("identity", "mse_init", "train") in modes and ("identity", "mse_trained", "eval") in modes
    assert ("identity", "mse_trained", "train") not in modes
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: variant")]
    assert len(warnings) == 1 and "'dropped'" in warnings[0] and "per-seed loop" in warnings[0] \
        and "vmap:" in warnings[0], result.stderr  # two depths x two measurements: one line
    assert json.loads((out / "results.json").read_text())["meta"]["mode"] is None

    forced = tmp_path / "eval"
    result = run_cli(*args, "--mode", "eval", "--out", str(forced))
    assert result.returncode == 0, result.stderr
    assert {r["mode"] for r in _csv(forced)} == {"eval"}
    assert json.loads((forced / "results.json").read_text())["meta"]["mode"] == "eval"
    assert "warning: variant" not in result.stderr  # in eval mode dropout draws nothing: vmap runs it

    bad = run_cli("run", "residual", "--mode", "inference")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_the_quick_profile_gives_every_record_a_mode(run_cli, tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "residual", "--profile", "quick", "--depths", "2", "-m", "params", "-m", "probes",
                     "-m", "gradient-flow", "--no-figures", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = _csv(out)
    assert {(r["measurement"], r["mode"]) for r in rows} == {("params", "eval"), ("gradient-flow", "train")}
    assert all(r["mode"] for r in rows)
