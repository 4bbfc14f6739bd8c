"""A pool of local worker processes that survives its workers: a hung call and a dead worker
cost only their own item.

``concurrent.futures.ProcessPoolExecutor`` breaks as a whole when one worker dies (the
out-of-memory killer, a segfault in a plugin's extension) and cannot stop a call that never
returns. This pool runs one call at a time per worker process, watches each worker's process
sentinel and its call's deadline, and when a worker dies or overruns its deadline kills it,
reports that item as `Lost` and starts a fresh worker in its place; the other items go on.

Workers are started from a forkserver (see cli.start_worker_server), run `initializer(*initargs)`
once, then say they are ready; a call's deadline counts from when it is handed to a ready
worker, so starting a worker never eats into an item's time.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

# a worker that dies this many times in a row before saying it is ready is a broken setup,
# not a bad item: raise instead of restarting it forever
MAX_FAILED_STARTS = 3


@dataclass(frozen=True)
class Lost:
    """An item whose call did not return a value: ``reason`` is one line starting
    ``CellTimeout:``, ``WorkerDied:`` or ``WorkerError:`` (the call raised)."""

    reason: str


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, in words: the signal that killed it, or its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        oom = " (as the out-of-memory killer ends a process)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by signal {name}{oom}"
    return f"exited with code {exitcode}"


def _serve(conn, initializer: Callable, initargs: tuple) -> None:
    """A worker's life: initialize, say ready, then run each (fn, args) it is sent until None."""
    initializer(*initargs)
    conn.send(("ready", None))
    while True:
        message = conn.recv()
        if message is None:
            return
        fn, args = message
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as exc:  # the caller decides what an exception means for its item
            conn.send(("error", "".join(traceback.format_exception_only(type(exc), exc)).strip()))


class _Worker:
    """One worker process, its pipe, and the item it is running (if any)."""

    def __init__(self, ctx, initializer: Callable, initargs: tuple):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, initializer, initargs), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.item: Any = None
        self.deadline = float("inf")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class WorkerPool:
    """`workers` processes, each running `initializer(*initargs)` once; `map` runs calls on
    them, one at a time per worker, each within `timeout` seconds (None: no limit)."""

    def __init__(self, workers: int, initializer: Callable, initargs: tuple = (), timeout: float | None = None,
                 context: str = "forkserver"):
        self.ctx = multiprocessing.get_context(context)
        self.initializer, self.initargs, self.timeout = initializer, initargs, timeout
        self.workers = [self._start() for _ in range(max(1, workers))]
        self.failed_starts = 0

    def _start(self) -> _Worker:
        return _Worker(self.ctx, self.initializer, self.initargs)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = self._start()

    def map(self, fn: Callable, items: Iterable[Any], args: Callable[[Any], tuple]) -> Iterator[tuple[Any, Any]]:
        """Run ``fn(*args(item))`` for every item; yield (item, its return value) as they
        finish, or (item, Lost) where the worker died, ran past the timeout, or `fn` raised."""
        queue = deque(items)
        while queue or any(w.item is not None for w in self.workers):
            for worker in self.workers:
                if worker.ready and worker.item is None and queue:
                    worker.item = queue.popleft()
                    worker.conn.send((fn, args(worker.item)))
                    worker.deadline = time.monotonic() + self.timeout if self.timeout else float("inf")
            deadline = min(w.deadline for w in self.workers)
            wait = None if deadline == float("inf") else max(0.0, deadline - time.monotonic())
            waitables = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
            multiprocessing.connection.wait(waitables, timeout=wait)
            for worker in list(self.workers):
                yield from self._check(worker)

    def _check(self, worker: _Worker) -> Iterator[tuple[Any, Any]]:
        """Read what `worker` has to say; replace it where it died or overran its deadline."""
        try:
            message = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            message = None
        if message is not None:
            kind, value = message
            if kind == "ready":
                worker.ready, self.failed_starts = True, 0
                return
            item, worker.item, worker.deadline = worker.item, None, float("inf")
            yield item, Lost(f"WorkerError: {value}") if kind == "error" else value
            return
        if not worker.process.is_alive():
            item = worker.item
            if item is None and not worker.ready:
                self.failed_starts += 1
                if self.failed_starts >= MAX_FAILED_STARTS:
                    raise RuntimeError(f"worker processes die before they are ready "
                                       f"({exit_reason(worker.process.exitcode)}, {MAX_FAILED_STARTS} times in a row)")
            self._replace(worker)
            if item is not None:
                yield item, Lost(f"WorkerDied: the worker process running it {exit_reason(worker.process.exitcode)}")
        elif worker.item is not None and time.monotonic() >= worker.deadline:
            item = worker.item
            self._replace(worker)
            yield item, Lost(f"CellTimeout: ran longer than {self.timeout:g} s (--cell-timeout); its worker was stopped")

    def close(self) -> None:
        """Stop every worker (idle ones are asked to finish, the rest killed)."""
        for worker in self.workers:
            try:
                if worker.process.is_alive() and worker.item is None:
                    worker.conn.send(None)
                    worker.process.join(timeout=5)
            except OSError:
                pass
            worker.kill()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
