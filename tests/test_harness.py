"""harness: plans from profiles, execution, streaming, resume, fault isolation, jobs; the CLI end to end."""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from conftest import as_rows as rows, clean_env, packaged_variants, plugin_dir_with
from skipbench import grid, harness, results
from skipbench.registry import load_registry
from skipbench.specs import UsageError, resolve_params

CONTRACT = ["variant", "builder", "measurement", "metric", "depth", "width", "batch", "seed", "index",
            "value", "iqr", "unit", "status", "error"]
CONTRACT_METRICS = ["grad_ratio", "grad_norm", "signal_norm", "act_norm", "rel_grad_norm", "mse_init", "mse_trained",
                    "steps_to_threshold", "params", "trainable_params", "weights", "out_width", "flops",
                    "fwd_samples_per_s", "fwdbwd_samples_per_s", "peak_mem_bytes", "gate_mean"]
TIMING = {"fwd_samples_per_s", "fwdbwd_samples_per_s", "fwd_gflop_per_s", "fwdbwd_gflop_per_s", "fwd_of_matmul",
          "fwdbwd_of_matmul", "matmul_gflop_per_s"}

FAULTY_PLUGIN = '''\
"""Drop-in test plugin: blocks that raise, raise late, or produce NaN; and measurements that record their pid."""
import os
import time

import torch
from torch import nn

import skipbench
from skipbench.measurements import record


class Boom(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        raise RuntimeError("kaboom from the boom block")


class LateBoom(Boom):
    def forward(self, x):  # fine on the all-zero probe input, raises on real data
        if bool(x.abs().sum() > 0):
            raise ValueError("late kaboom")
        return self.fc(x)


class NaNBlock(Boom):
    def forward(self, x):
        return self.fc(x) * float("nan")


@skipbench.hookimpl
def skipbench_register_builders():
    yield skipbench.BlockBuilder("boom", Boom)
    yield skipbench.BlockBuilder("late-boom", LateBoom)
    yield skipbench.BlockBuilder("nan-block", NaNBlock)


@skipbench.hookimpl
def skipbench_register_variants():
    for name in ("boom", "late-boom", "nan-block"):
        yield skipbench.Variant(name, name, tags=("faulty",))


def _pid(cell):
    return [record("pid", os.getpid())]


def _seed_pid(cell):
    # long enough for the other worker, even one slow to start on a busy machine, to take the
    # cell's other seeds
    time.sleep(3.0)
    return [record("seed_pid", os.getpid(), seed=s) for s in cell.seeds]


@skipbench.hookimpl
def skipbench_register_measurements():
    yield skipbench.Measurement("pid", _pid, metrics=("pid",), seeded=False)
    yield skipbench.Measurement("seed-pid", _seed_pid, metrics=("seed_pid",))
'''

