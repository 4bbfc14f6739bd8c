"""Does skipbench's forward throughput hold up? Against torch.utils.benchmark on an independent copy.

    python benchmarks/throughput_check.py [--width 256] [--depth 16] [--batch 128] [--threads 1] [--rounds 5]

In one process, alternating for --rounds rounds: skipbench's `throughput` measurement of the
packaged `residual` variant, and `blocked_autorange` of a residual network written here from
scratch (pre-activation blocks x + W2 relu(W1 relu(x)), a linear head; the same shapes, its own
weights). Prints each round's forward samples/s, how far skipbench's median lies from the
independent one (and the median of the per-round ratios, which cancels slow drifts of the
machine), and how much each side's medians vary: the independent side's variation is the
machine's own noise floor.
A benchmark, not a test: the figures depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn
from torch.utils.benchmark import Timer


class Block(nn.Module):
    """x + W2 relu(W1 relu(x))."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(torch.relu(x))))


def independent_rate(width: int, depth: int, batch: int, threads: int, min_run_time: float) -> float:
    """Forward samples/s of the hand-written network, by blocked_autorange."""
    net = nn.Sequential(*[Block(width) for _ in range(depth // 2)], nn.Linear(width, width))
    x = torch.randn(batch, width)

    def forward():
        with torch.no_grad():
            net(x)

    timing = Timer("forward()", globals={"forward": forward}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return batch / timing.median


def skipbench_rate(registry, width: int, depth: int, batch: int, min_run_time: float) -> float:
    """Forward samples/s of the `residual` variant from skipbench's throughput measurement."""
    from skipbench.measurements import Cell
    from skipbench.specs import resolve_params

    measurement = registry.measurements["throughput"]
    options = resolve_params(measurement.options, {"min_run_time": min_run_time}, "throughput")
    cell = Cell(registry, registry.variants["residual"], depth, width, batch, (0,), "cpu", options)
    return next(r["value"] for r in measurement.run(cell) if r["metric"] == "fwd_samples_per_s")


def main() -> None:
    """Alternate both measurements and print the agreement and the repeatability."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from skipbench.registry import load_registry

    registry = load_registry()
    ours, theirs = [], []
    for i in range(args.rounds):
        ours.append(skipbench_rate(registry, args.width, args.depth, args.batch, args.min_run_time))
        theirs.append(independent_rate(args.width, args.depth, args.batch, args.threads, args.min_run_time))
        print(f"round {i + 1}/{args.rounds}: skipbench {ours[-1]:,.0f} samples/s, independent {theirs[-1]:,.0f} samples/s",
              flush=True)
    ours_med, theirs_med = statistics.median(ours), statistics.median(theirs)
    ratio = statistics.median(a / b for a, b in zip(ours, theirs))

    def spread(rates: list[float]) -> str:
        mid = statistics.median(rates)
        return (f"within {100 * max(abs(r / mid - 1) for r in rates):.1f} % of their median "
                f"(max - min {100 * (max(rates) - min(rates)) / mid:.1f} %)")

    print(f"residual, width {args.width}, depth {args.depth}, batch {args.batch}, {args.threads} thread(s): "
          f"skipbench median {ours_med:,.0f}, independent median {theirs_med:,.0f} samples/s "
          f"({100 * (ours_med / theirs_med - 1):+.1f} %; per round, median {100 * (ratio - 1):+.1f} %)")
    print(f"skipbench's {args.rounds} medians lie {spread(ours)}; the independent's, the machine's noise "
          f"floor, {spread(theirs)}")

if __name__ == "__main__":
    main()
