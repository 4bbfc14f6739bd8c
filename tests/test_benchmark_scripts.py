"""The scripts under benchmarks/ still run: each once, on tiny settings, in a fresh process.

Their figures belong to the machine they run on; these tests only check that the scripts work
end to end and print (or write) what their docstrings promise, so that they do not rot between
the times somebody measures with them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT


def run_script(name: str, *args: str) -> str:
    """stdout of `python benchmarks/NAME ARGS`, which must exit 0."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_seeds_scaling_times_one_and_many_seeds_and_the_weights_alone():
    out = run_script("seeds.py", "scaling", "--seeds", "3", "--depth", "4", "--repeat", "1")
    lines = [line for line in out.splitlines() if " depth 4: " in line]
    assert [line.split()[0] for line in lines] == ["seed-plain", "seed-residual"]
    for line in lines:
        assert "1 seed " in line and "3 seeds " in line and "x one seed" in line and "(draws, fills, casts)" in line


def test_seeds_against_numpy_alternates_whole_processes():
    out = run_script("seeds.py", "numpy", "--seeds", "2", "--repeat", "1")
    assert "round 1/1: skipbench " in out and "experiment 1 at 2 seeds, whole processes, median of 1" in out


def test_protocol_numpy_writes_every_cells_ratios(tmp_path):
    path = tmp_path / "ratios.json"
    out = run_script("protocol_numpy.py", "--seeds", "3", "--out", str(path))
    ratios = json.loads(path.read_text())
    assert sorted(ratios) == sorted(f"{kind} {d}" for kind in ("plain", "residual") for d in (5, 10, 20, 50, 100))
    assert all(len(v) == 3 and all(math.isfinite(r) and r > 0 for r in v) for v in ratios.values())
    assert "numpy, 3 seeds: " in out


def test_throughput_check_prints_each_round_and_the_agreement():
    out = run_script("throughput_check.py", "--width", "16", "--depth", "4", "--batch", "8", "--rounds", "2",
                     "--min-run-time", "0.01")
    assert "round 1/2: skipbench " in out and "round 2/2: " in out and "the machine's noise floor" in out


def test_cells_lists_the_slowest_tasks_and_the_totals():
    out = run_script("cells.py", "plain", "residual", "--profile", "quick", "--seeds", "2", "--top", "3")
    tasks, totals, variants, summary = out.strip().split("\n\n")
    rows = tasks.splitlines()[2:]
    assert len(rows) == 3 and all(r.split()[1] in ("plain", "residual") for r in rows)
    seconds = [float(r.split()[-2]) for r in rows]
    assert seconds == sorted(seconds, reverse=True) and seconds[0] > 0
    assert sorted(line.split()[0] for line in variants.splitlines()[2:]) == ["plain", "residual"]
    assert sum(float(line.split()[-1]) for line in variants.splitlines()[2:]) == pytest.approx(100, abs=0.2)
    assert "tasks, 2 seeds, one thread: " in summary


def test_wallclock_times_a_whole_run():
    out = run_script("wallclock.py", "--repeat", "1", "--", "plain", "--profile", "quick", "-m", "params")
    assert "run 1/1: " in out and "median" in out and "peak RSS" in out


def test_wallclock_against_another_interpreter_alternates_and_prints_the_ratio():
    out = run_script("wallclock.py", "--repeat", "2", "--against", sys.executable, "--",
                     "plain", "--profile", "quick", "-m", "params")
    assert "round 1/2: this " in out and "round 2/2: against " in out and "peak RSS" in out
    assert "x as fast as against" in out and f"   {sys.executable}" in out


def test_sweep_runs_and_its_projection_reproduces_the_measured_two_workers():
    out = run_script("sweep.py", "--quick", "--only", "inprocess")
    assert "inprocess: " in out and "s wall" in out and "records identical across the ways: True" in out
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "benchmarks" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    # 8 tasks of 10 s in a 100 s run (20 s fixed); two Dask workers took 80 s after a 5 s start
    rows, efficiency = sweep.projection(100.0, [10.0] * 8, 80.0, 5.0)
    projected = dict(rows)
    assert efficiency == pytest.approx(40 / 55)
    assert projected[2] == pytest.approx(80.0)  # the measured point, reproduced
    assert projected[1] == pytest.approx(25 + 80 / efficiency)
    assert projected[64] == pytest.approx(25 + 10 / 2)  # the longest task's seed parts decide
    assert sweep.task_costs([("a", 1.5), ("b", 4.0), ("c", 4.25)]) == [1.5, 2.5, 0.25]
