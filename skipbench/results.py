"""The run's results as one columnar table (pyarrow): building it, streaming it, exporting it.

The table has one row per measured value, ``(variant, measurement, metric, depth, width, seed,
index)``, with the columns `COLUMNS` (in that order, typed as `TYPES`) and then any
measurement-specific extras (``threads``, ``repeats``, ``bin_lo``, ...; typed by pyarrow's
inference, null where a row has none), sorted by name. ``status`` is ``ok``, ``nonfinite`` (NaN or
inf: recorded and flagged, not a failure), ``undefined`` (no value exists, the value is null and
``error`` says why) or ``failed`` (the cell raised, ``error`` holds the exception). ``mode`` is
the mode the record's network ran in: ``train`` (module.train()) or ``eval`` (module.eval()), as
the measurement chose it or the run forced it (profile ``mode``, ``--mode``); null where no
network ran (a failed cell, the matmul rate) or a plugin's measurement does not say.
``seeds_path`` (an extra of the seeded measurements) says how the seeds ran: ``stacked``,
``vmap`` or ``loop``, with the reason in parentheses where it is not the fastest the block allows.

- A measurement returns `Columns` blocks, or record dicts (measurements.record); `task_table` turns
  either, with the cell's coordinates, into the task's table.
- Each finished task is one fragment, ``RUN_DIR/records/NNNNNN.arrow`` (Arrow IPC, zstd), written
  to a hidden temporary name and renamed, so an interrupted run keeps every task it finished,
  whole, and a resumed run reads them back (`read_fragments`).
- At the end the run's table is written once as ``results.parquet`` and ``results.csv``;
  ``results.json`` holds the run metadata only (`export`). `load` reads a run directory back.

``value`` is float64 (counts such as ``params`` are exact there up to 2**53, and rounded beyond),
``seed`` and ``index`` nullable int64. The CSV prints integral floats without a fraction
(``123456``, as the integer records did) and NaN/inf as ``nan``, ``inf``, ``-inf``; strings are
quoted, null cells are empty.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet

from .specs import UsageError

COLUMNS = ["variant", "builder", "measurement", "metric", "depth", "width", "batch", "seed", "index",
           "value", "iqr", "unit", "status", "error", "experiment", "mode"]

TYPES = {**dict.fromkeys(["variant", "builder", "measurement", "metric", "unit", "status", "error", "experiment",
                          "mode"], pa.string()),
         **dict.fromkeys(["depth", "width", "batch", "seed", "index"], pa.int64()),
         **dict.fromkeys(["value", "iqr"], pa.float64())}

FRAGMENTS = "records"  # RUN_DIR/records/: one Arrow IPC file per finished task
_SUFFIX = ".arrow"
_PARTIAL = ".partial"  # the suffix of the hidden temporary file a write goes to (replace_atomic)


@dataclass
class Columns:
    """A block of records as columns, as measurements return them: `n` rows of one metric.

    `value`, and `seed`, `index`, `status`, `error` and every `extra` column when given, hold
    one entry per row (numpy arrays or lists; None for a column means null in every row). A value
    that does not exist has status ``undefined`` and its reason in `error` (its value is NaN in the
    array, null in the table); without a `status` column, or where a row's status is None, the
    status follows from the value (``ok``, or ``nonfinite`` for NaN/inf). The harness adds the
    cell's coordinates (see task_table); a measurement may still return record dicts (see
    measurements.record), which become the same table.
    """

    metric: str
    value: Any
    unit: str = ""
    seed: Any = None
    index: Any = None
    status: Any = None
    error: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def undefined_where(self, mask: Any, reason: str) -> "Columns":
        """These columns with the rows where `mask` is true marked undefined, for `reason`
        (their values NaN); unchanged where it is false everywhere."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.value = np.where(mask, np.nan, np.asarray(self.value, dtype=np.float64))
            self.status = np.where(mask, "undefined", None).tolist()
            self.error = np.where(mask, reason, None).tolist()
        return self


def expand(items: Iterable[Any]) -> list[dict]:
    """A measurement's items as partial records, one dict per row: Columns blocks row by row
    (an undefined row's value as None), dicts as they are."""
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(item)
            continue
        values = [float(v) for v in item.value]
        n = len(values)
        seeds = [None] * n if item.seed is None else [int(s) for s in item.seed]
        indexes = [None] * n if item.index is None else [None if i is None else int(i) for i in item.index]
        statuses = [None] * n if item.status is None else list(item.status)
        errors = [None] * n if item.error is None else list(item.error)
        extras = {k: v.tolist() if hasattr(v, "tolist") else list(v) for k, v in item.extra.items()}
        for j in range(n):
            rec = {"metric": item.metric, "value": None if statuses[j] == "undefined" else values[j],
                   "unit": item.unit, "seed": seeds[j], "index": indexes[j], **{k: v[j] for k, v in extras.items()}}
            if statuses[j] is not None:
                rec["status"] = statuses[j]
            if errors[j]:
                rec["error"] = errors[j]
            out.append(rec)
    return out


