"""The whole plugin contract of skipbench, one documented function per hook.

Plugins implement these with ``@skipbench.hookimpl``. Every hook is called with keyword
arguments and may only ever grow optional ones. Hooks return (or yield) frozen dataclasses from
:mod:`skipbench.specs`; the plugin manager validates them and stamps each with its provider.
Nothing is registered by import side effect.
"""

from __future__ import annotations

from typing import Iterable

import pluggy

from .specs import BlockBuilder, Measurement, Variant

PROJECT = "skipbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def skipbench_register_builders() -> Iterable[BlockBuilder]:
    """Return the block builders this plugin provides.

    A builder is code: ``build(in_dim, **params) -> torch.nn.Module`` plus its parameter schema,
    weight layers per block, skip kind, description and optional probes. The block may change the
    width (a dense block grows it): the network finds the output width by running the block.

    Optional, for speed: ``seed_batched=True`` declares that the block's forward also runs many
    seeds at once, given parameters with a leading seed dimension and inputs (seeds, rows,
    features). Build it from ``skipbench.layers.Linear``, elementwise operations and
    concatenation along the last dimension, and it does::

        from skipbench.layers import Linear

        class Scaled(torch.nn.Module):
            def __init__(self, dim, scale):
                super().__init__()
                self.fc, self.scale = Linear(dim, dim), scale
            def forward(self, x):
                return x + self.scale * torch.relu(self.fc(x))

        yield BlockBuilder("scaled", Scaled, (Param("scale", "float", 0.5),), seed_batched=True)

    The engine checks the declaration on a probe batch against each seed's own forward when a
    cell starts, and runs the block under torch.func.vmap (or seed by seed) with the reason in
    the records' ``seeds_path`` if it does not hold. Undeclared blocks run that way too.
    """


@hookspec
def skipbench_register_variants() -> Iterable[Variant]:
    """Return variants this plugin ships (named builder configurations).

    Most variants are data (TOML files); this hook is for variants that belong with a plugin's
    code. A variant may name a builder from any plugin.
    """


@hookspec
def skipbench_register_measurements() -> Iterable[Measurement]:
    """Return measurements this plugin provides.

    The core measurements are registered through this same hook, so a plugin adds a fifth one
    exactly the way the core adds its four. ``run(cell)`` returns, for the cell's variant, depth
    and seeds, an iterable of partial records (dicts with at least ``metric`` and ``value``, see
    measurements.record) and/or ``results.Columns`` blocks (one metric's values as arrays); the
    harness turns them into the task's table (results.task_table).
    """
