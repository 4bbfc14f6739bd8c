"""Profiles with several [[experiments]]: planning, profile-local variants, per-experiment network
options and last_block, validation, running and resuming, and what the report makes of the records
(published values, figures, histograms of probes, block widths)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch import nn

from conftest import as_rows
from skipbench import grid, harness, network, report, results
from skipbench.measurements import Cell, gradient_flow
from skipbench.registry import load_registry
from skipbench.specs import SpecError, UsageError, Variant, resolve_params


def fresh_registry():
    """The built-ins only, and a registry of its own: make_run adds a profile's variants to it."""
    return load_registry(entrypoints=False, env=False, pyproject=None)


def write_profile(directory, text, name="prof"):
    path = directory / f"{name}.toml"
    path.write_text(text)
    return str(path)


def plans_by_name(run):
    return {plan.experiment: plan for plan in run.plans}


# -- planning: experiments, defaults, overrides -------------------------------------------------------
OVERRIDES = """\
description = "two experiments over shared defaults"
seeds = 3
seed_start = 7
width = 12
batch = 5
depths = [2, 3]
measurements = ["params"]
[options.identity]
steps = 7
eval_every = 7

[[experiments]]
name = "inherits"
variants = ["plain", "dense"]

[[experiments]]
name = "overrides"
description = "its own grid"
variants = ["res*"]
measurements = ["identity", "params"]
depths = [4]
width = 8
batch = 2
[experiments.options.identity]
lr = 0.5

[[experiments]]
name = "by-tag"
tags = ["gated"]
measurements = ["gradient-flow"]
[experiments.options.gradient-flow]
norm_combine = "sum"
"""


def test_experiments_inherit_the_top_level_grid_and_override_it(tmp_path):
    reg = fresh_registry()
    run = grid.make_run(reg, write_profile(tmp_path, OVERRIDES))
    assert run.profile == "prof" and run.description == "two experiments over shared defaults"
    plans = plans_by_name(run)
    assert list(plans) == ["inherits", "overrides", "by-tag"]
    defaults = {m: resolve_params(reg.measurements[m].options, {}, m) for m in reg.measurements}
    inherits, overrides, tagged = plans["inherits"], plans["overrides"], plans["by-tag"]
    assert [v.name for v in inherits.variants] == ["plain", "dense"]
    assert (inherits.measurements, inherits.depths, inherits.widths, inherits.batch) == (["params"], [2, 3], [12], 5)
    assert [v.name for v in overrides.variants] == ["residual", "residual-linear"]  # res*, in registry order
    assert (overrides.measurements, overrides.depths, overrides.widths, overrides.batch) == (["identity", "params"], [4], [8], 2)
    assert [v.name for v in tagged.variants] == ["highway"]
    assert (tagged.measurements, tagged.depths, tagged.widths) == (["gradient-flow"], [2, 3], [12])
    for plan in run.plans:  # seeds are the profile's, shared by every experiment
        assert plan.seeds == (7, 8, 9) and plan.profile == "prof"
    # option tables merge: the top level's, then the experiment's
    assert overrides.options["identity"] == {**defaults["identity"], "steps": 7, "eval_every": 7, "lr": 0.5}
    assert inherits.options["identity"] == {**defaults["identity"], "steps": 7, "eval_every": 7}
    assert tagged.options["gradient-flow"] == {**defaults["gradient-flow"], "norm_combine": "sum"}
    assert inherits.options["params"] == overrides.options["params"] == {}
    # the tasks: each experiment's own grid, keyed by the experiment
    tasks = run.tasks(reg)
    assert {t.experiment for t in tasks} == set(plans)
    assert len(tasks) == sum(len(p.tasks(reg)) for p in run.plans) == 2 * 1 * 2 + 2 * 2 * 1 + 1 * 1 * 2
    assert len({t.key for t in tasks}) == len(tasks)


def test_command_line_overrides_apply_to_every_experiment(tmp_path):
    run = grid.make_run(fresh_registry(), write_profile(tmp_path, OVERRIDES), variants=["plain"],
                           measurements=["params"], depths=[6], width=4, batch=3, seeds=2)
    for plan in run.plans:
        assert [v.name for v in plan.variants] == ["plain"]
        assert (plan.measurements, plan.depths, plan.widths, plan.batch, plan.seeds) == (["params"], [6], [4], 3, (7, 8))