# -- building a task's table --------------------------------------------------------------------
def _array(values: Any, n: int, name: str) -> pa.Array:
    """Column `name` of n rows: None is all null, a string or number is repeated, else one entry
    per row (typed as TYPES says, or as pyarrow infers for an extra)."""
    type_ = TYPES.get(name)
    if values is None or isinstance(values, str) or not hasattr(values, "__iter__"):
        return pa.repeat(pa.scalar(values, type_), n)
    try:
        array = pa.array(values, type=type_)
    except pa.ArrowInvalid:  # an integer beyond 2**53 in a float64 column: rounded, as float() does
        if type_ != pa.float64():
            raise
        array = pa.array([None if v is None else float(v) for v in values], type=type_)
    if len(array) != n:
        raise ValueError(f"column {name!r} has {len(array)} entries for {n} values")
    return array


def _from_columns(block: Columns) -> pa.Table:
    """A Columns block as a table, without per-row Python work."""
    value = pa.array(block.value, type=pa.float64())
    n = len(value)
    cols = {"metric": block.metric, "unit": block.unit, "seed": block.seed, "index": block.index,
            "status": block.status, "error": block.error, **block.extra}
    try:
        return pa.table({"value": value, **{k: _array(v, n, k) for k, v in cols.items()}})
    except ValueError as exc:
        raise ValueError(f"Columns {block.metric!r}: {exc}") from None


def _from_records(records: list[dict]) -> pa.Table:
    """Record dicts (measurements.record) as a table: one column per key any of them has."""
    keys = dict.fromkeys(k for rec in records for k in rec)
    return pa.table({k: _array([rec.get(k) for rec in records], len(records), k) for k in keys})


def _blocks(items: Iterable[Columns | dict]) -> Iterator[pa.Table]:
    """The tables of a measurement's items, in order: each Columns block, each run of dicts."""
    pending: list[dict] = []
    for item in items:
        if isinstance(item, Columns):
            if pending:
                yield _from_records(pending)
                pending = []
            yield _from_columns(item)
        else:
            pending.append(item)
    if pending:
        yield _from_records(pending)


def _with_coords(block: pa.Table, coords: dict[str, Any]) -> pa.Table:
    """The block with the cell's coordinates as columns; a column the block has wins (as a
    record's own key did over the cell's)."""
    for name, value in coords.items():
        if name not in block.column_names:
            block = block.append_column(name, _array(value, len(block), name))
    return block


def _with_status(table: pa.Table) -> pa.Table:
    """Status and error, as records always had them: an explicit status wins; else a null value
    is ``undefined``, NaN/inf ``nonfinite`` (error "value is nan", "value is inf", "value is
    -inf"), anything else ``ok``. Undefined values are null; errors are "" when there is none."""
    value, given = table["value"], table["status"]
    derived = pc.if_else(pc.is_null(value), "undefined", pc.if_else(pc.is_finite(value), "ok", "nonfinite"))
    status = pc.coalesce(given, derived)
    infinite = pc.if_else(pc.greater(value, 0), "value is inf", "value is -inf")
    why = pc.if_else(pc.is_nan(value), "value is nan", infinite)
    flagged = pc.and_(pc.is_null(given), pc.equal(derived, "nonfinite"))
    error = pc.if_else(flagged, why, pc.coalesce(table["error"], ""))
    value = pc.if_else(pc.equal(status, "undefined"), pa.scalar(None, pa.float64()), value)
    return _set(_set(_set(table, "status", status), "error", error), "value", value)


def _set(table: pa.Table, name: str, column: Any) -> pa.Table:
    """The table with column `name` replaced (or appended)."""
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, column) if i >= 0 else table.append_column(name, column)


def conform(table: pa.Table) -> pa.Table:
    """The table with every one of COLUMNS (null where missing), typed as TYPES, in the order
    COLUMNS then the extras sorted by name, and no schema metadata."""
    n = len(table)
    for name in COLUMNS:
        column = table[name].cast(TYPES[name]) if name in table.column_names else pa.nulls(n, TYPES[name])
        table = _set(table, name, column)
    order = COLUMNS + sorted(set(table.column_names) - set(COLUMNS))
    return table.select(order).replace_schema_metadata(None)


