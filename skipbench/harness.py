"""The grid (variants x measurements x depths, each over the seeds) and its executor.

A profile (TOML) plus command-line overrides gives a :class:`Plan`; each (variant, measurement,
depth) is a task that measures every seed. Tasks run in-process, or in worker processes with
``jobs > 1`` through a ``concurrent.futures.Executor`` (the seam a distributed executor can
take over). Exclusive tasks (timing) always run alone, in the main process, after the rest.
Records stream to RUN_DIR/records.jsonl as each task finishes; a run can resume from it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
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
from .registry import Registry, load_registry, variants_from_toml
from .specs import Param, Provider, UsageError, Variant, resolve_params

GRID_KEYS = ("measurements", "depths", "width", "batch", "options")
PROFILE_KEYS = ("description", "seeds", "seed_start", "variants", "experiments", "published", "figures") + GRID_KEYS
EXPERIMENT_KEYS = ("name", "description", "variants", "tags", "network") + GRID_KEYS
PROFILE_SCALARS = (
    Param("description", "str", ""),
    Param("width", "int", 64),
    Param("batch", "int", 128),
    Param("seeds", "int", 8),
    Param("seed_start", "int", 0),
)
PUBLISHED_PARAMS = (
    Param("experiment", "str", ""),
    Param("variant", "str", ""),
    Param("metric", "str", ""),
    Param("depth", "int", 0, help="0: any depth"),
    Param("value", "float", 0.0),
    Param("label", "str", "", help="what the published value is called in its source"),
)
DEFAULT_FIGURES = [
    {"kind": "profile", "metric": "grad_norm", "name": "gradient-flow-grad_norm", "title": "weight-gradient norm per block"},
    {"kind": "profile", "metric": "signal_norm", "name": "gradient-flow-signal_norm", "title": "dL/dx norm at each block's input"},
    {"kind": "curve", "metric": "loss_curve", "name": "identity-loss-curve", "title": "learning f(x) = x: evaluation MSE"},
]
FIGURE_PARAMS = (
    Param("kind", "str", "profile", ("profile", "curve", "histogram", "widths")),
    Param("name", "str", "figure"),
    Param("title", "str", ""),
    Param("experiment", "str", ""),
    Param("metric", "str", "grad_norm"),
)


@dataclass(frozen=True)
class Task:
    """One cell of the grid."""

    variant: str
    measurement: str
    depth: int
    experiment: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return task_key(self.__dict__)


def task_key(rec: dict) -> tuple[str, str, str, int]:
    """The task a record (or a Task's fields) belongs to."""
    return (rec.get("experiment") or "", rec["variant"], rec["measurement"], rec["depth"])


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
    experiment: str = ""

    def tasks(self, registry: Registry) -> list[Task]:
        """The grid, skipping measurements that do not apply to a variant's builder and depths
        below one block of it."""
        out = []
        for variant in self.variants:
            builder = registry.builders[variant.builder]
            for name in self.measurements:
                if registry.measurements[name].applies_to(builder):
                    out += [Task(variant.name, name, depth, self.experiment) for depth in self.depths
                            if depth >= builder.layers_per_block]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "experiment": self.experiment, "variants": [v.name for v in self.variants],
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


@dataclass
class Run:
    """A resolved profile: one Plan per experiment, and what the report compares and draws."""

    profile: str
    description: str
    plans: list[Plan]
    published: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)

    def tasks(self, registry: Registry) -> list[Task]:
        return [t for plan in self.plans for t in plan.tasks(registry)]


