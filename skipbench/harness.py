"""The executor of the grid (see grid.py): each (variant, measurement, depth) task over its seeds.

A run is cut into parts (a task's seeds, or a share of a big cell's seeds) that one executor
runs (see executors): this process, local worker processes of one thread each (``jobs > 1`` or a
``--cell-timeout``), or a Dask cluster. Exclusive tasks (timing) run alone, after the rest, with
the run's timing threads. A part that never comes back (its worker died, it ran past the
timeout) fails only its task, with the reason.

Each task's result is a pyarrow table (results.task_table: its measurement's Columns blocks or
record dicts, with the cell's coordinates); workers send tables back, not records. Each finished
task is written as its own fragment under RUN_DIR/records/ (see results.FragmentStream), so an
interrupted run keeps what it finished and ``--resume`` runs only the rest; `execute` returns the
run's table, built once from the tasks' tables.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import os
import pickle
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import torch

from . import __version__, executors, results
from .executors import Execution, Part
from .grid import Plan, Run, Task, task_key
from .engine import heap, memory
from .measurements import Cell
from .pool import Lost
from .registry import Registry, load_registry
from .specs import UsageError, Variant


# -- running one task ---------------------------------------------------------------------------
def run_task(registry: Registry, plan: Plan, task: Task, seeds: tuple[int, ...] | None = None) -> pa.Table:
    """Measure one cell (or `seeds`, a part of its seeds) into its table; any exception fails
    only this cell, as a failure row."""
    variant = _variant(plan, task)
    measurement = registry.measurements[task.measurement]
    coords = _coords(plan, task, variant.builder)
    seeds = (seeds or plan.seeds) if measurement.seeded else plan.seeds[:1]
    cell = Cell(registry, variant, task.depth, task.width, plan.batch, seeds, plan.device, plan.options[measurement.name],
                plan.mode)
    try:
        table = results.task_table(measurement.run(cell), **coords)
        return table if measurement.seeded else _without_seeds(table)
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() fails its cell, not the run
        return results.failure(f"{type(exc).__name__}: {exc}", **coords)


def _variant(plan: Plan, task: Task) -> Variant:
    """The task's variant, with its experiment's overrides."""
    return next(v for v in plan.variants if v.name == task.variant)


def _coords(plan: Plan, task: Task, builder: str) -> dict[str, Any]:
    """The coordinates of a task's cell, as its table's columns."""
    return dict(variant=task.variant, builder=builder, measurement=task.measurement,
                depth=task.depth, width=task.width, batch=plan.batch, experiment=task.experiment)


def lost_task(plan: Plan, task: Task, reason: str) -> pa.Table:
    """The failure table of a task (or part) whose worker never returned it: it died or ran
    past --cell-timeout (pool.Lost)."""
    return results.failure(reason, **_coords(plan, task, _variant(plan, task).builder))


def _without_seeds(table: pa.Table) -> pa.Table:
    """The table of a seed-independent measurement: its rows belong to no seed."""
    return table.set_column(table.schema.get_field_index("seed"), "seed", pa.nulls(len(table), pa.int64()))


_worker_state: dict[str, Any] = {}


def _worker_init(registry_args: dict, plans: list[Plan], threads: int) -> None:
    """A worker process's (or Dask worker's) registry and plans, loaded once."""
    torch.set_num_threads(threads)
    for module in executors.WORKER_PRELOAD:  # already there in a forkserver's worker
        importlib.import_module(module)
    registry = load_registry(**registry_args)
    for variant in {v.name: v for plan in plans for v in plan.variants}.values():
        if variant.name not in registry.variants:  # defined by the profile, not by a plugin or file
            registry.add_variant(variant)
    _worker_state["registry"] = registry
    _worker_state["plans"] = {plan.experiment: plan for plan in plans}


def _local_worker_init(registry_args: dict, plans: list[Plan], threads: int) -> None:
    """A local worker process (pool.WorkerPool): _worker_init, then its heap set to keep freed
    memory and its imports frozen out of the garbage collector's reach (engine/heap.py). Not a
    Dask worker's: Dask watches its workers' memory, and a heap that keeps what it frees would
    look to it like memory in use."""
    _worker_init(registry_args, plans, threads)
    heap.set_up_worker()


def _worker_run(part: Part) -> pa.Table:
    """A part's table, in a worker set up by _worker_init."""
    return run_task(_worker_state["registry"], _worker_state["plans"][part.task.experiment], part.task, part.seeds)


