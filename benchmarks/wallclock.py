"""Wall-clock time of whole `skipbench run` commands, as a user runs them.

    python benchmarks/wallclock.py                       # `skipbench run --all`, 3 repeats
    python benchmarks/wallclock.py --repeat 5 -- --all --profile quick

Each repeat is a fresh process (imports and plugin discovery included) writing to a fresh
temporary run directory. Prints every time and the median. A benchmark, not a test: the figure
depends on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def measure_command(args: list[str], repeat: int) -> list[float]:
    """Seconds of `skipbench run ARGS` for each of `repeat` fresh processes."""
    times = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "skipbench", "run", *args, "--out", os.path.join(tmp, "run"), "--no-figures"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
        print(f"run {i + 1}/{repeat}: {times[-1]:.1f} s", flush=True)
    return times


def main() -> None:
    """Time the command and print the median."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("run_args", nargs="*", default=["--all"], help="arguments of `skipbench run` (after --)")
    args = parser.parse_args()
    times = measure_command(args.run_args or ["--all"], args.repeat)
    print(f"skipbench run {' '.join(args.run_args)}: median {statistics.median(times):.1f} s "
          f"(min {min(times):.1f}, max {max(times):.1f}) over {len(times)} runs on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
