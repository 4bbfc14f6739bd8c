"""A cell of the grid: one variant at one depth and width, over some seeds, for one measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import network
from ..registry import Registry
from ..specs import BlockBuilder, Variant
from . import streams

# the modes a network runs in: "train" (module.train(): batch statistics, random draws in
# forward) and "eval" (module.eval(): running statistics, no draws)
MODES = ("train", "eval")


@dataclass
class Cell:
    """One task of the grid: a variant at a depth and width, over some seeds, with the options of
    the measurement that runs it. `mode`: the mode the run forces on every forward pass of
    every measurement (a profile's ``mode``, ``skipbench run --mode``), or None: each
    measurement's own (see :meth:`mode_for`)."""

    registry: Registry
    variant: Variant
    depth: int
    width: int
    batch: int
    seeds: tuple[int, ...]
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None

    def __post_init__(self):
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} or None, got {self.mode!r}")

    def mode_for(self, default: str) -> str:
        """The mode of a measurement's forward passes whose own mode is `default`: the run's
        forced mode where it has one."""
        return self.mode or default

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

    def build(self, seed: int, widths: list[int] | None = None) -> network.SkipNet:
        """The variant's network, its weights drawn from `seed`'s weight stream (`widths`, from
        another build of the cell, skips probing the blocks' widths again)."""
        streams.seed_weights(seed)
        return network.build(self.registry, self.variant, self.depth, self.width, self.device, widths)

    def generator(self, seed: int, stream: int) -> torch.Generator:
        """A CPU generator at the start of one of the seed's streams (engine.streams)."""
        return streams.generator(seed, stream)

    def normal(self, seed: int, stream: int, rows: int) -> torch.Tensor:
        """(rows, width) i.i.d. N(0, 1) samples from the start of the seed's stream, on the
        cell's device."""
        return self.place(torch.randn(rows, self.width, generator=self.generator(seed, stream)))

    def normals(self, seeds: tuple[int, ...], stream: int, rows: int) -> torch.Tensor:
        """(seeds, rows, width): :meth:`normal` for each seed, stacked."""
        return torch.stack([self.normal(s, stream, rows) for s in seeds])
