"""The grid (variants x measurements x depths, each over the seeds) and its executor.

A profile (TOML) plus command-line overrides gives a :class:`Plan`; each (variant, measurement,
depth) is a task that measures every seed. Tasks run in-process, or in worker processes with
``jobs > 1`` through a ``concurrent.futures.Executor`` (the seam a distributed executor can
take over). Exclusive tasks (timing) always run alone, in the main process, after the rest.
Records stream to RUN_DIR/records.jsonl as each task finishes; a run can resume from it.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import importlib.resources
import multiprocessing
import os
import platform
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from . import __version__, network, results
from .measurements import Cell
from .registry import Registry, load_registry
from .specs import Param, UsageError, Variant, resolve_params

PROFILE_KEYS = ("description", "measurements", "depths", "width", "batch", "seeds", "seed_start", "options")
PROFILE_SCALARS = (
    Param("description", "str", ""),
    Param("width", "int", 64),
    Param("batch", "int", 128),
    Param("seeds", "int", 8),
    Param("seed_start", "int", 0),
)


@dataclass(frozen=True)
class Task:
    """One cell of the grid."""

    variant: str
    measurement: str
    depth: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.variant, self.measurement, self.depth)


@dataclass
class Plan:
    """Everything a run needs to know, resolved and validated."""

    profile: str
    variants: list[Variant]
    measurements: list[str]
    depths: list[int]
    width: int
    batch: int
    seeds: tuple[int, ...]
    device: str = "cpu"
    threads: int = 1
    jobs: int = 1
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tasks(self, registry: Registry) -> list[Task]:
        """The grid, skipping measurements that do not apply to a variant's builder."""
        out = []
        for variant in self.variants:
            builder = registry.builders[variant.builder]
            for name in self.measurements:
                if registry.measurements[name].applies_to(builder):
                    out += [Task(variant.name, name, depth) for depth in self.depths]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "variants": [v.name for v in self.variants],
                "measurements": self.measurements, "depths": self.depths, "width": self.width,
                "batch": self.batch, "seeds": list(self.seeds), "device": self.device,
                "threads": self.threads, "jobs": self.jobs, "options": self.options}


# -- profiles -----------------------------------------------------------------------------------
def profile_names() -> list[str]:
    """Names of the packaged profiles."""
    files = importlib.resources.files("skipbench") / "profiles"
    return sorted(f.name.removesuffix(".toml") for f in files.iterdir() if f.name.endswith(".toml"))


def load_profile(name_or_file: str) -> tuple[str, dict]:
    """(name, data) of a packaged profile by name, or of a TOML file by path."""
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.is_file():  # a directory named like a profile does not shadow it
        if not path.is_file():
            raise UsageError(f"profile file {name_or_file!r} does not exist")
        text, name = path.read_text(), path.stem
    else:
        if name_or_file not in profile_names():
            raise UsageError(f"unknown profile {name_or_file!r}; available: {', '.join(profile_names())} (or a .toml file)")
        text = (importlib.resources.files("skipbench") / "profiles" / f"{name_or_file}.toml").read_text()
        name = name_or_file
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"profile {name_or_file}: malformed TOML: {exc}") from None
    for key in data:
        if key not in PROFILE_KEYS:
            raise UsageError(f"profile {name_or_file}: unknown key {key!r}; allowed: {', '.join(PROFILE_KEYS)}")
    return name, data


def _int_list(values: Any, what: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"{what} must be a list of integers, got {values!r}")
    return values


