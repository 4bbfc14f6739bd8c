"""What vectorized seeds buy: skipbench against the study's per-seed NumPy, and many seeds against one.

    python benchmarks/seeds.py numpy   [--seeds 256] [--repeat 3]
    python benchmarks/seeds.py scaling [--seeds 64] [--depth 50] [--repeat 5]

numpy: the study's experiment 1 (plain and residual, depths 5-100) as a whole
`skipbench run --profile seed --experiment gradient-flow seed-plain seed-residual` process and as
benchmarks/protocol_numpy.py, alternating, each a fresh process; prints every time, the medians
and how many times faster skipbench is.

scaling: in one process, the gradient-flow cell of the seed profile's plain and residual networks
at one depth, with 1 seed and with --seeds seeds (the build and everything, after a warm-up);
prints the medians and their ratio, and how much of the many-seed cell is making the seeds' own
weights (draws, fills, casts: a floor that vectorizing cannot lower).

Benchmarks, not tests: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wallclock import run_once, show  # noqa: E402  (the same fresh-process timing as wallclock.py)


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return time.perf_counter() - t0


def against_numpy(seeds: int, repeat: int) -> None:
    """Alternate whole skipbench and NumPy processes; print the times, skipbench's peak memory
    (largest process; then, in a last run not timed, the PSS of all its processes) and the
    speed-up."""
    times, rss = {"skipbench": [], "numpy": []}, []
    args = ["--profile", "seed", "--experiment", "gradient-flow", "seed-plain", "seed-residual", "--seeds", str(seeds)]
    for i in range(repeat):
        seconds, largest, _ = run_once(sys.executable, args)
        times["skipbench"].append(seconds)
        rss.append(largest)
        times["numpy"].append(_wall([sys.executable, str(HERE / "protocol_numpy.py"), "--seeds", str(seeds)]))
        print(f"round {i + 1}/{repeat}: skipbench {show(seconds, largest)}; numpy {times['numpy'][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    tree = run_once(sys.executable, args, pss=True)[2]
    print(f"experiment 1 at {seeds} seeds, whole processes, median of {repeat}: skipbench {med['skipbench']:.2f} s "
          f"(peak RSS {max(rss) / 2**20:,.0f} MiB, all processes, PSS {tree / 2**20:,.0f} MiB), "
          f"per-seed numpy {med['numpy']:.2f} s: skipbench is {med['numpy'] / med['skipbench']:.2f}x as fast")


def scaling(seeds: int, depth: int, repeat: int) -> None:
    """Cell time with `seeds` seeds against one seed, for the seed profile's plain and residual nets."""
    import torch

    from skipbench import grid
    from skipbench.harness import run_task
    from skipbench.engine.stack import SeedNets
    from skipbench.measurements import Cell
    from skipbench.registry import load_registry

    registry = load_registry()
    torch.set_num_threads(os.cpu_count() or 1)
    for variant in ("seed-plain", "seed-residual"):
        cost = {}
        for n in (1, seeds):
            run = grid.make_run(registry, "seed", [variant], seeds=n, only_experiments=["gradient-flow"], depths=[depth])
            [plan] = run.plans
            [task] = plan.tasks(registry)
            run_task(registry, plan, task)  # warm-up: imports, first-call costs
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                records = run_task(registry, plan, task)
                samples.append(time.perf_counter() - t0)
                statuses = set(records["status"].to_pylist())
                assert statuses == {"ok"}, statuses
            cost[n] = statistics.median(samples)
        # what vectorizing cannot share: every seed's own weights (the build's tensor operations,
        # replayed: draws, fills, dtype casts; see replay.py)
        cell = Cell(registry, plan.variants[0], depth, task.width, plan.batch, plan.seeds, plan.device,
                    plan.options["gradient-flow"])
        nets = SeedNets(cell)
        nets.template  # records the build once, as a cell does
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            [nets.state(s) for s in cell.seeds]
            samples.append(time.perf_counter() - t0)
        weights = statistics.median(samples)
        print(f"{variant} depth {depth}: 1 seed {cost[1] * 1e3:.1f} ms, {seeds} seeds {cost[seeds] * 1e3:.1f} ms "
              f"({cost[seeds] / cost[1]:.2f}x one seed; median of {repeat}); of which the {seeds} seeds' weights "
              f"(draws, fills, casts) {weights * 1e3:.1f} ms ({weights / cost[1]:.2f}x one seed's whole cell)")


def main() -> None:
    """Parse the command line and run one benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=("numpy", "scaling"))
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--repeat", type=int)
    args = parser.parse_args()
    if args.benchmark == "numpy":
        against_numpy(args.seeds or 256, args.repeat or 3)
    else:
        scaling(args.seeds or 64, args.depth, args.repeat or 5)


if __name__ == "__main__":
    main()
