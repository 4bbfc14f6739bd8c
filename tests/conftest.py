"""Shared fixtures: a registry of the built-ins only, a runner for the real CLI, and cells."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from skipbench.measurements import Cell
from skipbench.registry import load_registry
from skipbench.specs import Variant, resolve_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry():
    """The built-in plugins and variants only: no installed entry points, no environment."""
    return load_registry(entrypoints=False, env=False, pyproject=None)


def make_cell(registry, name: str, variant: str | Variant, depth: int, width: int = 16, batch: int = 8,
              seeds=(0,), device: str = "cpu", **options) -> Cell:
    """A Cell of measurement `name` with its default options, overridden by `options`."""
    if isinstance(variant, str):
        variant = registry.variants[variant]
    opts = resolve_params(registry.measurements[name].options, options, f"test options of {name}")
    return Cell(registry, variant, depth, width, batch, tuple(seeds), device, opts)


def as_rows(table) -> list[dict]:
    """A results table's rows as dicts, NaN as "nan" (NaN != NaN), to compare tables and runs."""
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in table.to_pylist()]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess, without the user's plugin settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPBENCH_")}
    env.update(extra)
    return env


def plugin_dir_with(tmp_path_factory, name: str, source: str) -> Path:
    """A fresh directory holding one drop-in plugin file NAME.py (for --plugins-dir)."""
    directory = tmp_path_factory.mktemp(f"{name}-plugin")
    (directory / f"{name}.py").write_text(source)
    return directory


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m skipbench ARGS` in a subprocess (cwd: a fresh temporary directory)."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "skipbench", *args], cwd=cwd or tmp_path,
                              env=env or clean_env(), capture_output=True, text=True, timeout=timeout)

    return run


SCALED_PLUGIN = '''\
"""A drop-in plugin: a scaled residual block y = x + scale * relu(W x + b)."""
import skipbench
from torch import nn


class ScaledResidual(nn.Module):
    def __init__(self, dim, scale):
        super().__init__()
        self.fc, self.scale = nn.Linear(dim, dim), scale

    def forward(self, x):
        return x + self.scale * self.fc(x).relu()


@skipbench.hookimpl
def skipbench_register_builders():
    yield skipbench.BlockBuilder("scaled-residual", ScaledResidual, (skipbench.Param("scale", "float", 0.5),),
                                 skip_kind="scaled", description="y = x + s relu(W x + b)")


@skipbench.hookimpl
def skipbench_register_variants():
    yield skipbench.Variant(VARIANT, "scaled-residual", params=PARAMS, tags=("scaled",))
'''


def scaled_plugin(variant: str = "scaled-quarter", params: dict | None = None) -> str:
    """Source of a plugin with builder scaled-residual and one variant of it."""
    return SCALED_PLUGIN.replace("VARIANT", repr(variant)).replace("PARAMS", repr(params if params is not None else {"scale": 0.25}))


@pytest.fixture
def dropin_dir(tmp_path):
    """A directory holding one drop-in plugin file, `scaledplug.py` (builder scaled-residual,
    variant scaled-quarter)."""
    directory = tmp_path / "dropins"
    directory.mkdir()
    (directory / "scaledplug.py").write_text(scaled_plugin())
    return directory


def packaged_variants() -> list[str]:
    """The built-in variants, in the order of the packaged variants file (the registry's order)."""
    with open(ROOT / "plugins" / "variants.toml", "rb") as fh:
        return list(tomllib.load(fh)["variants"])


def builtin_plugin_modules() -> set[str]:
    """The built-in plugin modules (every plugins/*.py but the private ones)."""
    return {p.stem for p in (ROOT / "plugins").glob("*.py") if not p.stem.startswith("_")}
