"""The asv suite: speed, memory and the non-timing metrics of every registered variant over commits.

Benchmarks are parametrized over (variant, depth). The variants are those of the registry, loaded
the normal way (built-in plugins and their TOML, installed entry points, drop-in plugins from
SKIPBENCH_PLUGINS_DIR, ``[tool.skipbench]`` of the project's pyproject.toml) plus the TOML files
named in SKIPBENCH_VARIANTS (separated by the path separator; read only here, for asv), so a new
variant appears in the history without editing this file.

asv discovers the suite once and then selects a parameter combination by its index in every
process it starts, also for older commits, which may lack variants. So the parameter list is
computed from the working tree's registry (in a subprocess), identical whatever commit is
installed, and ``setup`` raises NotImplementedError (asv: not applicable) for a combination the
installed commit cannot build, rather than letting numbers shift to another variant.

Settings read from the environment (for quick or focused runs):
SKIPBENCH_ASV_DEPTHS (comma-separated, default "4,16"), SKIPBENCH_ASV_WIDTH (default 64),
SKIPBENCH_ASV_BATCH (default 128), SKIPBENCH_ASV_VARIANTS (comma-separated names or wildcards,
default every variant: say ``"my-*,residual"`` to follow only your variants and a baseline).

Timing: one BLAS thread (OMP_NUM_THREADS=1 before torch is imported, and torch.set_num_threads).
Peak memory (peakmem_*) is the whole process's resident set size, torch's import included: compare
it between commits, not with the network's size.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported: one BLAS thread, no spikes
os.environ["MKL_NUM_THREADS"] = "1"

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS_ENV = "SKIPBENCH_VARIANTS"
DEPTHS = [int(d) for d in os.environ.get("SKIPBENCH_ASV_DEPTHS", "4,16").split(",") if d.strip()]
WIDTH = int(os.environ.get("SKIPBENCH_ASV_WIDTH", "64"))
BATCH = int(os.environ.get("SKIPBENCH_ASV_BATCH", "128"))
SEEDS = (0, 1, 2, 3)  # track_* values: the median over these seeds (deterministic)


def _variant_files() -> list[str]:
    return [f for f in os.environ.get(VARIANTS_ENV, "").split(os.pathsep) if f]


def _pyproject() -> str | None:
    path = ROOT / "pyproject.toml"
    return str(path) if path.is_file() else None


# Loads the working tree's skipbench (not the installed commit's) and prints its variant names.
_LIST_VARIANTS = r"""
import importlib.util, json, os, sys
root, files, pyproject = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] or None
sys.path.insert(0, root)
plugins = os.path.join(root, "plugins")
spec = importlib.util.spec_from_file_location("skipbench_plugins", os.path.join(plugins, "__init__.py"),
                                              submodule_search_locations=[plugins])
