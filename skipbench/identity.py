"""A run's identity, RUN_DIR/run.json: what decides its records, so that ``--resume`` continues
only the run the directory was started as.

The identity is everything a record depends on: the skipbench and torch versions, the profile,
the seeds, the device, the threads of its timing tasks, and per experiment its variants with
their full definitions (registry.Registry.definition: builder, parameters with their defaults,
network options, providers and their versions), measurements, depths, widths, batch, mode and
measurement options (grid.Plan.as_dict). Left out is what changes when or where the run happens
but not its records (start time, git commit, worker processes, executor) and what only the
report reads (description, published values, figures).

A run holds its directory (`hold`: an exclusive flock on the directory itself) from before it writes
its identity until it ends, so that two runs never write one directory's records at once (a
second ``--resume`` of a directory while the first is still going is refused); the kernel
releases the lock when the process ends, ``kill -9`` included.

A run writes its identity before its first task. A resumed run whose command describes another
identity would put two different runs' records in one table, so `check` refuses it and names
what differs; a directory without run.json (made by an older skipbench) cannot be checked and
is refused too.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

import torch

from . import __version__, results
from .grid import Run
from .registry import Registry
from .specs import UsageError

FILE = "run.json"
_LABELS = {"skipbench": "skipbench version", "torch": "torch version", "threads": "timing threads"}
_SHOWN = 5  # differences named in the refusal; the rest are counted
_ABSENT = object()


@contextlib.contextmanager
def hold(run_dir: Path, label: str) -> Iterator[None]:
    """Hold `run_dir` for this run while the block runs; UsageError when another process holds
    it (see the module's docstring)."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"{label}: another skipbench run is writing to {str(run_dir)!r} right now; "
                                 f"wait for it to end") from None
        yield
    finally:
        os.close(fd)


def describe(run: Run, registry: Registry) -> dict[str, Any]:
    """The identity of `run` (see the module's docstring), as run.json stores it."""
    settings = run.settings.as_dict()
    experiments = {}
    for plan in run.plans:
        entry = {k: v for k, v in plan.as_dict().items() if k not in settings and k not in ("profile", "experiment")}
        if "widths" in entry:
            entry.pop("width", None)  # the single width as_dict also gives, under its older name
        entry["variant_definitions"] = {v.name: registry.definition(v) for v in plan.variants}
        experiments[plan.experiment] = entry
    identity = {"skipbench": __version__, "torch": torch.__version__, "profile": run.profile,
                "seeds": settings["seeds"], "device": settings["device"], "threads": settings["threads"],
                "experiments": experiments}
    return json.loads(json.dumps(identity))  # as it reads back from run.json (lists, not tuples)


def write(run_dir: Path, identity: dict[str, Any]) -> None:
    """Store `identity` as RUN_DIR/run.json, atomically; UsageError where it cannot be written
    (nothing has run yet)."""
    try:
        results.write_atomic(run_dir / FILE, json.dumps(identity, indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot start the run in {run_dir}: cannot write {exc.filename}: "
                         f"{exc.strerror or exc}") from None


def check(run_dir: Path, identity: dict[str, Any], label: str) -> None:
    """UsageError (one line, starting with `label`) unless RUN_DIR/run.json holds `identity`."""
    path = run_dir / FILE
    if not path.is_file():
        raise UsageError(f"{label}: no {FILE} there, so what that run measured cannot be checked against this "
                         f"command (a run of skipbench before {FILE} existed, or one stopped before it began); "
                         f"start a new run")
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{label}: cannot read {path}: {exc}") from None
    found = differences(stored, identity)
    if found:
        more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        raise UsageError(f"{label}: this command differs from the run there in {_join(found[:_SHOWN])}{more}; "
                         f"resume it with the command that started it")


def differences(there: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between two identities, one phrase each ("seeds (0..63 there, 0..7 here)",
    "variant 'highway' definition (params.gate_bias: -3 there, -1 here)"); [] when equal. A
    variant only one side has shows as a difference in the experiment's variants."""
    top = [k for k in dict.fromkeys([*there, *here]) if k != "experiments"]
    found = [_phrase(_LABELS.get(path[0], ".".join(path)), a, b)
             for path, a, b in _leaves({k: there.get(k, _ABSENT) for k in top}, {k: here.get(k, _ABSENT) for k in top})]
    runs_there, runs_here = there.get("experiments", {}), here.get("experiments", {})
    if list(runs_there) != list(runs_here):
        found.append(_phrase("experiments", list(runs_there), list(runs_here)))
    for name in (n for n in runs_there if n in runs_here):
        prefix = f"experiment {name!r} " if name else ""
        a, b = dict(runs_there[name]), dict(runs_here[name])
        defs_a, defs_b = a.pop("variant_definitions", {}), b.pop("variant_definitions", {})
        found += [prefix + _phrase(".".join(path), x, y) for path, x, y in _leaves(a, b)]
        for variant in (v for v in defs_a if v in defs_b and defs_a[v] != defs_b[v]):
            leaves = [f"{'.'.join(path)}: {_show(x)} there, {_show(y)} here"
                      for path, x, y in _leaves(defs_a[variant], defs_b[variant])]
            shown = "; ".join(leaves[:2]) + ("; ..." if len(leaves) > 2 else "")
            found.append(f"{prefix}variant {variant!r} definition ({shown})")
    return found


def _leaves(a: Any, b: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path, value there, value here) of every leaf where two JSON values differ (dicts are
    descended into; anything else is one leaf)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            yield from _leaves(a.get(key, _ABSENT), b.get(key, _ABSENT), (*path, str(key)))
    elif a != b:
        yield path, a, b


def _phrase(label: str, there: Any, here: Any) -> str:
    return f"{label} ({_show(there)} there, {_show(here)} here)"


def _show(value: Any, limit: int = 60) -> str:
    """A short text of a JSON value: a run of consecutive integers as first..last."""
    if value is _ABSENT or value is None:
        return "nothing" if value is _ABSENT else "none"
    if (isinstance(value, list) and len(value) > 1 and all(type(v) is int for v in value)
            and value == list(range(value[0], value[0] + len(value)))):
        return f"{value[0]}..{value[-1]}"
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