def _table_list(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{where}: {key} must be an array of tables [[{key}]]")
    return value


def _str_list(value: Any, what: str, noun: str = "names") -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{what} must be a list of {noun}, got {value!r}")
    return value


def add_profile_variants(registry: Registry, data: dict, name: str) -> None:
    """Register the variants a profile defines itself (its [variants.NAME] tables)."""
    if "variants" not in data:
        return
    provider = Provider(f"profile {name}", "skipbench")
    for variant, where in variants_from_toml({"variants": data["variants"]}, f"profile {name}", provider):
        known = registry.variants.get(variant.name)
        if known is None or known.provider != provider:  # the same profile loaded twice adds nothing
            registry.add_variant(variant, where)


def _plan_experiment(registry: Registry, name: str, exp: dict, top: dict, scalars: dict, select_all: bool,
                     variants: list[str], tags: list[str], measurements: list[str], depths: list[int],
                     width: int | None, batch: int | None, seeds: tuple[int, ...], device: str, threads: int,
                     jobs: int) -> Plan:
    where = f"profile {name}" + (f" experiment {exp['name']!r}" if exp.get("name") else "")
    merged = {**{k: top[k] for k in GRID_KEYS if k in top}, **exp}
    listed = _str_list(merged.get("measurements", []), f"{where}: measurements", "measurement names")
    names = list(dict.fromkeys(measurements or listed or sorted(registry.measurements)))
    for m in names:
        registry.measurement(m)
    depth_list = list(dict.fromkeys(depths or _int_list(merged.get("depths", [8]), f"{where}: depths")))
    sizes = resolve_params(PROFILE_SCALARS[1:3], {k: merged[k] for k in ("width", "batch") if k in merged}, where)
    width = sizes["width"] if width is None else width
    batch = sizes["batch"] if batch is None else batch
    for label, value in (("width", width), ("batch", batch)):
        if value < 1:
            raise UsageError(f"{label} must be >= 1, got {value}")
    if select_all or variants or tags:
        selected = registry.select(variants, tags)
    elif exp.get("variants") or exp.get("tags"):
        selected = registry.select(_str_list(exp.get("variants", []), f"{where}: variants"),
                                   _str_list(exp.get("tags", []), f"{where}: tags"))
    else:
        raise UsageError("name variants to run (wildcards allowed), or use --all")
    # depths asked for on the command line must suit every variant; a profile's depths that a
    # variant cannot reach (fewer layers than one block) are left out for that variant only
    network_overrides = exp.get("network", {})
    if not isinstance(network_overrides, dict):
        raise UsageError(f"{where}: network must be a table of network options")
    if network_overrides:  # the experiment's network options win over the variants' own
        selected = [dataclasses.replace(v, network={**v.network, **network_overrides}) for v in selected]
    for depth in depth_list:
        for v in (selected if depths else selected[:1]):
            network.block_count(registry.builders[v.builder].layers_per_block if depths else 1, depth, v.name)
    tables = {}
    for source in (top, exp):
        opts = source.get("options", {})
        if not isinstance(opts, dict) or not all(isinstance(t, dict) for t in opts.values()):
            raise UsageError(f"{where}: options must be tables [options.MEASUREMENT] of option = value")
        for key, table in opts.items():
            registry.measurement(key)
            tables[key] = {**tables.get(key, {}), **table}
    # every table is checked, also those of measurements this run leaves out
    options = {m: resolve_params(registry.measurements[m].options, tables.get(m, {}), f"{where}: [options.{m}]")
               for m in dict.fromkeys(names + list(tables))}
    return Plan(name, selected, names, depth_list, width, batch, seeds, device, threads, jobs, options,
                exp.get("name", ""))


def make_run(registry: Registry, profile: str = "default", variants: Iterable[str] = (), tags: Iterable[str] = (),
             measurements: Iterable[str] = (), depths: Iterable[int] = (), width: int | None = None,
             batch: int | None = None, seeds: int | None = None, device: str = "cpu",
             threads: int | None = None, jobs: int = 1, select_all: bool = False) -> Run:
    """Resolve a profile and command-line overrides into a validated Run (UsageError on bad input).

    Variants: `select_all`, or the given names/tags, or else each experiment's own `variants`
    and `tags`. A profile's own [variants.NAME] tables are added to the registry first.
    """
    name, data = load_profile(profile)
    where = f"profile {name}"
    add_profile_variants(registry, data, name)
    scalars = resolve_params(PROFILE_SCALARS, {k: v for k, v in data.items() if k in {p.name for p in PROFILE_SCALARS}},
                             where)
    n_seeds = scalars["seeds"] if seeds is None else seeds
    for label, value in (("seeds", n_seeds), ("jobs", jobs)):
        if value < 1:
            raise UsageError(f"{label} must be >= 1, got {value}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    experiments = _table_list(data, "experiments", where) or [{}]
    for exp in experiments:
        for key in exp:
            if key not in EXPERIMENT_KEYS:
                raise UsageError(f"{where}: experiment {exp.get('name', '?')!r}: unknown key {key!r}; "
                                 f"allowed: {', '.join(EXPERIMENT_KEYS)}")
    if len({e.get("name", "") for e in experiments}) != len(experiments):
        raise UsageError(f"{where}: every experiment needs its own name")
    seed_list = tuple(range(scalars["seed_start"], scalars["seed_start"] + n_seeds))
    plans = [_plan_experiment(registry, name, exp, data, scalars, select_all, list(variants), list(tags),
                              list(measurements), list(depths), width, batch, seed_list, device,
                              threads or torch.get_num_threads(), jobs) for exp in experiments]
    names = [plan.experiment for plan in plans]

    def check_experiments(listed: list[str], what: str) -> None:
        # a misspelled experiment would leave a published value "not measured", a figure empty
        for experiment in listed:
            if experiment and experiment not in names:
                raise UsageError(f"{what}: unknown experiment {experiment!r}; the profile's experiments: "
                                 f"{', '.join(repr(n) for n in names)}")

    published = []
    for entry in _table_list(data, "published", where):
        also = _str_list(entry.get("also", []), f"{where}: published also")
        values = resolve_params(PUBLISHED_PARAMS, {k: v for k, v in entry.items() if k != "also"}, f"{where}: [[published]]")
        missing = [k for k in ("variant", "metric", "value") if k not in entry]
        if missing:
            raise UsageError(f"{where}: [[published]] entry {entry!r} is missing {', '.join(missing)}")
        check_experiments([values["experiment"]], f"{where}: [[published]] {values['variant']} {values['metric']}")
        published.append({**values, "also": also})
    figures = []
    for entry in _table_list(data, "figures", where) or DEFAULT_FIGURES:
        lists = {"depths": _int_list(entry.get("depths", []), f"{where}: figure depths"),
                 "experiments": _str_list(entry.get("experiments", []), f"{where}: figure experiments")}
        scalars_ = {k: v for k, v in entry.items() if k not in lists}
        figure = {**resolve_params(FIGURE_PARAMS, scalars_, f"{where}: [[figures]]"), **lists}
        check_experiments([figure["experiment"]] + figure["experiments"], f"{where}: figure {figure['name']!r}")
        figures.append(figure)
    return Run(name, scalars["description"], plans, published, figures)


def make_plan(registry: Registry, profile: str = "default", variants: Iterable[str] = (), tags: Iterable[str] = (),
              **overrides: Any) -> Plan:
    """The single Plan of a one-experiment profile (all variants unless names or tags are given)."""
    variants, tags = list(variants), list(tags)
    run = make_run(registry, profile, variants, tags, select_all=not variants and not tags, **overrides)
    if len(run.plans) != 1:
        raise UsageError(f"profile {profile!r} has {len(run.plans)} experiments; use make_run")
    return run.plans[0]


# -- running one task ---------------------------------------------------------------------------
def run_task(registry: Registry, plan: Plan, task: Task) -> list[dict]:
    """Measure one cell; any exception fails only this cell, as a record."""
    variant = next(v for v in plan.variants if v.name == task.variant)  # with the experiment's overrides
    measurement = registry.measurements[task.measurement]
    coords = dict(variant=variant.name, builder=variant.builder, measurement=measurement.name,
                  depth=task.depth, width=plan.width, batch=plan.batch, experiment=task.experiment)
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


def _worker_init(registry_args: dict, plans: list[Plan], threads: int) -> None:
    torch.set_num_threads(threads)
    registry = load_registry(**registry_args)
    for variant in {v.name: v for plan in plans for v in plan.variants}.values():
        if variant.name not in registry.variants:  # defined by the profile, not by a plugin or file
            registry.add_variant(variant)
    _worker_state["registry"] = registry
    _worker_state["plans"] = {plan.experiment: plan for plan in plans}


def _worker_run(task: Task) -> list[dict]:
    return run_task(_worker_state["registry"], _worker_state["plans"][task.experiment], task)


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


def metadata(plans: Plan | Run, registry: Registry) -> dict[str, Any]:
    """Run metadata: versions, device, threads, CPU, git commit, the plan(s) and the plugins."""
    run = plans if isinstance(plans, Run) else None
    plan = run.plans[0] if run else plans
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
        **({"experiments": [p.as_dict() for p in run.plans], "published": run.published} if run else {}),
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


def execute(registry: Registry, plans: Plan | Run | list[Plan], run_dir: Path, registry_args: dict | None = None,
            on_done: Callable[[Task, list[dict]], None] | None = None, resume: bool = False) -> list[dict]:
    """Run every task of the plans, streaming records to run_dir; return all records of the run."""
    plans = plans.plans if isinstance(plans, Run) else [plans] if isinstance(plans, Plan) else list(plans)
    by_experiment = {plan.experiment: plan for plan in plans}
    first = plans[0]
    stream_path = run_dir / "records.jsonl"
    previous = results.load_jsonl(stream_path) if resume and stream_path.exists() else []
    failed = {task_key(r) for r in previous if r["status"] == "failed"}
    previous = [r for r in previous if task_key(r) not in failed]  # retried
    done = {task_key(r) for r in previous}
    if resume:  # the stream restarts from the kept records, so a retried task's old failure is gone
        results.write_atomic(stream_path, "".join(results.dumps(r) + "\n" for r in previous))
    tasks = [t for plan in plans for t in plan.tasks(registry) if t.key not in done]
    shared = [t for t in tasks if not registry.measurements[t.measurement].exclusive]
    exclusive = [t for t in tasks if registry.measurements[t.measurement].exclusive]
    stream = results.RecordStream(stream_path)
    collected = list(previous)

    def finish(task: Task, recs: list[dict]) -> None:
        stream.write(recs)
        collected.extend(recs)
        if on_done:
            on_done(task, recs)

    torch.set_num_threads(first.threads)
    try:
        if first.jobs > 1 and len(shared) > 1 and registry_args is not None:
            ctx = multiprocessing.get_context("forkserver")
            per_job = max(1, first.threads // first.jobs)
            with concurrent.futures.ProcessPoolExecutor(first.jobs, mp_context=ctx, initializer=_worker_init,
                                                        initargs=(registry_args, plans, per_job)) as pool:
                futures = {pool.submit(_worker_run, t): t for t in shared}
                for fut in concurrent.futures.as_completed(futures):
                    finish(futures[fut], fut.result())
        else:
            for task in shared:
                finish(task, run_task(registry, by_experiment[task.experiment], task))
        for task in exclusive:
            finish(task, run_task(registry, by_experiment[task.experiment], task))
    finally:
        stream.close()
    return collected