module = importlib.util.module_from_spec(spec)
sys.modules["skipbench_plugins"] = module
spec.loader.exec_module(module)
from skipbench.registry import load_registry
print(json.dumps(list(load_registry(variant_files=files, pyproject=pyproject).variants)))
"""


def _installed_registry():
    """The installed commit's registry, loaded like the working tree's (None if it cannot be)."""
    from skipbench.registry import load_registry

    return load_registry(variant_files=_variant_files(), pyproject=_pyproject())


def _variant_names() -> list[str]:
    """The working tree's variant names; the installed registry's if the tree cannot be loaded."""
    if (ROOT / "skipbench" / "registry.py").is_file():
        proc = subprocess.run([sys.executable, "-c", _LIST_VARIANTS, str(ROOT), json.dumps(_variant_files()),
                               _pyproject() or ""], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"skipbench benchmarks: cannot load the working tree's registry, using the installed one:\n"
              f"{proc.stderr.strip()}", file=sys.stderr)
    return list(_installed_registry().variants)


def _selected(names: list[str]) -> list[str]:
    """`names` matching SKIPBENCH_ASV_VARIANTS (all when unset), in registry order."""
    patterns = [p.strip() for p in os.environ.get("SKIPBENCH_ASV_VARIANTS", "").split(",") if p.strip()]
    return [n for n in names if not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns)]


VARIANTS = _selected(_variant_names())
_registry = None
_nets: dict = {}


def _network(variant: str, depth: int):
    """(registry, variant, network, input) for the combination, built once per process; raises
    NotImplementedError when the installed commit has no such variant or cannot reach the depth."""
    global _registry
    key = (variant, depth)
    if key in _nets:
        return _nets[key]
    try:
        if _registry is None:
            _registry = _installed_registry()
        from skipbench import network
    except Exception as exc:  # a commit before the registry existed, or a broken one
        raise NotImplementedError(f"cannot load this commit's registry: {type(exc).__name__}: {exc}") from exc
    spec = _registry.variants.get(variant)
    if spec is None:
        raise NotImplementedError(f"variant {variant!r} does not exist at this commit")
    try:
        torch.manual_seed(0)
        net = network.build(_registry, spec, depth, WIDTH)
    except Exception as exc:  # UsageError: a depth below one block of this variant
        raise NotImplementedError(f"{variant} at depth {depth}: {type(exc).__name__}: {exc}") from exc
    x = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(1)).to(next(net.parameters()).dtype)
    _nets[key] = (_registry, spec, net, x)
    return _nets[key]


class _Suite:
    params = [VARIANTS, DEPTHS]
    param_names = ["variant", "depth"]
    timeout = 300

    def setup(self, variant, depth):
        self.registry, self.variant, self.net, self.x = _network(variant, depth)


class _Timed(_Suite):
    # asv times one call per sample when there is a setup: many samples, after a warm-up
    warmup_time = 0.1
    repeat = (10, 200, 1.0)
    rounds = 2


class TimeForward(_Timed):
    """One forward pass of a batch (no autograd)."""

    def time_forward(self, variant, depth):
        with torch.no_grad():
            self.net(self.x)


class TimeForwardBackward(_Timed):
    """One forward and backward pass of a batch (gradients cleared first)."""

    def time_forward_backward(self, variant, depth):
        self.net.zero_grad(set_to_none=True)
        self.net(self.x).sum().backward()


class PeakMem(_Suite):
    """Process RSS peak of a forward+backward pass (torch's import included)."""

    def peakmem_forward_backward(self, variant, depth):
        self.net.zero_grad(set_to_none=True)
        self.net(self.x).sum().backward()


class Track(_Suite):
    """The non-timing metrics, named as in results.csv; the median over SEEDS where seeded."""

    def _values(self, measurement: str, metric: str, **options) -> float:
        from skipbench.measurements import Cell
        from skipbench.specs import resolve_params

        spec = self.registry.measurements.get(measurement)
        if spec is None:
            raise NotImplementedError(f"measurement {measurement!r} does not exist at this commit")
        opts = resolve_params(spec.options, options, f"asv options of {measurement}")
        depth = self.depth
        seeds = SEEDS if spec.seeded else SEEDS[:1]
        try:  # measurements return blocks of columns since the engine's rewrite, record dicts before
            from skipbench.results import expand
        except ImportError:
            expand = list
        records = expand(spec.run(Cell(self.registry, self.variant, depth, WIDTH, BATCH, seeds, "cpu", opts)))
        values = sorted(r["value"] for r in records if r["metric"] == metric and r.get("index") is None
                        and r["value"] is not None)
        if not values:
            return float("nan")
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def setup(self, variant, depth):
        super().setup(variant, depth)
        self.depth = depth

    def track_grad_ratio(self, variant, depth):
        return self._values("gradient-flow", "grad_ratio")

    track_grad_ratio.unit = "ratio"

    def track_mse_init(self, variant, depth):
        return self._values("identity", "mse_init", steps=0)

    track_mse_init.unit = "mse"

    def track_mse_trained(self, variant, depth):
        return self._values("identity", "mse_trained")

    track_mse_trained.unit = "mse"

    def track_params(self, variant, depth):
        return self._values("params", "params")

    track_params.unit = "count"