def empty() -> pa.Table:
    """A table of no rows with the COLUMNS."""
    return pa.schema([(name, TYPES[name]) for name in COLUMNS]).empty_table()


def concat(tables: Iterable[pa.Table]) -> pa.Table:
    """One table of many (tasks'): columns unified by name, types promoted (int64 and float64 of
    one extra give float64), a column one table lacks null in its rows; conformed."""
    tables = list(tables)
    if not tables:
        return empty()
    return conform(pa.concat_tables(tables, promote_options="permissive").combine_chunks())


def task_table(items: Iterable[Columns | dict], **coords: Any) -> pa.Table:
    """One task's table from its measurement's items (Columns blocks and/or record dicts, in
    order) and the cell's coordinates (variant, builder, measurement, depth, width, batch,
    experiment, and any other: a coordinate not in COLUMNS becomes an extra column)."""
    blocks = [_with_coords(block, coords) for block in _blocks(items)]
    if not blocks:
        return empty()
    return conform(_with_status(concat(blocks)))


def failure(error: str, **coords: Any) -> pa.Table:
    """The one-row table of a cell that raised."""
    return task_table([{"metric": "", "value": None, "status": "failed", "error": error}], **coords)


def count(table: pa.Table, status: str) -> int:
    """How many rows of `table` have this status."""
    return pc.sum(pc.equal(table["status"], status)).as_py() or 0


def fallbacks(table: pa.Table) -> list[str]:
    """One line per variant whose seeds ran slower than its blocks allow (a ``seeds_path``
    with a reason: the loop or vmap instead of vectorized seeds), naming the path and the
    reason; several reasons of one variant are joined."""
    if "seeds_path" not in table.column_names:
        return []
    pairs = table.select(["variant", "seeds_path"]).group_by(["variant", "seeds_path"], use_threads=False).aggregate([])
    how = {"loop": "one at a time (the per-seed loop)", "vmap": "under vmap, not as stacked arithmetic"}
    found: dict[str, set[str]] = {}
    for variant, label in zip(*pairs.to_pydict().values()):
        path, _, reason = (label or "").partition(" (")
        if reason:
            found.setdefault(variant, set()).add(f"{how.get(path, path)}: {reason.removesuffix(')')}")
    return [f"variant {variant!r}: its seeds ran {' | '.join(sorted(lines))}" for variant, lines in sorted(found.items())]


# -- files --------------------------------------------------------------------------------------
class WriteFailed(OSError):
    """A file could not be written (a full disk, ...): `filename` is the file, whatever part of
    the write failed; nothing of it was left behind (see replace_atomic)."""


def replace_atomic(path: Path, write: Callable[[str], None], durable: bool = False) -> None:
    """Write `path` through `write(temporary path)` and a rename, so readers never see half of
    it; `durable` also syncs it to disk before the rename (a fragment must survive a crash).
    When it fails (a full disk, ...) the temporary file is removed and WriteFailed names `path`
    (its `filename`), whatever part of the write raised it."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PARTIAL)
        os.close(fd)
        write(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):  # the error that stopped the write is the one to report
                os.unlink(tmp)
        if isinstance(exc, OSError):  # pyarrow's errors, or one about the temporary file, name no path or another
            raise WriteFailed(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def remove_partial_writes(run_dir: Path) -> None:
    """Remove the temporary files of the writes a killed run left unfinished (replace_atomic):
    every hidden file under RUN_DIR/records/, and those of RUN_DIR's own files."""
    records = run_dir / FRAGMENTS
    for tmp in [*records.glob(".*"), *run_dir.glob(f".*{_PARTIAL}")]:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    replace_atomic(path, write)


def _write_ipc(table: pa.Table, path: str, compression: str | None = "zstd") -> None:
    """A fragment: an Arrow IPC file, zstd-compressed (a quarter of the size for little time);
    uncompressed (`compression` None) where it is read back at once, memory-mapped."""
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)


def _read_ipc(path: Path) -> pa.Table:
    """A fragment's table."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def fragment_paths(records_dir: Path) -> list[Path]:
    """The finished fragments under records_dir, in the order they were written (temporary
    files of an interrupted write are hidden, and left out)."""
    if not records_dir.is_dir():
        return []
    return sorted(p for p in records_dir.iterdir() if p.suffix == _SUFFIX and not p.name.startswith("."))


def read_fragments(records_dir: Path) -> Iterator[tuple[Path, pa.Table | None]]:
    """(path, table) of each fragment; the table is None where the file cannot be read."""
    for path in fragment_paths(records_dir):
        try:
            yield path, _read_ipc(path)
        except (OSError, pa.ArrowInvalid):
            yield path, None


class FragmentStream:
    """Writes each finished task's table as the next fragment RUN_DIR/records/NNNNNN.arrow."""

    def __init__(self, records_dir: Path):
        self.dir = records_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem) for p in fragment_paths(self.dir) if p.stem.isdigit()]
        self.next = max(numbers, default=0) + 1

    def write(self, table: pa.Table) -> Path:
        """Write one task's table, whole or not at all; returns the fragment's path."""
        path = self.dir / f"{self.next:06d}{_SUFFIX}"
        replace_atomic(path, lambda tmp: _write_ipc(table, tmp), durable=True)
        self.next += 1
        return path


