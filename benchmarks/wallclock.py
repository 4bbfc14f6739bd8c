"""Wall-clock time and peak memory of whole `skipbench run` commands, as a user runs them.

    python benchmarks/wallclock.py                       # `skipbench run --all`, 3 repeats
    python benchmarks/wallclock.py --repeat 5 -- --all --profile quick

Each run is a fresh process (imports and plugin discovery included), `PYTHON -P -m skipbench run
ARGS` writing to a fresh temporary run directory: -P keeps the current directory off sys.path, so
that each interpreter runs its own installed skipbench even from inside a checkout. Prints every
time with the process's peak resident set size (os.wait4's ru_maxrss: the process, or the largest
of the children it waited for), then the median.

A benchmark, not a test: the figures depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def run_once(python: str, args: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS in bytes of one fresh `PYTHON -P -m skipbench run ARGS` process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [python, "-P", "-m", "skipbench", "run", *args, "--out", os.path.join(tmp, "run"), "--no-figures"]
        with open(os.path.join(tmp, "output"), "w+") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # wait() would drop the child's resource usage
            seconds = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                out.seek(0)
                sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out.read()[-4000:]}")
    return seconds, usage.ru_maxrss * 1024  # KiB on Linux


def show(seconds: float, rss: int) -> str:
    return f"{seconds:.1f} s, peak RSS {rss / 2**20:,.0f} MiB"


def single(args: list[str], repeat: int) -> None:
    """Time this interpreter's `skipbench run ARGS` and print the median."""
    runs = []
    for i in range(repeat):
        runs.append(run_once(sys.executable, args))
        print(f"run {i + 1}/{repeat}: {show(*runs[-1])}", flush=True)
    times = [t for t, _ in runs]
    print(f"skipbench run {' '.join(args)}: median {statistics.median(times):.1f} s "
          f"(min {min(times):.1f}, max {max(times):.1f}) over {len(times)} runs on {os.cpu_count()} CPUs, "
          f"peak RSS {max(r for _, r in runs) / 2**20:,.0f} MiB")


def main() -> None:
    """Time the command and print the median."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("run_args", nargs="*", default=["--all"], help="arguments of `skipbench run` (after --)")
    args = parser.parse_args()
    single(args.run_args or ["--all"], args.repeat)


if __name__ == "__main__":
    main()