def test_without_variants_anywhere_is_a_usage_error(tmp_path):
    text = '[[experiments]]\nname = "a"\nvariants = ["plain"]\n[[experiments]]\nname = "b"\ndepths = [2]\n'
    with pytest.raises(UsageError, match="name variants to run"):
        grid.make_run(fresh_registry(), write_profile(tmp_path, text))
    with pytest.raises(UsageError, match="name variants to run"):
        grid.make_run(fresh_registry(), write_profile(tmp_path, "depths = [2]\n", "flat"))
    run = grid.make_run(fresh_registry(), write_profile(tmp_path, text), select_all=True)
    assert all(len(plan.variants) == len(fresh_registry().variants) for plan in run.plans)
    empty = '[[experiments]]\nname = "a"\nvariants = []\n'
    with pytest.raises(UsageError, match="name variants to run"):  # an empty list selects nothing, not everything
        grid.make_run(fresh_registry(), write_profile(tmp_path, empty, "empty"))
    with pytest.raises(UsageError, match="has 2 experiments; use make_run"):
        grid.make_plan(fresh_registry(), write_profile(tmp_path, text))


# -- profile-local variants ----------------------------------------------------------------------------
LOCAL = """\
seeds = 2
width = 8
[variants.lin-end]
builder = "plain"
last_block = { activation = "identity" }
network = { head = "none" }
tags = ["local"]
description = "ReLU after every layer but the last"

[variants.relu-end]
builder = "plain"
network = { head = "none" }

[[experiments]]
name = "local"
variants = ["lin-end", "relu-end"]
measurements = ["params"]
depths = [4]
"""


def test_profile_variants_join_the_registry(tmp_path):
    reg = fresh_registry()
    builtins = list(reg.variants)
    run = grid.make_run(reg, write_profile(tmp_path, LOCAL, "local"))
    assert list(reg.variants) == builtins + ["lin-end", "relu-end"]
    lin = reg.variants["lin-end"]
    assert (lin.builder, dict(lin.last_block), lin.network["head"], lin.tags) == ("plain", {"activation": "identity"}, "none", ("local",))
    assert str(lin.provider) == "profile local (skipbench)"
    assert [v.name for v in run.plans[0].variants] == ["lin-end", "relu-end"]
    grid.make_run(reg, write_profile(tmp_path, LOCAL, "local"))  # the same profile again adds nothing
    assert list(reg.variants) == builtins + ["lin-end", "relu-end"]
    clash = LOCAL.replace("[variants.relu-end]", "[variants.plain]").replace('"relu-end"]', '"plain"]')
    with pytest.raises(SpecError, match="duplicate variant name 'plain'"):
        grid.make_run(fresh_registry(), write_profile(tmp_path, clash, "clash"))


