"""A researcher's sweep, three ways: in-process, with local worker processes, on a Dask cluster.

    python benchmarks/sweep.py                # 12 variants x 8 depths (2..256) x 2 widths x 64 seeds
    python benchmarks/sweep.py --quick        # 4 variants x 3 depths x 2 widths x 8 seeds (a smoke run)
    python benchmarks/sweep.py --only dask    # one of: inprocess, jobs2, dask

Each way is one fresh `PYTHON -P -m skipbench run ... -m gradient-flow` process (imports, plugin
discovery and the Dask cluster's start included) writing to a temporary run directory:
``--jobs 1`` (in-process), ``--jobs 2`` (two local worker processes of one thread each) and
``--dask-workers 2`` (a Dask LocalCluster of two one-thread workers). Prints the wall time of each
and its ratio to the in-process run, checks that the three runs' records are identical, then
projects the wall time on N workers from the in-process run's per-task costs (the differences
between the times its progress lines report):

    T(N) = fixed + max(total / N / efficiency, longest part)

`fixed` is the in-process wall time not spent in tasks (imports, planning, the tables and the
report), `total` the sum of the task costs, `longest part` the costliest task split into seed
parts as the harness splits big cells, and `efficiency` the measured parallel efficiency of the
two-worker Dask run, total / 2 / (its wall time - fixed - its start-up). A benchmark, not a test:
the figures depend on the machine and what else runs on it; run it alone.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ["plain", "residual", "dense", "dense-efficient", "highway", "rezero", "skipinit", "fixup",
            "layerscale", "preln", "deepnorm", "nf-residual"]
FULL = dict(variants=VARIANTS, depths=[2, 4, 8, 16, 32, 64, 128, 256], widths=[32, 64], seeds=64)
QUICK = dict(variants=VARIANTS[:4], depths=[2, 8, 32], widths=[16, 32], seeds=8)
WAYS = {"inprocess": ["--jobs", "1"], "jobs2": ["--jobs", "2"], "dask": ["--dask-workers", "2"]}
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (.*): (ok|FAILED) \(([\d.]+)s\)$")


def sweep_args(grid: dict, batch: int) -> list[str]:
    """The `skipbench run` arguments of the sweep."""
    return [*grid["variants"], "-m", "gradient-flow", "--depths", *map(str, grid["depths"]),
            "--widths", *map(str, grid["widths"]), "--seeds", str(grid["seeds"]), "--batch", str(batch),
            "--no-figures"]


def run(args: list[str], out: Path) -> tuple[float, list[tuple[str, float]]]:
    """Wall seconds of one fresh `skipbench run ARGS --out OUT`, and its progress: (task,
    seconds since the run's tasks started) per finished task."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-P", "-m", "skipbench", "run", *args, "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"skipbench run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    progress = [(m.group(3), float(m.group(5))) for m in map(PROGRESS.match, done.stderr.splitlines()) if m]
    return wall, progress


def task_costs(progress: list[tuple[str, float]]) -> list[float]:
    """Per-task seconds of an in-process run (its tasks run one after another)."""
    times = [t for _, t in progress]
    return [b - a for a, b in zip([0.0] + times, times)]


def records(run_dir: Path) -> list[tuple]:
    """The run's rows as sorted tuples (NaN-safe), to check that the ways agree."""
    from skipbench import results

    table = results.load(run_dir)[1]
    rows = [tuple("nan" if v != v else v for v in row.values()) for row in table.to_pylist()]
    return sorted(rows, key=repr)


def projection(wall: float, costs: list[float], dask_wall: float, dask_start: float,
               parts: int = 2) -> tuple[list[tuple[int, float]], float]:
    """(N, projected seconds) for N workers (see the module's docstring), and the measured
    parallel efficiency at two."""
    total = sum(costs)
    fixed = wall - total
    busy = dask_wall - fixed - dask_start
    efficiency = min(1.0, total / 2 / busy) if busy > 0 else 1.0
    longest = max(costs) / parts
    return [(n, fixed + dask_start + max(total / n / efficiency, longest)) for n in (1, 2, 4, 8, 16, 32, 64)], efficiency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small sweep (smoke run)")
    parser.add_argument("--only", choices=sorted(WAYS), action="append", help="run only these ways")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    opts = parser.parse_args()
    grid = QUICK if opts.quick else FULL
    args = sweep_args(grid, opts.batch)
    tasks = len(grid["variants"]) * len(grid["depths"]) * len(grid["widths"])
    print(f"sweep: {len(grid['variants'])} variants x {len(grid['depths'])} depths (up to {max(grid['depths'])}) x "
          f"{len(grid['widths'])} widths x {grid['seeds']} seeds = {tasks} gradient-flow cells, batch {opts.batch}")
    walls, progress, dirs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in opts.only or list(WAYS):
            dirs[way] = Path(tmp) / way
            walls[way], progress[way] = run(args + WAYS[way], dirs[way])
            first = progress[way][0][1] if progress[way] else 0.0
            print(f"{way:>10}: {walls[way]:7.1f} s wall (first task done after {first:.1f} s)", flush=True)
        if "inprocess" in walls:
            for way in walls:
                print(f"{way:>10}: {walls['inprocess'] / walls[way]:.2f}x the in-process speed")
            same = all(records(dirs[w]) == records(dirs["inprocess"]) for w in walls)
            print(f"records identical across the ways: {same}")
        if {"inprocess", "dask"} <= set(walls):
            costs = task_costs(progress["inprocess"])
            # the in-process run's first task includes nothing but its own cost; the Dask run's
            # first task also waits for the cluster: the difference is the cluster's start-up
            dask_start = max(0.0, progress["dask"][0][1] - min(costs)) if progress["dask"] else 0.0
            rows, efficiency = projection(walls["inprocess"], costs, walls["dask"], dask_start)
            print(f"per-task cost: total {sum(costs):.1f} s, median {sorted(costs)[len(costs) // 2]:.2f} s, "
                  f"max {max(costs):.1f} s; Dask start-up {dask_start:.1f} s; parallel efficiency at 2 workers "
                  f"{efficiency:.2f}")
            print("projected wall time on N Dask workers: " + ", ".join(f"N={n}: {t:.0f} s" for n, t in rows))


if __name__ == "__main__":
    main()
