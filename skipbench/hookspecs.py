"""The whole plugin contract of skipbench, one documented function per hook.

Plugins implement these with ``@skipbench.hookimpl``. The hooks below are collect hooks: they
take no arguments (an implementation that declares one fails registration, naming it) and are
called once per plugin, in discovery order. Should a hook ever gain an argument, it will be
optional and passed by keyword, so that implementations without it keep working. Hooks return
(or yield) an iterable of frozen dataclasses from :mod:`skipbench.specs`; the plugin manager
checks each item's type (a wrong one fails the plugin: "skipbench_register_builders returned a
dict, not a BlockBuilder") and stamps it with its provider. A hook the contract does not define
(misspelled) fails its plugin when the plugin is registered. Nothing is registered by import
side effect.

Names are unique across providers. When two providers register a builder, variant or
measurement of the same name, the first loaded keeps it (discovery order: the built-ins and
their packaged variants, then entry points, then drop-in files, then TOML variants files) and
the later provider is set aside with a one-line warning naming both: a plugin fails as a whole
(its contributions dropped, listed as failed by ``skipbench plugins``), a TOML entry is skipped.
``--strict-plugins`` makes the clash fatal. ``replace = true`` on the later one is the deliberate
override: it takes the name, silently.
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