SMALL_PROFILE = '''\
description = "tiny"
measurements = ["gradient-flow", "identity", "params"]
depths = [2, 4]
width = 8
batch = 4
seeds = 2

[options.identity]
steps = 4
eval_every = 2
eval_batch = 16
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return plugin_dir_with(tmp_path_factory, "faultyplug", FAULTY_PLUGIN)


@pytest.fixture(scope="module")
def faulty_args(plugin_dir):
    return dict(plugin_dirs=[str(plugin_dir)], entrypoints=False, env=False, pyproject=None)


@pytest.fixture(scope="module")
def faulty_registry(faulty_args):
    return load_registry(**faulty_args)


@pytest.fixture
def small_profile(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_PROFILE)
    return str(path)


def key(r):
    return tuple(str(r[k]) for k in ("variant", "measurement", "depth", "metric", "seed", "index"))


def non_timing(table):
    return sorted((r for r in rows(table) if r["metric"] not in TIMING and r["measurement"] not in ("pid", "seed-pid")),
                  key=key)


# -- plans --------------------------------------------------------------------------------------
def _packaged(name):
    return tomllib.loads((importlib.resources.files("skipbench") / "profiles" / f"{name}.toml").read_text())


@pytest.mark.parametrize("name", ["default", "quick"])
def test_plan_from_packaged_profile(registry, name):
    data = _packaged(name)
    plan = grid.make_plan(registry, name)
    assert plan.profile == name
    assert plan.measurements == data["measurements"]
    assert plan.depths == data["depths"]
    assert (plan.widths, plan.batch) == ([data["width"]], data["batch"])
    assert plan.seeds == tuple(range(data["seeds"]))
    assert [v.name for v in plan.variants] == list(registry.variants)
    for m in plan.measurements:
        expected = resolve_params(registry.measurements[m].options, data.get("options", {}).get(m, {}), m)
        assert plan.options[m] == expected
    assert plan.threads == torch.get_num_threads() and plan.jobs == 0  # 0: automatic


def test_plan_overrides(registry):
    plan = grid.make_plan(registry, "quick", variants=["res*", "plain"], measurements=["params", "identity"],
                             depths=[6], width=10, batch=3, seeds=5, threads=1, jobs=2)
    assert [v.name for v in plan.variants] == ["residual", "residual-linear", "plain"]  # patterns in order
    assert plan.measurements == ["params", "identity"]
    assert (plan.depths, plan.widths, plan.batch, plan.seeds) == ([6], [10], 3, (0, 1, 2, 3, 4))
    assert (plan.threads, plan.jobs) == (1, 2)
    assert plan.options["identity"]["steps"] == _packaged("quick")["options"]["identity"]["steps"]
    tagged = grid.make_plan(registry, "quick", tags=["gated"])
    assert [v.name for v in tagged.variants] == ["highway"]


def test_plan_from_toml_file(registry, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('measurements = ["identity"]\ndepths = [2]\nwidth = 12\nseeds = 3\nseed_start = 10\n'
                    '[options.identity]\nsteps = 7\nlr = 0.5\n')
    plan = grid.make_plan(registry, str(path), depths=[4])
    assert plan.profile == "mine"
    assert (plan.measurements, plan.depths, plan.widths, plan.seeds) == (["identity"], [4], [12], (10, 11, 12))
    defaults = resolve_params(registry.measurements["identity"].options, {}, "identity")
    assert plan.options["identity"] == {**defaults, "steps": 7, "lr": 0.5}


@pytest.mark.parametrize("text, message", [
    ("widht = 3\n", "unknown key 'widht'"),
    ("[options.identity]\nstepz = 3\n", "unknown parameter 'stepz'"),
    ("[options.identity]\nsteps = 'many'\n", "steps must be an int"),
    ("[options.nosuch]\nx = 1\n", "unknown measurement 'nosuch'"),
    ("measurements = ['nosuch']\n", "unknown measurement 'nosuch'"),
    ("depths = [2, 'x']\n", "depths must be a list of integers"),
    ("width = 'wide'\n", "width must be an int"),
    ("width = 0\n", "width must be >= 1"),
    ("width = = 3\n", "malformed TOML"),
    ("measurements = 'params'\n", "measurements must be a list of measurement names"),
    ("options = 3\n", "options must be tables"),
    ("[options]\nidentity = 3\n", "options must be tables"),
])
def test_bad_profile_is_a_usage_error(registry, tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        grid.make_plan(registry, str(path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(profile="nosuch"), "unknown profile 'nosuch'"),
    (dict(profile="missing.toml"), "does not exist"),
    (dict(measurements=["nosuch"]), "unknown measurement"),
    (dict(variants=["nosuch*"]), "unknown variant"),
    (dict(seeds=0), "seeds must be >= 1"),
    (dict(threads=0), "threads must be >= 1"),
    (dict(depths=[0]), "depth must be >= 1"),
])
def test_bad_overrides_are_usage_errors(registry, kwargs, message):
    kwargs.setdefault("profile", "quick")
    with pytest.raises(UsageError, match=message):
        grid.make_plan(registry, **kwargs)


def test_directory_named_like_a_profile_does_not_shadow_it(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").mkdir()  # e.g. an earlier run's --out quick
    assert grid.make_plan(registry, "quick").profile == "quick"


def test_tasks_skip_probes_for_builders_without_probes(registry):
    plan = grid.make_plan(registry, "quick")
    tasks = plan.tasks(registry)
    probes = {t.variant for t in tasks if t.measurement == "probes"}
    with_probes = {v.name for v in plan.variants if registry.builders[v.builder].probes}
    assert probes == with_probes and "highway" in probes and "plain" not in probes
    n_other = len(plan.measurements) - 1
    assert len(tasks) == len(plan.depths) * (len(plan.variants) * n_other + len(with_probes))
    assert len({t.key for t in tasks}) == len(tasks)


# -- execution ----------------------------------------------------------------------------------
def test_execute_streams_records(registry, small_profile, tmp_path):
    """Each finished task is one fragment, on disk before it is reported; the fragments make up
    the table execute returns."""
    plan = grid.make_plan(registry, small_profile, variants=["plain", "dense"])
    seen = []

    def on_done(task, table):
        on_disk = list(results.read_fragments(tmp_path / "records"))
        seen.append(task.key)
        assert len(on_disk) == len(seen) and on_disk[-1][0].name == f"{len(seen):06d}.arrow"
        assert rows(on_disk[-1][1]) == rows(table)  # already on disk when reported
        assert {grid.task_key(r) for r in table.to_pylist()} == {task.key}

    table = harness.execute(registry, plan, tmp_path, on_done=on_done)
    assert seen == [t.key for t in plan.tasks(registry)]
    assert rows(results.load(tmp_path)[1]) == rows(table)
    records = rows(table)
    assert all(r["status"] in ("ok", "undefined") for r in records)
    for r in records:
        assert (r["width"], r["batch"]) == (8, 4)
        assert r["builder"] == registry.variants[r["variant"]].builder
    assert {r["seed"] for r in records if r["measurement"] == "params"} == {None}
    assert {r["seed"] for r in records if r["measurement"] == "identity"} == {0, 1}


@pytest.mark.parametrize("torn", [False, True])
def test_resume_runs_only_missing_tasks(registry, small_profile, tmp_path, torn):
    plan = grid.make_plan(registry, small_profile, variants=["plain", "residual"])
    (tmp_path / "full").mkdir()
    full = harness.execute(registry, plan, tmp_path / "full")
    fragments = sorted((tmp_path / "full" / "records").iterdir())
    first = plan.tasks(registry)[0]
    first_table = results.read_fragments(tmp_path / "full" / "records").__next__()[1]
    assert {grid.task_key(r) for r in first_table.to_pylist()} == {first.key}
    part = tmp_path / "part" / "records"
    part.mkdir(parents=True)
    (part / fragments[0].name).write_bytes(fragments[0].read_bytes())
    if torn:  # an interrupted write of the next task
        (part / ".000002.arrow.abc123").write_bytes(fragments[1].read_bytes()[:200])

    rerun = []
    resumed = harness.execute(registry, plan, part.parent, on_done=lambda task, t: rerun.append(task.key), resume=True)
    assert rerun == [t.key for t in plan.tasks(registry)[1:]]
    assert sorted(rows(resumed), key=key) == sorted(rows(full), key=key)
    on_disk = results.load(part.parent)[1]
    assert sorted(rows(on_disk), key=key) == sorted(rows(full), key=key)
    assert sorted(p.name for p in part.iterdir()) == [p.name for p in fragments]  # the torn write is gone


def test_faulty_plugin_fails_only_its_own_cells(faulty_registry, small_profile, tmp_path):
    plan = grid.make_plan(faulty_registry, small_profile, variants=["boom", "late-boom", "plain"],
                             measurements=["gradient-flow", "params"])
    records = rows(harness.execute(faulty_registry, plan, tmp_path))
    by_variant = {v: [r for r in records if r["variant"] == v] for v in ("boom", "late-boom", "plain")}
    for variant, message in (("boom", "RuntimeError: kaboom from the boom block"), ("late-boom", "late kaboom")):
        recs = by_variant[variant]
        assert len(recs) == 2 * 2  # one failure record per (measurement, depth)
        assert all(r["status"] == "failed" and message in r["error"] for r in recs)
    assert "BlockFault" in by_variant["boom"][0]["error"]
    late_params = [r for r in by_variant["late-boom"] if r["measurement"] == "params"]
    assert all("ValueError: late kaboom" in r["error"] for r in late_params)  # raised while measuring, not building
    plain = by_variant["plain"]
    assert plain and all(r["status"] == "ok" for r in plain)
    assert {(r["measurement"], r["depth"]) for r in plain} == {(m, d) for m in plan.measurements for d in plan.depths}


def test_nan_block_gives_nonfinite_records_not_failures(faulty_registry, small_profile, tmp_path):
    plan = grid.make_plan(faulty_registry, small_profile, variants=["nan-block"])
    records = rows(harness.execute(faulty_registry, plan, tmp_path))
    assert records and not any(r["status"] == "failed" for r in records)
    status = {(r["metric"], r["status"]) for r in records}
    for metric in ("grad_norm", "act_norm", "grad_ratio", "mse_init", "mse_trained"):
        assert (metric, "nonfinite") in status
        assert all(r["error"] for r in records if r["metric"] == metric)
    steps = [r for r in records if r["metric"] == "steps_to_threshold"]
    assert steps and all(r["status"] == "undefined" for r in steps)
    assert all(r["status"] == "ok" for r in records if r["measurement"] == "params")


def test_jobs_give_the_same_records(faulty_registry, faulty_args, tmp_path):
    """Worker processes (forkserver) produce the records one process does, bit for bit."""
    profile = tmp_path / "p.toml"
    profile.write_text(SMALL_PROFILE.replace('"params"]', '"params", "probes", "pid"]'))
    plans = {jobs: grid.make_plan(faulty_registry, str(profile), variants=["plain", "dense", "highway"], jobs=jobs)
             for jobs in (1, 2)}
    runs = {}
    for jobs, plan in plans.items():
        (tmp_path / str(jobs)).mkdir()
        runs[jobs] = harness.execute(faulty_registry, plan, tmp_path / str(jobs), registry_args=faulty_args)
    pids = {r["value"] for r in rows(runs[2]) if r["metric"] == "pid"}
    assert pids and os.getpid() not in pids  # the tasks really ran in workers
    assert {r["value"] for r in rows(runs[1]) if r["metric"] == "pid"} == {os.getpid()}
    assert non_timing(runs[2]) == non_timing(runs[1])
    assert len(non_timing(runs[1])) > 100


def test_a_cells_seeds_split_over_workers_give_the_records_of_one_process(faulty_registry, faulty_args, tmp_path):
    """A cell that alone is more than half a worker's share has its seeds split over the
    workers (seed-pid records which process ran each seed); every seed's records are those of
    one in-process run, bit for bit."""
    profile = tmp_path / "p.toml"
    profile.write_text(SMALL_PROFILE.replace('["gradient-flow", "identity", "params"]', '["gradient-flow", "seed-pid"]')
                       .replace("depths = [2, 4]", "depths = [6]").replace("seeds = 2", "seeds = 6"))
    plans = {jobs: grid.make_plan(faulty_registry, str(profile), variants=["residual"], jobs=jobs) for jobs in (1, 2)}
    tasks = plans[2].tasks(faulty_registry)
    assert all(parts == [(0, 1, 2), (3, 4, 5)] for _, parts in harness.schedule(faulty_registry, [plans[2]], tasks, 2))
    runs = {}
    for jobs, plan in plans.items():
        (tmp_path / str(jobs)).mkdir()
        runs[jobs] = harness.execute(faulty_registry, plan, tmp_path / str(jobs), registry_args=faulty_args)
    pid_of = {r["seed"]: r["value"] for r in rows(runs[2]) if r["metric"] == "seed_pid"}
    assert sorted(pid_of) == list(range(6)) and len(set(pid_of.values())) == 2 and os.getpid() not in pid_of.values()
    assert non_timing(runs[2]) == non_timing(runs[1]) and len(non_timing(runs[1])) > 50


def test_schedule_puts_big_cells_first_and_splits_only_dominant_ones(faulty_registry, tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text(SMALL_PROFILE.replace("depths = [2, 4]", "depths = [2, 4, 40]").replace("seeds = 2", "seeds = 4"))
    plan = grid.make_plan(faulty_registry, str(profile), variants=["plain", "residual"], jobs=2)
    tasks = plan.tasks(faulty_registry)
    order = harness.schedule(faulty_registry, [plan], tasks, 2)
    assert sorted(t.key for t, _ in order) == sorted(t.key for t in tasks)
    by_measurement = [[t.depth for t, _ in order if t.measurement == m] for m in ("gradient-flow", "identity")]
    assert all(depths == sorted(depths, reverse=True) for depths in by_measurement)  # biggest first
    assert [t.measurement for t, _ in order].index("identity") > [t.measurement for t, _ in order].index("gradient-flow")
    split = {(t.measurement, t.depth) for t, parts in order if parts != [None]}
    assert split == set()  # four depth-40 cells: none is more than half a worker's share
    one = [t for t in tasks if t.depth == 40 and t.measurement == "gradient-flow" and t.variant == "plain"]
    assert harness.schedule(faulty_registry, [plan], one + [t for t in tasks if t.depth == 2], 2)[0][1] == [(0, 1), (2, 3)]


def test_new_run_dir_never_reuses_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = [harness.new_run_dir(None) for _ in range(4)]
    assert len(set(made)) == 4 and all(p.is_dir() and p.parent.name == "skipbench-results" for p in made)
    out = tmp_path / "out" / "nested"
    assert harness.new_run_dir(str(out)) == out and (out / "records").is_dir()  # claimed
    with pytest.raises(UsageError, match="runs never overwrite"):
        harness.new_run_dir(str(out))  # a second run on the same --out
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        harness.new_run_dir(str(tmp_path / "full"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError):
        harness.new_run_dir(str(tmp_path / "file"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert harness.new_run_dir(str(empty)) == empty  # an empty directory may be used once


def test_metadata(registry):
    plan = grid.make_plan(registry, "quick", seeds=3)
    meta = harness.metadata(plan, registry)
    assert meta["skipbench"] == __import__("skipbench").__version__
    assert meta["torch"] == torch.__version__
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert (meta["device"], meta["threads"], meta["profile"], meta["seeds"]) == ("cpu", plan.threads, "quick", [0, 1, 2])
    assert meta["cpu"] and "git_commit" in meta
    assert {p["name"] for p in meta["plugins"]} >= {"plain", "residual", "dense", "highway"}
    json.dumps(meta)


# -- the command line, end to end ---------------------------------------------------------------
def cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "skipbench", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`skipbench run --all --profile quick --out D`, once for the module."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = cli("run", "--all", "--profile", "quick", "--out", "D", cwd=cwd)
    return proc, cwd / "D"


def test_cli_quick_run_writes_the_run_directory(quick_run):
    proc, run_dir = quick_run
    assert proc.returncode == 0, proc.stderr
    for name in ("results.parquet", "results.json", "results.csv", "gradient-flow-grad_norm.png",
                 "gradient-flow-grad_norm.svg", "gradient-flow-signal_norm.png"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    for directory in (run_dir, run_dir / "records"):
        assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temporary files left
    payload = json.loads((run_dir / "results.json").read_text())
    assert list(payload) == ["meta"]  # the records are in results.parquet and .csv
    meta = payload["meta"]
    for k in ("skipbench", "torch", "python", "device", "threads", "cpu", "git_commit", "profile", "seeds"):
        assert k in meta, k
    assert (meta["profile"], meta["seeds"], meta["torch"]) == ("quick", [0, 1], torch.__version__)
    fragments = [table for _, table in results.read_fragments(run_dir / "records")]
    assert len(fragments) == len([line for line in proc.stderr.splitlines() if line.startswith("[")])  # one a task
    assert rows(results.load(run_dir)[1]) == rows(results.concat(fragments))


def test_cli_quick_run_csv_has_the_contract(quick_run):
    proc, run_dir = quick_run
    with open(run_dir / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    assert header[:len(CONTRACT)] == CONTRACT
    metrics = {r["metric"] for r in rows}
    assert set(CONTRACT_METRICS) <= metrics, set(CONTRACT_METRICS) - metrics
    assert {r["variant"] for r in rows} == set(packaged_variants())
    assert {r["status"] for r in rows} <= {"ok", "undefined"}
    assert {r["variant"] for r in rows if r["metric"] == "gate_mean"} == {"highway"}


def test_cli_quick_run_prints_a_table_per_measurement(quick_run):
    proc, _ = quick_run
    for name in ("gradient-flow", "identity", "params", "throughput", "probes"):
        assert f"== {name} ==" in proc.stdout
    assert "grad_ratio" in proc.stdout and "mse_init" in proc.stdout and "fwd_samples_per_s" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_cli_github_format(tmp_path):
    proc = cli("run", "plain", "dense", "-m", "params", "--profile", "quick", "--format", "github",
               "--out", "D", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("== params ==")[1].strip().split("\n\n")[0].splitlines()
    assert table[0].startswith("| variant") and set(table[1]) <= set("|-: ")
    assert len(table) == 2 + 2 * 2  # header, rule, 2 variants x 2 depths


def test_cli_failing_plugin_exits_1_with_a_summary(tmp_path, plugin_dir):
    proc = cli("run", "boom", "plain", "-m", "params", "--profile", "quick", "--plugins-dir", str(plugin_dir),
               "--out", "D", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "2 cell(s) failed" in proc.stderr
    assert "kaboom from the boom block" in proc.stderr
    assert "Traceback" not in proc.stderr
    _, table = results.load(tmp_path / "D")
    records = table.to_pylist()
    assert {r["status"] for r in records if r["variant"] == "plain"} == {"ok"}
    assert {r["status"] for r in records if r["variant"] == "boom"} == {"failed"}


def test_python_m_and_console_script(tmp_path):
    proc = cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"skipbench {__import__('skipbench').__version__}"
    script = Path(sys.executable).parent / "skipbench"
    script = str(script) if script.exists() else shutil.which("skipbench")
    assert script, "the skipbench console script is not installed"
    proc = subprocess.run([script, "list"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()}
    assert {"plain", "residual", "dense", "highway"} <= names


def test_resume_retries_failed_tasks(faulty_registry, small_profile, tmp_path):
    """A task that failed is run again on resume; its old failure's fragment is removed."""
    plan = grid.make_plan(faulty_registry, small_profile, variants=["plain"], measurements=["params"])
    stream = results.FragmentStream(tmp_path / "records")
    for d in plan.depths:
        stream.write(results.failure("RuntimeError: flaky", variant="plain", builder="plain", measurement="params",
                                     depth=d, width=plan.widths[0], batch=plan.batch, experiment=""))
    rerun = []
    table = harness.execute(faulty_registry, plan, tmp_path, on_done=lambda t, _: rerun.append(t.key), resume=True)
    assert rerun == [t.key for t in plan.tasks(faulty_registry)]
    records = rows(table)
    assert records and all(r["status"] == "ok" for r in records)
    on_disk = results.load(tmp_path)[1]
    assert sorted(rows(on_disk), key=key) == sorted(records, key=key)
    fragments = [table for _, table in results.read_fragments(tmp_path / "records")]
    assert len(fragments) == len(plan.depths) and not any(results.count(t, "failed") for t in fragments)


@pytest.mark.parametrize("table, message", [
    ("[options.identity]\neval_every = 0", "eval_every=0 is too small"),
    ("[options.identity]\nsteps = -1", "steps=-1 is too small"),
    ("[options.probes]\nrows = 0", "rows=0 is too small"),
])
def test_out_of_range_options_are_usage_errors(registry, tmp_path, table, message):
    """Option values below their declared minimum stop the plan, whether or not the measurement runs."""
    path = tmp_path / "p.toml"
    path.write_text('measurements = ["params"]\n' + table + "\n")
    with pytest.raises(UsageError, match=message):
        grid.make_plan(registry, str(path), variants=["plain"])


def test_repeated_depths_and_measurements_make_one_task_each(registry, small_profile):
    plan = grid.make_plan(registry, small_profile, variants=["plain"], measurements=["params", "params"],
                             depths=[2, 2, 4])
    tasks = plan.tasks(registry)
    assert len(tasks) == len(set(tasks)) == 2


def test_profile_depths_below_one_block_are_left_out_for_that_variant(registry, tmp_path):
    """A profile's depth 1 runs for plain but not for residual (2 layers per block); asked for
    on the command line, the same depth is a usage error."""
    path = tmp_path / "p.toml"
    path.write_text('measurements = ["params"]\ndepths = [1, 2]\n')
    plan = grid.make_plan(registry, str(path), variants=["plain", "residual"])
    assert {(t.variant, t.depth) for t in plan.tasks(registry)} == {("plain", 1), ("plain", 2), ("residual", 2)}
    with pytest.raises(UsageError, match="impossible for variant 'residual'"):
        grid.make_plan(registry, str(path), variants=["plain", "residual"], depths=[1])