def _dask_run(registry_args: dict, plans: list[Plan], context: str, part: Part, threads: int,
              timeout: float | None) -> tuple[pa.Table | Lost, str | None]:
    """A part's outcome on a Dask worker (set up on its first part of the run whose registry
    and plans `context` identifies), and the worker's address."""
    if _worker_state.get("context") != context:
        _worker_init(registry_args, plans, threads)
        _worker_state["context"] = context
    torch.set_num_threads(threads)
    return executors.run_with_timeout(lambda: _worker_run(part), timeout), executors.worker_address()


NONTIMING_THREADS = 1

# a run whose seed-cells add up to less arithmetic than this (seeds x depth x width^2 x batch)
# runs in-process when --jobs is auto: starting workers (each imports torch) would cost more
AUTO_JOBS_WORK = 5e8


def _work(registry: Registry, plans: list[Plan], task: Task) -> int:
    """A rough size of a task's arithmetic: seeds x depth x width^2 x batch (0 for a measurement
    that does not depend on the seed)."""
    plan = next(p for p in plans if p.experiment == task.experiment)
    if not registry.measurements[task.measurement].seeded:
        return 0
    return len(plan.seeds) * task.depth * task.width ** 2 * plan.batch


def resolve_jobs(registry: Registry, plans: list[Plan], tasks: list[Task]) -> int:
    """The number of worker processes: the run's `jobs`, or for 0 (auto) one per CPU when the
    run is big enough to pay for them, else 1 (in-process)."""
    jobs = plans[0].settings.jobs
    if jobs:
        return jobs
    work = sum(_work(registry, plans, t) for t in tasks)
    return (os.cpu_count() or 1) if work >= AUTO_JOBS_WORK else 1


def schedule(registry: Registry, plans: list[Plan], tasks: list[Task], jobs: int) -> list[tuple[Task, list]]:
    """The order tasks go to `jobs` workers, each with its parts: the seeds of a task split in
    `jobs` parts where the task alone is more than half a worker's share of the run (a seed's
    records do not depend on which others it runs with; a whole cell's seeds in one stack run
    faster), else [None] (all its seeds). Within each measurement the biggest tasks go first,
    so that no worker is left with a big one at the end."""
    work = {t: _work(registry, plans, t) for t in tasks}
    share = sum(work.values()) / (2 * jobs)
    first_seen = {m: i for i, m in reversed(list(enumerate(t.measurement for t in tasks)))}
    ordered = sorted(tasks, key=lambda t: (first_seen[t.measurement], -work[t]))
    seeds = {p.experiment: p.seeds for p in plans}
    return [(t, seed_parts(seeds[t.experiment], jobs) if work[t] > share else [None]) for t in ordered]


def seed_parts(seeds: tuple[int, ...], parts: int) -> list[tuple[int, ...]]:
    """`seeds` in `parts` consecutive, nearly equal parts (none empty)."""
    parts = max(1, min(parts, len(seeds)))
    bounds = [round(i * len(seeds) / parts) for i in range(parts + 1)]
    return [seeds[a:b] for a, b in zip(bounds, bounds[1:])]


