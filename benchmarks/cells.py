"""Where a run's time goes, cell by cell: every task of a profile timed in this process.

    python benchmarks/cells.py [--profile seed] [--seeds N] [--experiment NAME ...] [--repeat 1] [--top 15]
    python benchmarks/cells.py --all --profile quick    # variants as `skipbench run` takes them

Runs each task of the run with harness.run_task in this process with one thread, as a worker
process runs it (its heap and garbage collector set up as a worker's), after one warm-up task
(first-call costs), and prints the slowest tasks (median of --repeat), each one's share of the
total, and the totals per experiment and per variant.
On 2 cores the task phase of `skipbench run` (two worker processes) takes about half the total;
the rest of a run's wall clock is its start (imports, starting the workers) and its end
(results, theory, figures, report). Start performance work from this table, then profile the
cells at its top (torch.profiler, perf) and compare a change with the cell alone, alternating.
A benchmark, not a test: the figures depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from tabulate import tabulate

from skipbench import grid
from skipbench.engine import heap
from skipbench.harness import run_task
from skipbench.registry import load_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help="variant names, wildcards allowed (default: the profile's)")
    parser.add_argument("--all", action="store_true", help="every registered variant")
    parser.add_argument("--profile", default="seed")
    parser.add_argument("--seeds", type=int, default=None, help="the profile's own by default")
    parser.add_argument("--experiment", action="append", default=[], help="only this experiment (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="times each task runs; the median is shown")
    parser.add_argument("--top", type=int, default=15, help="slowest tasks shown")
    args = parser.parse_args()

    torch.set_num_threads(1)
    registry = load_registry()
    run = grid.make_run(registry, args.profile, args.variants, seeds=args.seeds, select_all=args.all,
                        only_experiments=args.experiment)
    tasks = [(plan, task) for plan in run.plans for task in plan.tasks(registry)]
    heap.set_up_worker()  # as harness._local_worker_init sets up a worker
    run_task(registry, *tasks[0])  # warm-up
    seconds = []
    for plan, task in tasks:
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run_task(registry, plan, task)
            samples.append(time.perf_counter() - t0)
        seconds.append(statistics.median(samples))
    total = sum(seconds)

    def share(s: float) -> str:
        return f"{100 * s / total:.1f}"

    slowest = sorted(zip(seconds, (task for _, task in tasks)), key=lambda st: -st[0])[:args.top]
    print(tabulate([(t.experiment or "-", t.variant, t.measurement, t.depth, f"{s:.2f}", share(s)) for s, t in slowest],
                   ["experiment", "variant", "measurement", "depth", "seconds", "%"]))
    for what in ("experiment", "variant"):
        sums: dict[str, float] = defaultdict(float)
        for (_, task), s in zip(tasks, seconds):
            sums[getattr(task, what) or "-"] += s
        print()
        print(tabulate([(k, f"{v:.2f}", share(v)) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])],
                       [what, "seconds", "%"]))
    print(f"\n{len(tasks)} tasks, {len(run.settings.seeds)} seeds, one thread: {total:.1f} s in all "
          f"(median of {args.repeat} per task; about {total / 2:.1f} s of task phase on 2 cores)")


if __name__ == "__main__":
    main()
