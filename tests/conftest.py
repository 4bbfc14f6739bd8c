"""Shared fixtures: a registry of the built-ins only, and a runner for the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skipbench.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry():
    """The built-in plugins and variants only: no installed entry points, no environment."""
    return load_registry(entrypoints=False, env=False, pyproject=None)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess, without the user's plugin settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPBENCH_")}
    env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m skipbench ARGS` in a subprocess (cwd: a fresh temporary directory)."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "skipbench", *args], cwd=cwd or tmp_path,
                              env=env or clean_env(), capture_output=True, text=True, timeout=timeout)

    return run