def to_csv(table: pa.Table, path: str) -> None:
    """Tidy CSV: COLUMNS, then the extras sorted (the table's order, see conform), under a plain
    header line (pyarrow would quote the names; its quoting_header option needs pyarrow 23)."""
    table = conform(table)
    with open(path, "wb") as fh:
        fh.write((",".join(table.column_names) + "\n").encode())
        pyarrow.csv.write_csv(table, fh, pyarrow.csv.WriteOptions(include_header=False))


def hand_over(table: pa.Table, path: Path) -> None:
    """Write `table` for another process of this machine to `take_over` (an uncompressed Arrow
    IPC file: 30 ms for the seed profile's 330k rows, where reading results.parquet back
    takes half a second)."""
    _write_ipc(table, str(path), compression=None)


def take_over(path: Path) -> pa.Table:
    """The table `hand_over` wrote at `path`, memory-mapped."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def export(run_dir: Path, meta: dict, table: pa.Table) -> None:
    """Write results.parquet and results.csv (the run's table) and results.json (the metadata
    only), each atomically; results.json last, so its presence means a finished export."""
    table = conform(table)
    replace_atomic(run_dir / "results.parquet", lambda tmp: pyarrow.parquet.write_table(table, tmp))
    replace_atomic(run_dir / "results.csv", lambda tmp: to_csv(table, tmp))
    write_atomic(run_dir / "results.json", json.dumps({"meta": meta}, indent=1, allow_nan=False) + "\n")


def load(run_dir: str | Path) -> tuple[dict, pa.Table]:
    """(metadata, table) of a run directory: from results.parquet when the run finished, else
    from the fragments of an interrupted one (metadata {} then)."""
    run_dir = Path(run_dir)
    meta_path, parquet = run_dir / "results.json", run_dir / "results.parquet"
    meta = json.loads(meta_path.read_text())["meta"] if meta_path.is_file() else {}
    if parquet.is_file():
        return meta, conform(pyarrow.parquet.read_table(parquet))
    return meta, concat(t for _, t in read_fragments(run_dir / FRAGMENTS) if t is not None)


def load_finished(path: str | Path) -> tuple[dict, pa.Table]:
    """(meta, table) of a finished run directory; UsageError (one line) for anything else."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{str(path)!r} does not exist")
    if not p.is_dir():
        raise UsageError(f"{str(path)!r} is not a run directory (a run directory holds results.json)")
    if not (p / "results.json").is_file():
        if (p / FRAGMENTS).is_dir():
            raise UsageError(f"{str(path)!r} is an interrupted run ({FRAGMENTS}/ but no results.json); "
                             f"finish it with `skipbench run ... --resume {path}` first")
        raise UsageError(f"{str(path)!r} is not a skipbench run directory (no results.json)")
    if not (p / "results.parquet").is_file():
        raise UsageError(f"{str(path)!r} has results.json but no results.parquet")
    try:
        meta, table = load(p)
        if not isinstance(meta, dict):
            raise ValueError("results.json: meta is not an object")
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot read run {str(path)!r}: {first}") from None
    return meta, table


# -- summaries over seeds -----------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 1]) of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: median and interval of its finite values, and what was left out."""

    n: int
    median: float | None
    lo: float | None
    hi: float | None
    undefined: int = 0
    nonfinite: int = 0


def summarize(values: list[Any], statuses: list[str], log: bool = False, interval: float = 0.90) -> Summary:
    """Median and central `interval` of the finite values; ratios (`log`) are summarized as logs."""
    finite = sorted(v for v, s in zip(values, statuses) if s == "ok")
    undefined = statuses.count("undefined")
    nonfinite = statuses.count("nonfinite")
    if not finite:
        return Summary(0, None, None, None, undefined, nonfinite)
    use_log = log and finite[0] > 0
    data = [math.log(v) for v in finite] if use_log else finite
    tail = (1 - interval) / 2
    stats = [percentile(data, q) for q in (0.5, tail, 1 - tail)]
    if use_log:
        stats = [math.exp(s) for s in stats]
    return Summary(len(finite), *stats, undefined=undefined, nonfinite=nonfinite)
