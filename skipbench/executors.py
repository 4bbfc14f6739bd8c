"""Where a run's work goes: this process, local worker processes, or a Dask cluster.

The harness cuts a run into `Part`s (a task's seeds, or a share of them) and hands them to one
executor, which yields each part with its outcome as it finishes: the part's table, or
`pool.Lost` where it never came back (its worker died, it ran past --cell-timeout, or the call
itself raised). Every executor has `slots` (how many parts run at once, which decides how the
harness splits big cells' seeds) and `map(parts, threads, alone)`; ``alone=True`` is for timing
parts: one at a time, after everything else, with nothing running beside them.

- `InProcess`: one part after another in this process (no --cell-timeout possible here).
- `LocalWorkers`: `jobs` processes of one thread each (pool.WorkerPool); timing parts get a
  fresh worker of their own with the run's timing threads.
- `DaskWorkers`: a dask.distributed cluster, an existing one (``--scheduler ADDRESS``) or a
  LocalCluster started here (``--dask-workers N``). Dask retries the parts of a worker lost
  mid-run on the others; a part that keeps killing its workers comes back as Lost. Timing parts
  run one at a time once everything else is done, on workers that declare the `TIMING_RESOURCE`
  where any does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .pool import Lost, WorkerPool
from .specs import UsageError

TIMING_RESOURCE = "timing"  # a Dask worker resource: `dask worker ADDRESS --resources timing=1`
RESUBMITS = 2  # a part whose result was lost (its worker died after finishing it) runs again this often

# what a worker imports before its first part, so that no part's time limit pays for it: torch and
# skipbench (not torch._dynamo: nothing a part runs imports it, see engine/optim.py and replay.py)
WORKER_PRELOAD = ["skipbench.harness", "skipbench_plugins"]


@dataclass
class Execution:
    """How a run's work is spread, none of which changes a non-timing number: a time limit per
    cell (``--cell-timeout``: the cell runs in a worker process that is killed past it), a Dask
    cluster (``--scheduler ADDRESS``) or a local one started for the run (``--dask-workers N``).
    Without a cluster, the run's `jobs` decide between this process and local workers.
    `used` is filled in by `execute`: what actually ran the work (executors' describe())."""

    cell_timeout: float | None = None
    scheduler: str | None = None
    dask_workers: int | None = None
    used: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """A task's seeds (`seeds` None: all of them), or part `index` of `parts` of them."""

    task: Any
    seeds: tuple[int, ...] | None = None
    index: int = 0
    parts: int = 1


class InProcess:
    """Runs each part in this process with `run(part, threads)`, one after another."""

    slots = 1

    def __init__(self, run: Callable[[Part, int], Any]):
        self.run = run

    def describe(self) -> dict[str, Any]:
        return {"executor": "in-process", "workers": 1}

    def map(self, parts: Iterable[Part], threads: int, alone: bool = False) -> Iterator[tuple[Part, Any]]:
        for part in parts:
            yield part, self.run(part, threads)

    def close(self) -> None:
        pass


class LocalWorkers:
    """Runs parts in `jobs` local worker processes (pool.WorkerPool) started with
    ``initializer(*initargs, threads)``, each part as ``fn(part)``, within `timeout` seconds."""

    def __init__(self, jobs: int, initializer: Callable, initargs: tuple, fn: Callable, timeout: float | None):
        self.slots, self.initializer, self.initargs, self.fn, self.timeout = jobs, initializer, initargs, fn, timeout
        self.pool: WorkerPool | None = None

    def describe(self) -> dict[str, Any]:
        return {"executor": "local worker processes", "workers": self.slots, "cell_timeout": self.timeout}

    def map(self, parts: Iterable[Part], threads: int, alone: bool = False) -> Iterator[tuple[Part, Any]]:
        parts = list(parts)
        if not parts:
            return
        with WorkerPool(1 if alone else self.slots, self.initializer, (*self.initargs, threads), self.timeout) as pool:
            self.pool = pool
            yield from pool.map(self.fn, parts, lambda part: (part,))
        self.pool = None

    def close(self) -> None:
        """Stop the workers of a map left unfinished (an error or an interrupt in the caller)."""
        if self.pool is not None:
            self.pool.close()


class DaskWorkers:
    """Runs parts on a dask.distributed cluster as ``fn(*fn_args, part, threads, timeout)``,
    which returns (outcome, worker address); a part that timed out has its worker restarted."""

    def __init__(self, fn: Callable, fn_args: tuple, timeout: float | None, scheduler: str | None = None,
                 workers: int | None = None):
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError('--scheduler and --dask-workers need dask: pip install "skipbench[dask]"') from None
        self.fn, self.fn_args, self.timeout = fn, fn_args, timeout
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise UsageError(f"--scheduler {scheduler!r}: cannot connect ({exc})") from None
        else:
            # one thread per worker process; every local worker may time (all are on this machine);
            # a worker holds only the part it runs (saturation 1.0), so a part that kills its
            # worker takes no queued bystander down with it; the summary reports lost parts
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            resources={TIMING_RESOURCE: 1}, dashboard_address=None,
                                            silence_logs=logging.CRITICAL)
            self.client = Client(self.cluster)
        self.client.wait_for_workers(1, timeout=120)
        self._check_versions()
        self.workers = len(self.client.nthreads())
        self.slots = max(1, sum(self.client.nthreads().values()))
        self.timing_workers: set[str] = set()

    def _check_versions(self) -> None:
        """UsageError where a worker runs another skipbench, torch or Python than this process:
        its records would not be this run's."""
        mine = software_versions()
        odd = {addr: v for addr, v in self.client.run(software_versions).items() if v != mine}
        if odd:
            addr, theirs = next(iter(odd.items()))
            self.close()
            raise UsageError(f"the Dask worker {addr} (and {len(odd) - 1} more) runs {theirs}, this process "
                             f"{mine}: install the same versions on every worker")

    def describe(self) -> dict[str, Any]:
        return {"executor": "dask", "scheduler": self.client.scheduler.address, "workers": self.workers,
                "slots": self.slots, "cell_timeout": self.timeout, "timing_workers": sorted(self.timing_workers)}

    def _timing_resources(self) -> dict[str, int] | None:
        workers = self.client.scheduler_info()["workers"].values()
        return {TIMING_RESOURCE: 1} if any(TIMING_RESOURCE in w.get("resources", {}) for w in workers) else None

    def _submit(self, part: Part, threads: int, **kwargs: Any):
        return self.client.submit(self.fn, *self.fn_args, part, threads, self.timeout, pure=False, **kwargs)

    def _outcome(self, future) -> tuple[Any, str | None] | None:
        """(outcome, worker address) of a done future; Lost where it errored (KilledWorker: it
        killed every worker it was tried on); None where its result was lost before it was
        fetched (its worker died just after finishing it): run it again."""
        if future.status == "finished":
            try:
                return future.result()
            except Exception:  # the worker holding the result died meanwhile
                return None
        if future.status != "error":
            return None
        exc = future.exception()
        if type(exc).__name__ == "KilledWorker":
            return Lost(f"WorkerDied: every Dask worker that ran it died ({exc.allowed_failures + 1} tries; "
                        f"the last was {exc.last_worker.address})"), None
        first = (str(exc).strip().splitlines() or [""])[0]
        return Lost(f"WorkerError: {type(exc).__name__}: {first}"), None

    def _run(self, part: Part, threads: int, **kwargs: Any) -> tuple[Any, str | None]:
        """Submit one part, wait for it, and fetch its outcome (again where its result was lost)."""
        from distributed import wait

        for _ in range(RESUBMITS + 1):
            future = self._submit(part, threads, **kwargs)
            wait(future)
            done = self._outcome(future)
            if done is not None:
                return done
        return Lost(f"WorkerError: its result was lost {RESUBMITS + 1} times (the workers holding it died)"), None

    def _restart(self, addresses: set[str]) -> None:
        """Restart workers whose timed-out call still runs in a thread (their nannies start
        them again), so that it stops using the worker."""
        alive = addresses & set(self.client.scheduler_info()["workers"])  # a dead one was replaced already
        if alive:
            self.client.restart_workers(sorted(alive), raise_for_error=False)

    def map(self, parts: Iterable[Part], threads: int, alone: bool = False) -> Iterator[tuple[Part, Any]]:
        from distributed import as_completed

        parts = list(parts)
        if alone:
            resources = self._timing_resources()
            for part in parts:  # one at a time: nothing else runs on the cluster meanwhile
                outcome, address = self._run(part, threads, resources=resources)
                self._restart({address} if _timed_out(outcome) else set())  # before the next timing
                self.timing_workers.update([address] if address else [])
                yield part, outcome
            return
        futures = {self._submit(part, threads): part for part in parts}
        stuck = set()  # restarted once the rest is done: a restart would fail the parts queued there
        for future in as_completed(futures):
            part = futures.pop(future)
            done = self._outcome(future)
            outcome, address = done if done is not None else self._run(part, threads)
            if _timed_out(outcome) and address:
                stuck.add(address)
            yield part, outcome
        self._restart(stuck)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def software_versions() -> str:
    """What a process's records depend on besides the run: skipbench, torch and Python versions."""
    import platform

    import torch

    from . import __version__

    return f"skipbench {__version__}, torch {torch.__version__}, Python {platform.python_version()}"


def _timed_out(outcome: Any) -> bool:
    return isinstance(outcome, Lost) and outcome.reason.startswith("CellTimeout")


def run_with_timeout(call: Callable[[], Any], timeout: float | None) -> Any:
    """``call()``, or Lost (CellTimeout) when it has not returned after `timeout` seconds (it
    keeps running in its thread; the caller restarts the process). For Dask workers, where a
    call cannot be killed from outside."""
    if not timeout:
        return call()
    import threading

    box: list[Any] = []

    def target() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(Lost(f"WorkerError: {type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return Lost(f"CellTimeout: ran longer than {timeout:g} s (--cell-timeout); its worker is restarted")
    return box[0]


def worker_address() -> str | None:
    """The address of the Dask worker this runs on (None outside one)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