def make_plan(registry: Registry, profile: str = "default", variants: Iterable[str] = (), tags: Iterable[str] = (),
              measurements: Iterable[str] = (), depths: Iterable[int] = (), width: int | None = None,
              batch: int | None = None, seeds: int | None = None, device: str = "cpu",
              threads: int | None = None, jobs: int = 1) -> Plan:
    """Resolve a profile and overrides into a validated Plan (UsageError on any bad input)."""
    name, data = load_profile(profile)
    scalars = resolve_params(PROFILE_SCALARS, {k: v for k, v in data.items() if k in {p.name for p in PROFILE_SCALARS}},
                             f"profile {name}")
    listed = data.get("measurements", [])
    if not isinstance(listed, list) or not all(isinstance(m, str) for m in listed):
        raise UsageError(f"profile {name}: measurements must be a list of measurement names, got {listed!r}")
    names = list(dict.fromkeys(list(measurements) or listed or sorted(registry.measurements)))
    for m in names:
        registry.measurement(m)
    depth_list = list(dict.fromkeys(list(depths) or _int_list(data.get("depths", [8]), f"profile {name}: depths")))
    width = scalars["width"] if width is None else width
    batch = scalars["batch"] if batch is None else batch
    n_seeds = scalars["seeds"] if seeds is None else seeds
    for label, value in (("width", width), ("batch", batch), ("seeds", n_seeds), ("jobs", jobs)):
        if value < 1:
            raise UsageError(f"{label} must be >= 1, got {value}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    selected = registry.select(variants, tags)
    for depth in depth_list:
        for v in selected:
            network.block_count(registry.builders[v.builder].layers_per_block, depth, v.name)
    option_tables = data.get("options", {})
    if not isinstance(option_tables, dict) or not all(isinstance(t, dict) for t in option_tables.values()):
        raise UsageError(f"profile {name}: options must be tables [options.MEASUREMENT] of option = value")
    for key in option_tables:
        registry.measurement(key)
    # every table is checked, also those of measurements this run leaves out
    options = {m: resolve_params(registry.measurements[m].options, option_tables.get(m, {}),
                                 f"profile {name}: [options.{m}]") for m in dict.fromkeys(names + list(option_tables))}
    start = scalars["seed_start"]
    return Plan(name, selected, names, depth_list, width, batch, tuple(range(start, start + n_seeds)),
                device, threads or torch.get_num_threads(), jobs, options)


# -- running one task ---------------------------------------------------------------------------
def run_task(registry: Registry, plan: Plan, task: Task) -> list[dict]:
    """Measure one cell; any exception fails only this cell, as a record."""
    variant = registry.variants[task.variant]
    measurement = registry.measurements[task.measurement]
    coords = dict(variant=variant.name, builder=variant.builder, measurement=measurement.name,
                  depth=task.depth, width=plan.width, batch=plan.batch)
    seeds = plan.seeds if measurement.seeded else plan.seeds[:1]
    cell = Cell(registry, variant, task.depth, plan.width, plan.batch, seeds, plan.device, plan.options[measurement.name])
    try:
        partials = list(measurement.run(cell))
        if not measurement.seeded:
            for p in partials:
                p["seed"] = None
        return [results.complete(p, **coords) for p in partials]
    except Exception as exc:
        return [results.failure(f"{type(exc).__name__}: {exc}", **coords)]


_worker_state: dict[str, Any] = {}


def _worker_init(registry_args: dict, plan: Plan, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker_state["registry"] = load_registry(**registry_args)
    _worker_state["plan"] = plan


def _worker_run(task: Task) -> list[dict]:
    return run_task(_worker_state["registry"], _worker_state["plan"], task)


# -- the run ------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata(plan: Plan, registry: Registry) -> dict[str, Any]:
    """Run metadata: versions, device, threads, CPU, git commit, the plan and the plugins."""
    device_name = torch.cuda.get_device_name() if plan.device == "cuda" else _cpu_model()
    return {
        "skipbench": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": plan.device, "device_name": device_name,
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": plan.threads,
        "git_commit": _git_commit(), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "peak_mem_method": "torch.cuda.max_memory_allocated" if plan.device == "cuda" else
                           "parameters + gradients + input + tensors saved for backward",
        "flops_convention": "torch.utils.flop_counter: a multiply-add counts as 2 FLOPs",
        **plan.as_dict(),
        "plugins": [info.as_dict() for info in registry.plugins.infos] if registry.plugins else [],
    }


def new_run_dir(out: str | None) -> Path:
    """A fresh run directory: `out` (which must not hold a run) or skipbench-results/<timestamp>."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--out {out!r} already exists and is not empty; runs never overwrite each other")
        path.mkdir(parents=True, exist_ok=True)
        try:  # claim the directory atomically: a second run racing for it finds this file
            (path / "records.jsonl").open("x").close()
        except FileExistsError:
            raise UsageError(f"--out {out!r} is already used by another run; runs never overwrite each other") from None
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("skipbench-results")
    base.mkdir(exist_ok=True)
    for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
        path = base / f"{stamp}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError("could not create a new run directory under skipbench-results/")


def execute(registry: Registry, plan: Plan, run_dir: Path, registry_args: dict | None = None,
            on_done: Callable[[Task, list[dict]], None] | None = None, resume: bool = False) -> list[dict]:
    """Run every task of the plan, streaming records to run_dir; return all records of the run."""
    stream_path = run_dir / "records.jsonl"
    previous = results.load_jsonl(stream_path) if resume and stream_path.exists() else []
    failed = {(r["variant"], r["measurement"], r["depth"]) for r in previous if r["status"] == "failed"}
    previous = [r for r in previous if (r["variant"], r["measurement"], r["depth"]) not in failed]  # retried
    done = {(r["variant"], r["measurement"], r["depth"]) for r in previous}
    if resume:  # the stream restarts from the kept records, so a retried task's old failure is gone
        results.write_atomic(stream_path, "".join(results.dumps(r) + "\n" for r in previous))
    tasks = [t for t in plan.tasks(registry) if t.key not in done]
    shared = [t for t in tasks if not registry.measurements[t.measurement].exclusive]
    exclusive = [t for t in tasks if registry.measurements[t.measurement].exclusive]
    stream = results.RecordStream(stream_path)
    collected = list(previous)

    def finish(task: Task, recs: list[dict]) -> None:
        stream.write(recs)
        collected.extend(recs)
        if on_done:
            on_done(task, recs)

    torch.set_num_threads(plan.threads)
    try:
        if plan.jobs > 1 and len(shared) > 1 and registry_args is not None:
            ctx = multiprocessing.get_context("forkserver")
            per_job = max(1, plan.threads // plan.jobs)
            with concurrent.futures.ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_worker_init,
                                                        initargs=(registry_args, plan, per_job)) as pool:
                futures = {pool.submit(_worker_run, t): t for t in shared}
                for fut in concurrent.futures.as_completed(futures):
                    finish(futures[fut], fut.result())
        else:
            for task in shared:
                finish(task, run_task(registry, plan, task))
        for task in exclusive:
            finish(task, run_task(registry, plan, task))
    finally:
        stream.close()
    return collected

