"""Wall-clock time and peak memory of whole `skipbench run` commands, as a user runs them.

    python benchmarks/wallclock.py                       # `skipbench run --all`, 3 repeats
    python benchmarks/wallclock.py --repeat 5 -- --all --profile quick
    python benchmarks/wallclock.py --against OTHER_VENV/bin/python -- --all --profile quick
    python benchmarks/wallclock.py --pss --repeat 1 -- --profile seed   # memory of all processes

Each run is a fresh process (imports and plugin discovery included), `PYTHON -P -m skipbench run
ARGS` writing to a fresh temporary run directory: -P keeps the current directory off sys.path, so
that each interpreter runs its own installed skipbench even from inside a checkout. Prints every
time with the process's peak resident set size (os.wait4's ru_maxrss: the process, or the largest
of the children it waited for), then the median.

With --against PYTHON, the other interpreter's skipbench (another commit's, installed in another
venv) runs alternately with this one's, the order swapped every round so that neither always runs
first; prints both medians and their ratio, how many times as fast this interpreter's code is.
A benchmark, not a test: the figures depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def tree_rss(pid: int) -> int:
    """Proportional resident bytes (PSS: a page shared by n processes counts 1/n in each) of
    process `pid` and all its descendants now (Linux /proc; 0 elsewhere). Worker processes
    forked from one server share torch's pages, which a sum of RSS would count once each."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as fh:
                stack += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total


def _sample_tree(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.5):  # reading smaps_rollup takes the process's memory lock: not too often
        peak[0] = max(peak[0], tree_rss(pid))


def run_once(python: str, args: list[str], pss: bool = False) -> tuple[float, int, int]:
    """Seconds, peak RSS of the largest process and, with `pss`, peak PSS of the whole process
    tree (worker processes included, sampled every 0.5 s; see tree_rss; else 0), in bytes, of
    one fresh `PYTHON -P -m skipbench run ARGS` process. Sampling slows the run a little (it
    takes each process's memory lock): time without it."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [python, "-P", "-m", "skipbench", "run", *args, "--out", os.path.join(tmp, "run"), "--no-figures"]
        with open(os.path.join(tmp, "output"), "w+") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            peak, stop = [0], threading.Event()
            sampler = threading.Thread(target=_sample_tree, args=(proc.pid, peak, stop), daemon=True)
            if pss:
                sampler.start()
            _, status, usage = os.wait4(proc.pid, 0)  # wait() would drop the child's resource usage
            seconds = time.perf_counter() - t0
            stop.set()
            if pss:
                sampler.join()
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                out.seek(0)
                sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out.read()[-4000:]}")
    return seconds, usage.ru_maxrss * 1024, peak[0]  # ru_maxrss: KiB on Linux


def show(seconds: float, rss: int, tree: int = 0) -> str:
    """One run's figures as text."""
    return f"{seconds:.1f} s, peak RSS {rss / 2**20:,.0f} MiB" + (f" (all processes, PSS {tree / 2**20:,.0f} MiB)" if tree else "")


def memory(runs: list[tuple[float, int, int]]) -> str:
    """The largest peak RSS of some runs (and of the whole process tree's PSS, where sampled)."""
    return show(0, max(r for _, r, _ in runs), max(t for *_, t in runs)).split(", ", 1)[1]


def single(args: list[str], repeat: int, pss: bool = False) -> None:
    """Time this interpreter's `skipbench run ARGS` and print the median."""
    runs = []
    for i in range(repeat):
        runs.append(run_once(sys.executable, args, pss))
        print(f"run {i + 1}/{repeat}: {show(*runs[-1])}", flush=True)
    times = [t for t, _, _ in runs]
    print(f"skipbench run {' '.join(args)}: median {statistics.median(times):.1f} s "
          f"(min {min(times):.1f}, max {max(times):.1f}) over {len(times)} runs on {os.cpu_count()} CPUs, "
          f"{memory(runs)}")


def against(args: list[str], repeat: int, other: str, pss: bool = False) -> None:
    """Time this interpreter's and `other`'s `skipbench run ARGS` alternately; print both and the ratio."""
    pythons = {"this": sys.executable, "against": other}
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in pythons}
    for i in range(repeat):
        order = ["this", "against"] if i % 2 == 0 else ["against", "this"]
        for name in order:
            runs[name].append(run_once(pythons[name], args, pss))
        print(f"round {i + 1}/{repeat}: " + "; ".join(f"{name} {show(*runs[name][-1])}" for name in order), flush=True)
    median = {name: statistics.median(t for t, _, _ in runs[name]) for name in pythons}
    print(f"skipbench run {' '.join(args)}: median of {repeat} fresh processes each, on {os.cpu_count()} CPUs")
    for name, python in pythons.items():
        print(f"  {name:8} {median[name]:7.1f} s   {memory(runs[name])}   {python}")
    print(f"  this is {median['against'] / median['this']:.2f}x as fast as against (median against / median this)")


def main() -> None:
    """Time the command (against another interpreter's with --against) and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", metavar="PYTHON", help="another interpreter to time alternately with this one")
    parser.add_argument("--pss", action="store_true",
                        help="also sample the process tree's PSS every 0.5 s (slows runs a little: time without it)")
    parser.add_argument("run_args", nargs="*", default=["--all"], help="arguments of `skipbench run` (after --)")
    args = parser.parse_args()
    run_args = args.run_args or ["--all"]
    if args.against and not shutil.which(args.against):
        parser.error(f"--against: no such interpreter: {args.against}")
    if args.against:
        against(run_args, args.repeat, args.against, args.pss)
    else:
        single(run_args, args.repeat, args.pss)


if __name__ == "__main__":
    main()
