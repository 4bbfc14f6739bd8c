"""Runs on a Dask cluster: a LocalCluster of two workers gives the records of one process, a big
cell's seeds split over its workers; a worker killed mid-run has its parts retried elsewhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import as_rows, clean_env, plugin_dir_with
from skipbench import results
from test_harness import SMALL_PROFILE

pytest.importorskip("distributed")

SLOW_PLUGIN = '''\
"""A measurement that records which process ran each seed, slowly enough to be caught mid-run."""
import os
import time

import skipbench
from skipbench.measurements import record


def _seed_pid(cell):
    time.sleep(1.0)
    return [record("seed_pid", os.getpid(), seed=s) for s in cell.seeds]


@skipbench.hookimpl
def skipbench_register_measurements():
    yield skipbench.Measurement("seed-pid", _seed_pid, metrics=("seed_pid",))
'''

TINY = ["--depths", "2", "24", "--width", "8", "--batch", "4", "--seeds", "6", "--no-figures"]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return plugin_dir_with(tmp_path_factory, "seedpid", SLOW_PLUGIN)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "tiny.toml"
    path.write_text(SMALL_PROFILE)  # the flags override its grid; its identity options stay
    return path


def run(tmp_path, name: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "skipbench", "run", *args, "--out", str(out)], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr
    return done, str(out)


def measured(run_dir: str, drop=("seed_pid",)) -> list[dict]:
    """The run's non-timing rows (not the pids of whoever ran them), sorted."""
    table = results.load(run_dir)[1]
    rows = [r for r in as_rows(table) if r["measurement"] != "throughput" and r["metric"] not in drop]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_a_local_cluster_gives_the_records_of_one_process(tmp_path, plugin_dir, profile):
    """`--dask-workers 2`: every non-timing record equals the in-process run's, the big cell's
    seeds ran on both workers, the timing ran after the rest, and the run says where it ran."""
    args = ["plain", "-m", "gradient-flow", "-m", "identity", "-m", "seed-pid", "-m", "throughput",
            "--plugins-dir", str(plugin_dir), "--profile", str(profile), *TINY]
    local, local_dir = run(tmp_path, "local", *args, "--jobs", "1")
    dask, dask_dir = run(tmp_path, "dask", *args, "--dask-workers", "2")
    assert local.returncode == 0 and dask.returncode == 0, dask.stderr
    assert measured(dask_dir) == measured(local_dir)
    assert len(measured(local_dir)) > 50
    meta = json.loads((tmp_path / "dask" / "results.json").read_text())["meta"]
    assert meta["execution"]["executor"] == "dask" and meta["execution"]["workers"] == 2
    assert meta["execution"]["timing_workers"]
    pids = {}
    for r in as_rows(results.load(dask_dir)[1]):
        if r["metric"] == "seed_pid":
            pids.setdefault((r["variant"], r["depth"]), set()).add(r["value"])
    assert os.getpid() not in set().union(*pids.values())
    assert any(len(p) == 2 for p in pids.values()), pids  # a big cell's seeds split over both workers
    throughput = [r for r in as_rows(results.load(dask_dir)[1]) if r["measurement"] == "throughput"]
    assert throughput and all(r["status"] == "ok" for r in throughput)


def test_a_worker_killed_mid_run_has_its_parts_retried(tmp_path, plugin_dir, profile):
    """A worker of an existing cluster (`--scheduler`) killed with SIGKILL while the run is
    going: its parts run again on the other worker (its nanny starts a new one), the run
    completes, and its records equal an in-process run's."""
    from distributed import Client, LocalCluster

    args = ["plain", "highway", "-m", "gradient-flow", "-m", "seed-pid",
            "--plugins-dir", str(plugin_dir), "--profile", str(profile), *TINY]
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        out = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-m", "skipbench", "run", *args, "--scheduler", cluster.scheduler_address,
                                 "--out", str(out)], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while len(results.fragment_paths(out / results.FRAGMENTS)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the run wrote no fragment"
            time.sleep(0.1)
        busy = []
        while not busy and proc.poll() is None:  # a worker in the middle of a part
            busy = [addr for addr, keys in client.processing().items() if keys]
        assert busy, "the run ended before a worker could be killed"
        victim = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    reference, reference_dir = run(tmp_path, "reference", *args, "--jobs", "1")
    assert reference.returncode == 0
    kept = measured(str(out))
    assert kept == measured(reference_dir)
    tasks = {(r["variant"], r["measurement"], r["depth"]) for r in as_rows(results.load(str(out))[1])}
    assert len(results.fragment_paths(out / results.FRAGMENTS)) == len(tasks) == 8  # each task once


def test_workers_with_other_versions_are_refused(monkeypatch):
    """A worker whose skipbench, torch or Python differs from this process's would measure
    another run: the cluster is refused, in one line naming the worker and both versions."""
    import skipbench
    from skipbench import executors
    from skipbench.specs import UsageError

    monkeypatch.setattr(skipbench, "__version__", "0.0-here")  # this process only, not the workers
    with pytest.raises(UsageError, match=r"^the Dask worker tcp://\S+ \(and 0 more\) runs skipbench \d\S*, torch "
                                         r".* this process skipbench 0\.0-here, .*: install the same versions") as err:
        executors.DaskWorkers(lambda: None, (), None, workers=1)
    assert "\n" not in str(err.value)