def _merge_parts(parts: list[pa.Table]) -> pa.Table:
    """A task's table from its parts' tables (one failed part fails the task)."""
    failed = next((t for t in parts if results.count(t, "failed")), None)
    return failed if failed is not None else results.concat(parts)


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
    """Run metadata: versions, device, threads, CPU, git commit, the plan(s), the plugins, and
    every variant's full definition (registry.Registry.definition; per experiment too, where an
    experiment overrides a variant), and what a report needs without the plugins: which way each
    metric improves (Measurement.better), the order of each measurement's metrics, and a Run's
    description and declared figures."""
    run = plans if isinstance(plans, Run) else None
    plan = run.plans[0] if run else plans
    measurements = {m for p in (run.plans if run else [plan]) for m in p.measurements}
    settings = plan.settings
    device_name = torch.cuda.get_device_name() if settings.device == "cuda" else _cpu_model()
    return {
        "skipbench": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": settings.device, "device_name": device_name,
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": settings.threads,
        "nontiming_threads": NONTIMING_THREADS,
        "random_streams": "torch generator keys: weights = seed; data, train, eval, forward = "
                          "2**31 + mix31(4 * seed + stream - 1) (skipbench/engine/streams.py)",
        "git_commit": _git_commit(), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "peak_mem_method": memory.method(settings.device),
        "flops_convention": "torch.utils.flop_counter: a multiply-add counts as 2 FLOPs",
        **plan.as_dict(), "variant_definitions": _definitions(registry, plan),
        **({"experiments": [{**p.as_dict(), "variant_definitions": _definitions(registry, p)} for p in run.plans],
            "published": run.published, "description": run.description, "figures": run.figures} if run else {}),
        "plugins": [info.as_dict() for info in registry.plugins.infos] if registry.plugins else [],
        "better": {metric: way for m in measurements
                   for metric, way in registry.measurements[m].better.items()},  # for `skipbench compare`
        "metric_order": {m: list(registry.measurements[m].metrics) for m in sorted(measurements)},  # the tables
    }


def _definitions(registry: Registry, plan: Plan) -> dict[str, dict]:
    """The full definition of each of a plan's variants, by name."""
    return {v.name: registry.definition(v) for v in plan.variants}


