"""Measurements: one module per measurement, each a plain function over a cell of the grid.

A measurement's ``run(cell)`` returns blocks of columns (:class:`skipbench.results.Columns`:
one metric's values for every seed of the cell) or, for plugins written the simple way, partial
records made with :func:`record`; the harness adds the cell's coordinates and the status. The
machinery measurements share (cells, random streams, seed stacks, chunks, memory and roofline
readings) is the engine package.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine.cell import Cell
from ..engine.streams import DATA as STREAM_DATA
from ..engine.streams import EVAL as STREAM_EVAL
from ..engine.streams import TRAIN as STREAM_TRAIN
from ..engine.streams import WEIGHTS as STREAM_WEIGHTS

__all__ = ["Cell", "STREAM_DATA", "STREAM_EVAL", "STREAM_TRAIN", "STREAM_WEIGHTS", "record", "undefined"]


def record(metric: str, value: Any, unit: str = "", seed: int | None = None, index: int | None = None,
           **extra: Any) -> dict[str, Any]:
    """A partial result record; `value=None` with an `error` reason marks it undefined."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return {"metric": metric, "value": value, "unit": unit, "seed": seed, "index": index, **extra}


def undefined(metric: str, reason: str, unit: str = "", seed: int | None = None, index: int | None = None) -> dict:
    """A record whose value does not exist (0/0, a threshold never reached), with the reason."""
    return record(metric, None, unit, seed, index, status="undefined", error=reason)

