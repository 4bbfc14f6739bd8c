"""Measurements: one module per measurement, each a plain function over built networks.

A measurement's ``run(cell)`` returns partial records made with :func:`record`; the harness adds
the cell's coordinates (variant, builder, measurement, depth, width, batch) and the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import network
from ..registry import Registry
from ..specs import BlockBuilder, Variant

# Separate random streams per seed, so that data never shares draws with the weights.
STREAM_WEIGHTS, STREAM_DATA, STREAM_TRAIN, STREAM_EVAL = 0, 1, 2, 3


def seed_torch(seed: int) -> None:
    """Seed torch's generators as torch.manual_seed does, without its cost where CUDA is not yet
    initialized (there it records a traceback per call, to seed CUDA lazily): networks are built
    on the CPU, so a build draws from the CPU generator only."""
    if torch.cuda.is_initialized():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@dataclass
class Cell:
    """One task of the grid: a variant at a depth and width, over some seeds."""

    registry: Registry
    variant: Variant
    depth: int
    width: int
    batch: int
    seeds: tuple[int, ...]
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    _widths: list[int] | None = field(default=None, repr=False)
    _replay: Any = field(default=None, repr=False)  # the recorded build and its replay, or False (batched.py)

    @property
    def builder(self) -> BlockBuilder:
        return self.registry.builders[self.variant.builder]

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the variant's networks and of their data."""
        return getattr(torch, self.variant.network["dtype"])

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the cell's device, in its dtype."""
        return x.to(device=self.device, dtype=self.dtype)

    def build(self, seed: int) -> network.SkipNet:
        """The variant's network, its weights drawn from `seed` (blocks probed for their widths
        on the first build only)."""
        seed_torch(seed)
        net = network.build(self.registry, self.variant, self.depth, self.width, self.device, self._widths)
        self._widths = net.widths
        return net

    @property
    def widths(self) -> list[int]:
        """The trunk input width, then each block's output width (from one build, made once)."""
        if self._widths is None:
            self.build(self.seeds[0])
        return self._widths

    def generator(self, seed: int, stream: int) -> torch.Generator:
        """A CPU generator for one of the seed's data streams."""
        return torch.Generator().manual_seed(seed * 16 + stream)

    def normal(self, seed: int, stream: int, rows: int) -> torch.Tensor:
        """(rows, width) i.i.d. N(0, 1) samples from the seed's stream, on the cell's device."""
        return self.place(torch.randn(rows, self.width, generator=self.generator(seed, stream)))


def record(metric: str, value: Any, unit: str = "", seed: int | None = None, index: int | None = None,
           **extra: Any) -> dict[str, Any]:
    """A partial result record; `value=None` with an `error` reason marks it undefined."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return {"metric": metric, "value": value, "unit": unit, "seed": seed, "index": index, **extra}


def undefined(metric: str, reason: str, unit: str = "", seed: int | None = None, index: int | None = None) -> dict:
    """A record whose value does not exist (0/0, a threshold never reached), with the reason."""
    return record(metric, None, unit, seed, index, status="undefined", error=reason)


def ratio(num: float, den: float, metric: str, seed: int, what: str, eps: float = 0.0) -> dict:
    """num / (den + eps) as a record; 0/0 is undefined, never a number."""
    if num == 0 and den + eps == 0:
        return undefined(metric, f"0/0: {what} are both zero", "ratio", seed)
    if den + eps == 0:
        return record(metric, float("inf"), "ratio", seed)
    return record(metric, num / (den + eps), "ratio", seed)
