"""Measurements: one module per measurement, each a plain function over a cell of the grid.

A measurement's ``run(cell)`` returns blocks of columns (:class:`skipbench.results.Columns`:
one metric's values for every seed of the cell) or, for plugins written the simple way, partial
records made with :func:`record`; the harness adds the cell's coordinates and the status. The
machinery measurements share (cells, random streams, seed stacks, chunks, memory and roofline
readings) is the engine package.

Every record says the mode its network ran in (column ``mode``: "train" or "eval", see
engine.cell.MODES); a measurement sets it with :func:`in_mode` (or ``record(..., mode=...)``),
and chooses it with ``cell.mode_for(default)``, which honours a mode the run forces. The core
measurements' defaults: gradient flow, probes and identity at initialization and in training in
training mode; identity's evaluation of the trained network in eval mode; params' FLOP count and
throughput's forward pass in eval mode, its forward+backward pass in training mode.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine.cell import MODES, Cell
from ..engine.streams import DATA as STREAM_DATA
from ..engine.streams import EVAL as STREAM_EVAL
from ..engine.streams import TRAIN as STREAM_TRAIN
from ..engine.streams import WEIGHTS as STREAM_WEIGHTS

__all__ = ["Cell", "MODES", "STREAM_DATA", "STREAM_EVAL", "STREAM_TRAIN", "STREAM_WEIGHTS", "in_mode", "record",
           "undefined"]


def in_mode(items: list, mode: str) -> list:
    """`items` (results.Columns blocks or record dicts) marked with the mode their network ran in
    (column ``mode``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for item in items:
        if isinstance(item, dict):
            item["mode"] = mode
        else:
            item.extra["mode"] = [mode] * len(item.value)
    return items


def record(metric: str, value: Any, unit: str = "", seed: int | None = None, index: int | None = None,
           **extra: Any) -> dict[str, Any]:
    """A partial result record; `value=None` with an `error` reason marks it undefined."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return {"metric": metric, "value": value, "unit": unit, "seed": seed, "index": index, **extra}


def undefined(metric: str, reason: str, unit: str = "", seed: int | None = None, index: int | None = None) -> dict:
    """A record whose value does not exist (0/0, a threshold never reached), with the reason."""
    return record(metric, None, unit, seed, index, status="undefined", error=reason)