def test_list_with_profile_shows_its_variants(run_cli, tmp_path):
    path = write_profile(tmp_path, LOCAL, "local")
    listed = run_cli("list", "--profile", path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "lin-end" in rows and "relu-end" in rows and "plain" in rows
    assert "last block: activation='identity'" in rows["lin-end"] and "profile local" in rows["lin-end"]
    assert "last block" not in rows["relu-end"]
    bad = run_cli("list", "--profile", write_profile(tmp_path, LOCAL.replace("activation =", "activaton ="), "bad"))
    assert bad.returncode == 2 and "[last_block]" in bad.stderr and "activaton" in bad.stderr
    assert "Traceback" not in bad.stderr


def _has(module, kind):
    return any(isinstance(m, kind) for m in module.modules())


def test_last_block_changes_only_the_final_block(tmp_path):
    reg = fresh_registry()
    grid.make_run(reg, write_profile(tmp_path, LOCAL, "local"))
    depth, width = 4, 8
    torch.manual_seed(3)
    lin = network.build(reg, reg.variants["lin-end"], depth, width)
    torch.manual_seed(3)
    relu = network.build(reg, reg.variants["relu-end"], depth, width)
    assert [_has(b, nn.ReLU) for b in lin.blocks] == [True] * (depth - 1) + [False]
    assert [_has(b, nn.ReLU) for b in relu.blocks] == [True] * depth
    assert _has(lin.blocks[-1], nn.Identity)
    # the activation draws nothing: the same seed gives the same weights, only the last ReLU is gone
    for p, q in zip(lin.parameters(), relu.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(64, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before_last = x
        for block in relu.blocks[:-1]:
            before_last = block(before_last)
        assert torch.equal(lin(x), lin.blocks[-1][0](before_last))  # the last block is its Linear alone
        assert torch.equal(relu(x), torch.relu(lin(x)))
        assert (lin(x) < 0).any() and (relu(x) >= 0).all()
    # a residual net's last block takes its own parameters too
    reg.add_variant(Variant("res-end", "residual", params={"branch_scale": 1.0}, network={"head": "none"},
                                    last_block={"branch_scale": 0.0}))
    net = network.build(reg, reg.variants["res-end"], 6, width)
    assert [b.scale for b in net.blocks] == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("entry, message", [
    ('{ activaton = "identity" }', "unknown parameter 'activaton'"),
    ("{ activation = 3 }", "activation must be a str"),
    ('{ activation = "swish" }', "activation='swish' is not allowed"),
    ('{ bias = "yes" }', "bias must be a bool"),
])
def test_bad_last_block_is_a_spec_error_naming_it(tmp_path, entry, message):
    text = LOCAL.replace('last_block = { activation = "identity" }', f"last_block = {entry}")
    with pytest.raises(SpecError, match=message) as info:
        grid.make_run(fresh_registry(), write_profile(tmp_path, text, "bad"))
    assert "[last_block]" in str(info.value) and "'lin-end'" in str(info.value)


# -- per-experiment network options ---------------------------------------------------------------------
def test_experiment_network_overrides_only_that_experiment(tmp_path):
    text = """\
seeds = 2
width = 8
batch = 4
measurements = ["gradient-flow"]
depths = [3]
[[experiments]]
name = "f32"
variants = ["plain", "residual"]
depths = [2]
[[experiments]]
name = "f64"
variants = ["plain", "residual"]
depths = [2]
network = { dtype = "float64", stem = "linear" }
"""
    reg = fresh_registry()
    run = grid.make_run(reg, write_profile(tmp_path, text))
    plans = plans_by_name(run)
    for v32, v64 in zip(plans["f32"].variants, plans["f64"].variants):
        assert v32 is reg.variants[v32.name]  # untouched
        assert dict(v64.network) == {**reg.variants[v64.name].network, "dtype": "float64", "stem": "linear"}
        assert v64.params == v32.params and v64.builder == v32.builder
    assert reg.variants["plain"].network["dtype"] == "float32"
    for name, plan in plans.items():
        for task in plan.tasks(reg):
            recs = harness.run_task(reg, plan, task).to_pylist()
            assert all(r["status"] == "ok" and r["experiment"] == name for r in recs)
            variant = next(v for v in plan.variants if v.name == task.variant)
            cell = Cell(reg, variant, task.depth, task.width, plan.batch, plan.seeds, "cpu", plan.options["gradient-flow"])
            assert {p.dtype for p in cell.build(0).parameters()} == {getattr(torch, variant.network["dtype"])}
            direct = results.task_table(gradient_flow.run(cell)).to_pylist()
            assert [(r["metric"], r["index"], r["seed"], r["value"]) for r in recs] == \
                   [(r["metric"], r["index"], r["seed"], r["value"]) for r in direct]
    # the plain nets differ only in precision and the stem: compare a stem-free pair
    same = text.replace(', stem = "linear"', "")
    plans = plans_by_name(grid.make_run(fresh_registry(), write_profile(tmp_path, same, "same")))
    task = next(t for t in plans["f32"].tasks(reg) if t.variant == "plain")
    a = harness.run_task(reg, plans["f32"], task).to_pylist()
    b = harness.run_task(reg, plans["f64"], grid.Task(task.variant, task.measurement, task.depth, task.width, "f64")).to_pylist()
    assert [r["value"] for r in a] != [r["value"] for r in b]
    assert [r["value"] for r in a] == pytest.approx([r["value"] for r in b], rel=1e-5)


@pytest.mark.parametrize("entry, error, message", [
    ('network = "float64"', UsageError, "network must be a table"),
    ('network = { dtype = "float16" }', SpecError, "dtype='float16' is not allowed"),
    ('network = { dtyp = "float64" }', SpecError, "unknown parameter 'dtyp'"),
])
def test_bad_experiment_network_is_a_usage_error(tmp_path, entry, error, message):
    text = f'[[experiments]]\nname = "a"\nvariants = ["plain"]\n{entry}\n'
    with pytest.raises(error, match=message):
        grid.make_run(fresh_registry(), write_profile(tmp_path, text))


# -- validation of experiments, published values and figures ----------------------------------------
GOOD = '[[experiments]]\nname = "a"\nvariants = ["plain"]\nmeasurements = ["params"]\n'


@pytest.mark.parametrize("text, message", [
    ('[[experiments]]\nname = "a"\nvariants = ["plain"]\nwidht = 3\n', "experiment 'a': unknown key 'widht'"),
    ('[[experiments]]\nname = "a"\nvariants = ["plain"]\nseeds = 3\n', "unknown key 'seeds'"),
    (GOOD + GOOD, "every experiment needs its own name"),
    ('[[experiments]]\nvariants = ["plain"]\n[[experiments]]\nvariants = ["dense"]\n', "every experiment needs its own name"),
    ('experiments = 3\n', "experiments must be an array of tables"),
    ('[experiments]\nname = "a"\n', "experiments must be an array of tables"),
    ('[[experiments]]\nname = "a"\nvariants = "plain"\n', "variants must be a list of names"),
    ('[[experiments]]\nname = "a"\nvariants = ["nosuch"]\n', "unknown variant 'nosuch'"),
    ('[[experiments]]\nname = "a"\nvariants = ["plain"]\ndepths = "2"\n', "depths must be a list of integers"),
    ('[[experiments]]\nname = "a"\nvariants = ["plain"]\nwidth = 0\n', "width must be >= 1"),
    ('[[experiments]]\nname = "a"\nvariants = ["plain"]\n[experiments.options.identity]\nstepz = 1\n',
     "unknown parameter 'stepz'"),
    ('published = 3\n' + GOOD, "published must be an array of tables"),
    (GOOD + '[[published]]\nmetric = "weights"\nvalue = 1.0\n', "is missing variant"),
    (GOOD + '[[published]]\nvariant = "plain"\nmetric = "weights"\n', "is missing value"),
    (GOOD + '[[published]]\nexperiment = "b"\nvariant = "plain"\nmetric = "weights"\nvalue = 1.0\n',
     "unknown experiment 'b'; the profile's experiments: 'a'"),
    (GOOD + '[[figures]]\nname = "f"\nexperiment = "A"\n', "figure 'f': unknown experiment 'A'"),
    (GOOD + '[[figures]]\nname = "f"\nkind = "histogram"\nexperiments = ["a", "b"]\n', "unknown experiment 'b'"),
    (GOOD + '[[published]]\nvariant = "plain"\nmetric = "weights"\nvalu = 1.0\n', "unknown parameter 'valu'"),
    (GOOD + '[[published]]\nvariant = "plain"\nmetric = "weights"\nvalue = "big"\n', "value must be a float"),
    (GOOD + '[[published]]\nvariant = "plain"\nmetric = "weights"\ndepth = 2.5\n', "depth must be an int"),
    (GOOD + '[[published]]\nvariant = "plain"\nmetric = "weights"\nalso = "params"\n', "also must be a list"),
    (GOOD + '[[figures]]\nkind = "pie"\n', "kind='pie' is not allowed"),
    (GOOD + '[[figures]]\nname = "f"\ncolour = "red"\n', "unknown parameter 'colour'"),
    (GOOD + '[[figures]]\nname = "f"\ndepths = ["deep"]\n', "figure depths must be a list of integers"),
    (GOOD + '[[figures]]\nname = "f"\nexperiments = "a"\n', "figure experiments must be a list"),
    (GOOD + '[figures]\nname = "f"\n', "figures must be an array of tables"),
])
def test_bad_experiments_published_and_figures_are_usage_errors(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        grid.make_run(fresh_registry(), write_profile(tmp_path, text, "bad"))


def test_published_and_figures_are_parsed_with_defaults(tmp_path):
    text = GOOD + ('[[published]]\nexperiment = "a"\nvariant = "plain"\nmetric = "weights"\nvalue = 64\n'
                   'also = ["params"]\n[[figures]]\nkind = "widths"\nname = "w"\nexperiment = "a"\n')
    run = grid.make_run(fresh_registry(), write_profile(tmp_path, text))
    assert run.published == [{"experiment": "a", "variant": "plain", "metric": "weights", "depth": 0, "value": 64.0,
                              "label": "", "also": ["params"]}]
    assert run.figures == [{"kind": "widths", "name": "w", "title": "", "experiment": "a", "metric": "grad_norm",
                            "depths": [], "experiments": []}]
    plain = grid.make_run(fresh_registry(), write_profile(tmp_path, GOOD, "plain"))
    assert plain.published == [] and [f["name"] for f in plain.figures] == [f["name"] for f in grid.DEFAULT_FIGURES]


def test_default_figures_are_drawn_per_experiment_when_there_are_several(tmp_path):
    text = ('seeds = 2\nwidth = 4\nbatch = 3\ndepths = [2]\n[options.identity]\nsteps = 4\neval_every = 2\neval_batch = 5\n'
            '[[experiments]]\nname = "flow: plain"\nvariants = ["plain"]\nmeasurements = ["gradient-flow"]\n'
            '[[experiments]]\nname = "learn"\nvariants = ["residual"]\nmeasurements = ["identity"]\n')
    reg = fresh_registry()
    run = grid.make_run(reg, write_profile(tmp_path, text))
    assert [(f["name"], f["experiment"]) for f in run.figures] == [
        (f"{d['name']}-{slug}", e) for e, slug in (("flow: plain", "flow-plain"), ("learn", "learn")) for d in grid.DEFAULT_FIGURES]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recs = harness.execute(reg, run, run_dir)
    drawn = {p.name for p in report.draw(run.figures, recs, run_dir)}
    # each figure holds its own experiment's records only: no gradient profile of "learn", no curve of "flow: plain"
    assert drawn == {f"{stem}{ext}" for stem in ("gradient-flow-grad_norm-flow-plain", "gradient-flow-signal_norm-flow-plain",
                                                 "identity-loss-curve-learn") for ext in (".png", ".svg")}


# -- a real run over several experiments ------------------------------------------------------------------
REAL = """\
description = "every kind of experiment, small"
seeds = 4
seed_start = 2
width = 8
batch = 6
depths = [3]
measurements = ["params"]
[options.identity]
steps = 10
eval_every = 5
eval_batch = 16

[variants.gates-open]
builder = "highway"
params = { gate_bias = 1.0 }
network = { head = "none" }

[variants.narrow-dense]
builder = "dense"
params = { growth_rate = 3 }
last_block = { growth_rate = 5 }

[[experiments]]
name = "flow32"
variants = ["plain", "residual"]
measurements = ["gradient-flow"]
depths = [2, 4]

[[experiments]]
name = "flow64"
variants = ["plain"]
measurements = ["gradient-flow"]
depths = [2, 4]
network = { dtype = "float64" }

[[experiments]]
name = "learn"
variants = ["plain"]
measurements = ["identity"]
depths = [2]

[[experiments]]
name = "blowup"
variants = ["plain"]
measurements = ["identity"]
depths = [2]
[experiments.options.identity]
optimizer = "sgd"
lr = 1e30
steps = 3
eval_every = 1

[[experiments]]
name = "gates"
variants = ["highway", "gates-*"]
measurements = ["probes", "params"]
depths = [2]
[experiments.options.probes]
rows = 50
histogram_bins = 10

[[experiments]]
name = "features"
variants = ["dense", "narrow-dense"]
width = 10

[[figures]]
kind = "profile"
name = "grad-profile"
experiment = "flow32"
metric = "grad_norm"
depths = [4]

[[figures]]
kind = "curve"
name = "loss-curve"
title = "learning the identity"
experiment = "learn"
metric = "loss_curve"

[[figures]]
kind = "histogram"
name = "gate-histogram"
metric = "gate"
experiments = ["gates"]

[[figures]]
kind = "widths"
name = "dense-widths"
experiment = "features"
"""


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(registry, run, table, run directory) of the REAL profile, executed once."""
    directory = tmp_path_factory.mktemp("real")
    reg = fresh_registry()
    run = grid.make_run(reg, write_profile(directory, REAL, "real"))
    run_dir = directory / "run"
    run_dir.mkdir()
    done = []
    recs = harness.execute(reg, run, run_dir, on_done=lambda task, r: done.append(task))
    assert sorted(t.key for t in done) == sorted(t.key for t in run.tasks(reg))
    return reg, run, recs, run_dir


def select(table, **coords):
    """The rows (dicts) of `table` with these coordinates."""
    return [r for r in table.to_pylist() if all(r.get(k) == v for k, v in coords.items())]


def test_records_carry_their_experiment(real):
    reg, run, recs, run_dir = real
    assert not results.count(recs, "failed")
    for plan in run.plans:
        mine = select(recs, experiment=plan.experiment)
        assert {(r["variant"], r["measurement"], r["depth"]) for r in mine} == \
               {(t.variant, t.measurement, t.depth) for t in plan.tasks(reg)}
        assert {r["width"] for r in mine} == set(plan.widths)
    assert set(recs["experiment"].to_pylist()) == {p.experiment for p in run.plans}
    assert as_rows(results.load(run_dir)[1]) == as_rows(recs)  # from the fragments
    # the same variant, measurement and depth in two experiments: two sets of records
    for depth in (2, 4):
        f32 = select(recs, experiment="flow32", variant="plain", depth=depth)
        f64 = select(recs, experiment="flow64", variant="plain", depth=depth)
        assert [(r["metric"], r["seed"], r["index"]) for r in f32] == [(r["metric"], r["seed"], r["index"]) for r in f64]
        assert [r["value"] for r in f32] != [r["value"] for r in f64]
        assert [r["value"] for r in f32] == pytest.approx([r["value"] for r in f64], rel=1e-4)


def test_resume_across_experiments(tmp_path):
    text = """\
seeds = 2
width = 6
batch = 4
measurements = ["gradient-flow"]
depths = [2]
[[experiments]]
name = "global"
variants = ["plain"]
[[experiments]]
name = "summed"
variants = ["plain"]
[experiments.options.gradient-flow]
norm_combine = "sum"
"""
    reg = fresh_registry()
    run = grid.make_run(reg, write_profile(tmp_path, text))
    tasks = run.tasks(reg)
    assert len(tasks) == 2 and tasks[0].key != tasks[1].key  # the same cell but for the experiment
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir()
    part_dir.mkdir()
    full = harness.execute(reg, run, full_dir)
    [(_, first), _] = results.read_fragments(full_dir / "records")
    assert set(first["experiment"].to_pylist()) == {"global"}
    results.FragmentStream(part_dir / "records").write(first)
    ran = []
    resumed = harness.execute(reg, run, part_dir, on_done=lambda task, r: ran.append(task), resume=True)
    assert ran == [tasks[1]]
    assert as_rows(resumed) == as_rows(full)
    assert as_rows(results.load(part_dir)[1]) == as_rows(results.load(full_dir)[1])
    # nothing left to do
    again = []
    harness.execute(reg, run, part_dir, on_done=lambda task, r: again.append(task), resume=True)
    assert again == []


def test_draw_writes_every_figure_kind(real, tmp_path):
    reg, run, recs, run_dir = real
    paths = report.draw(run.figures, recs, tmp_path)
    expected = [tmp_path / f"{f['name']}{ext}" for f in run.figures for ext in (".png", ".svg")]
    assert paths == expected
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") if path.suffix == ".png" else b"<svg" in data[:2000]
    # a figure of an experiment without such records draws nothing
    empty = [{**run.figures[2], "experiments": ["learn"], "name": "nothing"}, {**run.figures[3], "experiment": "learn"}]
    assert report.draw(empty, recs, tmp_path / "none") == []


def test_probe_histograms_are_densities(real):
    reg, run, recs, _ = real
    plan = plans_by_name(run)["gates"]
    bins = plan.options["probes"]["histogram_bins"]
    hist = select(recs, experiment="gates", measurement="probes", metric="gate_hist")
    groups = defaultdict(list)
    for r in hist:
        groups[(r["variant"], r["seed"], r["block"])].append(r)
    n_blocks = plan.depths[0]  # one highway layer per block
    assert set(groups) == {(v.name, s, b) for v in plan.variants for s in plan.seeds for b in range(n_blocks)}
    lo, hi = plan.options["probes"]["histogram_min"], plan.options["probes"]["histogram_max"]
    for key_, group in groups.items():
        assert [r["index"] for r in group] == list(range(bins))
        assert all(r["unit"] == "density" and r["status"] == "ok" and r["value"] >= 0 for r in group)
        edges = [(r["bin_lo"], r["bin_hi"]) for r in group]
        assert edges[0][0] == pytest.approx(lo) and edges[-1][1] == pytest.approx(hi)
        assert all(a[1] == pytest.approx(b[0]) for a, b in zip(edges, edges[1:]))
        assert sum(r["value"] * (r["bin_hi"] - r["bin_lo"]) for r in group) == pytest.approx(1.0, abs=1e-6)
        # the histogram's mean agrees with the recorded gate_mean to within a bin
        variant, seed, block = key_
        [mean] = select(recs, experiment="gates", variant=variant, seed=seed, metric="gate_mean", index=block)
        hist_mean = sum(r["value"] * (r["bin_hi"] - r["bin_lo"]) * (r["bin_lo"] + r["bin_hi"]) / 2 for r in group)
        assert hist_mean == pytest.approx(mean["value"], abs=(hi - lo) / bins)
    for variant in plan.variants:
        for seed in plan.seeds:
            per_block = select(recs, experiment="gates", variant=variant.name, seed=seed, metric="gate_mean")
            assert sorted(r["index"] for r in per_block if r["index"] is not None) == list(range(n_blocks))
            [overall] = [r for r in per_block if r["index"] is None]
            assert overall["value"] == pytest.approx(sum(r["value"] for r in per_block if r["index"] is not None) / n_blocks)
    # gate bias +1 opens the gates wider than the default -2, seed by seed
    for seed in plan.seeds:
        means = {v: select(recs, experiment="gates", variant=v, seed=seed, metric="gate_mean", index=None)[0]["value"]
                 for v in ("highway", "gates-open")}
        assert means["gates-open"] > means["highway"]


def test_block_width_records_are_the_networks_widths(real):
    reg, run, recs, _ = real
    for name in ("features", "gates"):
        plan = plans_by_name(run)[name]
        for variant in plan.variants:
            for depth in plan.depths:
                torch.manual_seed(0)
                net = network.build(reg, variant, depth, plan.widths[0])
                got = select(recs, experiment=name, variant=variant.name, depth=depth, metric="block_width")
                assert [r["index"] for r in got] == list(range(len(net.blocks)))
                assert [r["value"] for r in got] == net.widths[1:]
                assert all(r["seed"] is None and r["unit"] == "features" for r in got)
                [out] = select(recs, experiment=name, variant=variant.name, depth=depth, metric="out_width")
                assert out["value"] == net.widths[-1]
    # dense widths grow by the growth rate, the last block by its own (narrow-dense's last_block)
    plan = plans_by_name(run)["features"]
    for variant in plan.variants:
        params, last = reg.params_of(variant), reg.params_of(variant, last_block=True)
        grow = [params["growth_rate"]] * (plan.depths[0] - 1) + [last["growth_rate"]]
        expected = [plan.widths[0] + sum(grow[:i + 1]) for i in range(len(grow))]
        got = select(recs, experiment="features", variant=variant.name, metric="block_width")
        assert [r["value"] for r in got] == expected
    assert [r["value"] for r in select(recs, experiment="features", variant="narrow-dense", metric="block_width")] != \
           [r["value"] for r in select(recs, experiment="features", variant="dense", metric="block_width")]


# -- published values against the measured distributions --------------------------------------------------
def table_rows(text):
    """The rows of a tsv table as {header: cell}."""
    lines = text.splitlines()
    headers = [h.strip() for h in lines[0].split("\t")]
    rows = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("\t")]
        rows.append(dict(zip(headers, cells + [""] * (len(headers) - len(cells)))))
    return rows


def published_toml(entries):
    out = [REAL]
    for e in entries:
        out.append("[[published]]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in e.items()))
    return "".join(out)


def test_published_table(real, tmp_path):
    reg, run, recs, _ = real
    ratios = sorted(r["value"] for r in select(recs, experiment="flow32", variant="plain", depth=4, metric="grad_ratio"))
    assert len(ratios) == len(run.plans[0].seeds) and len(set(ratios)) == len(ratios)
    n = len(ratios)
    inside = (ratios[1] + ratios[2]) / 2
    torch.manual_seed(0)
    features = plans_by_name(run)["features"]
    dense = network.build(reg, reg.variants["dense"], features.depths[0], features.widths[0])
    weights = sum(p.numel() for p in dense.parameters() if p.dim() >= 2)
    params = sum(p.numel() for p in dense.parameters())
    flow = dict(experiment="flow32", variant="plain", metric="grad_ratio", depth=4)
    entries = [
        dict(flow, value=inside, label="inside"),
        dict(flow, value=ratios[0] / 2, label="below"),
        dict(flow, value=ratios[-1] * 2, label="above"),
        dict(experiment="features", variant="dense", metric="weights", depth=3, value=float(weights), also=["params"]),
        dict(experiment="features", variant="dense", metric="weights", depth=3, value=float(weights + 5), label="off"),
        dict(experiment="learn", variant="plain", metric="act_growth", value=1.0, label="missing"),
        dict(experiment="blowup", variant="plain", metric="mse_trained", value=1.0, label="blown"),
        dict(experiment="flow64", variant="plain", metric="grad_ratio", depth=4, value=inside, label="other experiment"),
    ]
    published = grid.make_run(fresh_registry(), write_profile(tmp_path, published_toml(entries), "pub")).published
    assert len(published) == len(entries)
    rows = table_rows(report.published_table(recs, published, "tsv"))
    where = "published value in the measured distribution"
    by_label = {row["metric"]: row for row in rows}
    below = sum(v < inside for v in ratios)
    assert by_label["inside"][where] == f"inside, percentile {100 * below / n:.0f}"
    # ratios: the median of log-ratios, as in the run's tables
    assert by_label["inside"]["measured median"] == report.fmt(results.summarize(ratios, ["ok"] * n, log=True).median)
    assert by_label["below"][where].startswith(f"below all {n} seeds (min {report.fmt(ratios[0])}")
    assert by_label["above"][where].startswith(f"above all {n} seeds (max {report.fmt(ratios[-1])}")
    assert by_label["weights"][where] == "exact"
    assert by_label["weights"]["measured median"] == report.fmt(weights)
    assert by_label["weights"]["also measured"] == f"params {report.fmt(params)}"
    assert by_label["off"][where] == f"differs by {report.fmt(-5)}"
    assert by_label["missing"]["measured median"] == "not measured"
    assert by_label["blown"]["measured median"] == "none finite (nonfinite)"
    blown = select(recs, experiment="blowup", metric="mse_trained")
    assert len(blown) == n and all(r["status"] == "nonfinite" for r in blown)
    # the experiment filter: flow64's own distribution, not flow32's
    f64 = sorted(r["value"] for r in select(recs, experiment="flow64", variant="plain", depth=4, metric="grad_ratio"))
    assert by_label["other experiment"]["measured median"] == report.fmt(results.summarize(f64, ["ok"] * n, log=True).median)


def test_published_percentile_counts_ties_half(real):
    reg, run, recs, _ = real
    ratios = sorted(r["value"] for r in select(recs, experiment="flow32", variant="residual", depth=4, metric="grad_ratio"))
    n = len(ratios)
    pub = [dict(experiment="flow32", variant="residual", metric="grad_ratio", depth=4, value=ratios[0], label="", also=[])]
    [row] = table_rows(report.published_table(recs, pub, "tsv"))
    assert row["published value in the measured distribution"].startswith(f"inside, percentile {100 * 0.5 / n:.0f}")