def new_run_dir(out: str | None) -> Path:
    """A fresh run directory: `out` (which must not hold a run) or skipbench-results/<timestamp>."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--out {out!r} already exists and is not empty; runs never overwrite each other")
        path.mkdir(parents=True, exist_ok=True)
        try:  # claim the directory atomically: a second run racing for it finds records/ made
            (path / results.FRAGMENTS).mkdir()
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


def _resume(records_dir: Path) -> list[pa.Table]:
    """The tables of the tasks an interrupted run finished; the fragments of tasks that failed (to
    be run again), unreadable ones and temporary files of an interrupted write are removed."""
    kept = []
    for path, table in results.read_fragments(records_dir):
        if table is None or results.count(table, "failed"):
            path.unlink()
        else:
            kept.append(table)
    results.remove_partial_writes(records_dir.parent)
    return kept


def _task_keys(table: pa.Table) -> set[tuple]:
    """The keys (grid.task_key) of the tasks that have rows in `table`."""
    keys = ["experiment", "variant", "measurement", "depth", "width"]
    return {task_key(k) for k in table.select(keys).group_by(keys).aggregate([]).to_pylist()}


def make_executor(registry: Registry, plans: list[Plan], shared: list[Task], registry_args: dict | None,
                  execution: Execution):
    """The executor of a run's parts (see executors): a Dask cluster when one is asked for,
    local worker processes for more than one job or a cell timeout, else this process.
    Workers rebuild the registry from `registry_args` (the in-process executor needs none)."""
    timeout = execution.cell_timeout
    if execution.scheduler or execution.dask_workers:
        if registry_args is None:
            raise ValueError("a Dask cluster needs registry_args to rebuild the registry on its workers")
        context = hashlib.sha256(pickle.dumps((registry_args, plans))).hexdigest()  # this run's, on the workers
        return executors.DaskWorkers(_dask_run, (registry_args, plans, context), timeout, execution.scheduler,
                                     execution.dask_workers)
    jobs = resolve_jobs(registry, plans, shared)
    if registry_args is not None and (jobs > 1 or timeout):
        return executors.LocalWorkers(jobs, _local_worker_init, (registry_args, plans), _worker_run, timeout)
    if timeout:
        raise ValueError("a cell timeout needs worker processes, hence registry_args")
    by_experiment = {plan.experiment: plan for plan in plans}

    def run(part: Part, threads: int) -> pa.Table:
        torch.set_num_threads(threads)
        return run_task(registry, by_experiment[part.task.experiment], part.task, part.seeds)

    return executors.InProcess(run)


def _parts(registry: Registry, plans: list[Plan], tasks: list[Task], slots: int) -> list[Part]:
    """The tasks as parts for `slots` parts at once: whole tasks in grid order for one, else
    in schedule()'s order with big cells' seeds split."""
    if slots == 1:
        return [Part(t) for t in tasks]
    return [Part(t, seeds, i, len(split)) for t, split in schedule(registry, plans, tasks, slots)
            for i, seeds in enumerate(split)]


def execute(registry: Registry, plans: Plan | Run, run_dir: Path, registry_args: dict | None = None,
            on_done: Callable[[Task, pa.Table], None] | None = None, resume: bool = False,
            execution: Execution | None = None) -> pa.Table:
    """Run every task of a Run (or of a single Plan), writing each finished task's table as a
    fragment under run_dir/records/, and return the run's table (with `resume`, the finished
    tasks' fragments first, and only the other tasks run). `on_done(task, table)` is called when
    a task's fragment is written; results.count(table, "failed") says whether it failed.
    `execution` says where the work runs (default: by the run's jobs, see make_executor)."""
    plans = plans.plans if isinstance(plans, Run) else [plans]
    by_experiment = {plan.experiment: plan for plan in plans}
    execution = execution or Execution()
    settings = plans[0].settings
    records_dir = run_dir / results.FRAGMENTS
    collected = _resume(records_dir) if resume and records_dir.is_dir() else []
    done = _task_keys(results.concat(collected))
    tasks = [t for plan in plans for t in plan.tasks(registry) if t.key not in done]
    shared = [t for t in tasks if not registry.measurements[t.measurement].exclusive]
    exclusive = [t for t in tasks if registry.measurements[t.measurement].exclusive]
    stream = results.FragmentStream(records_dir)

    def finish(task: Task, table: pa.Table) -> None:
        stream.write(table)
        collected.append(table)
        if on_done:
            on_done(task, table)

    def table_of(part: Part, outcome: pa.Table | Lost) -> pa.Table:
        if isinstance(outcome, Lost):
            return lost_task(by_experiment[part.task.experiment], part.task, outcome.reason)
        return outcome

    # non-timing work runs one thread per process, in workers or in-process: two OpenMP threads
    # collapse when another process takes a core, and at one thread a seed's numbers do not
    # depend on how its stack is split between threads; timing runs alone with `threads`, after
    torch.set_num_threads(NONTIMING_THREADS)
    executor = make_executor(registry, plans, shared, registry_args, execution)
    try:
        pending: dict[Task, list] = {}
        for part, outcome in executor.map(_parts(registry, plans, shared, executor.slots), NONTIMING_THREADS):
            tables = pending.setdefault(part.task, [None] * part.parts)
            tables[part.index] = table_of(part, outcome)
            if all(t is not None for t in tables):
                finish(part.task, _merge_parts(pending.pop(part.task)))
        for part, outcome in executor.map([Part(t) for t in exclusive], settings.threads, alone=True):
            finish(part.task, table_of(part, outcome))
        execution.used = executor.describe()
    finally:
        executor.close()
    torch.set_num_threads(settings.threads)
    return results.concat(collected)
