"""Result records: completion, streaming JSONL, JSON/CSV export, loading and summarizing.

A record is one measured value: ``{variant, builder, measurement, metric, depth, width, batch,
seed, index, value, iqr, unit, status, error}`` (plus measurement-specific extras). ``status`` is
``ok``, ``nonfinite`` (NaN or inf: recorded and flagged, not a failure), ``undefined`` (no value
exists, `error` says why) or ``failed`` (the cell raised, `error` holds the exception).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

COLUMNS = ["variant", "builder", "measurement", "metric", "depth", "width", "batch", "seed", "index",
           "value", "iqr", "unit", "status", "error", "experiment"]


_BLANK = dict.fromkeys(COLUMNS)


@dataclass
class Columns:
    """A block of records as columns, as measurements return them: `n` rows of one metric.

    `value`, and `seed`, `index`, `status`, `error` and every `extra` column when given, hold
    one entry per row (numpy arrays or lists). A value that does not exist has status
    ``undefined`` and its reason in `error` (its value is NaN in the array); without a `status`
    column, every row's status follows from its value (``ok``, or ``nonfinite`` for NaN/inf).
    The harness adds the cell's coordinates; a measurement may still return record dicts (see
    measurements.record), which the harness converts the same way.
    """

    metric: str
    value: Any
    unit: str = ""
    seed: Any = None
    index: Any = None
    status: Any = None
    error: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


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


def complete(partial: dict, **coords: Any) -> dict:
    """A full record from a measurement's partial one and the cell's coordinates."""
    rec = _BLANK.copy()
    rec.update(coords)
    rec.update(partial)
    if rec.get("status") is None:
        value = rec["value"]
        if value is None:
            rec["status"] = "undefined"
        elif isinstance(value, float) and not math.isfinite(value):
            rec["status"], rec["error"] = "nonfinite", f"value is {value}"
        else:
            rec["status"] = "ok"
    rec["error"] = rec["error"] or ""
    return rec


def failure(error: str, **coords: Any) -> dict:
    """The record of a cell that raised."""
    return complete({"metric": "", "value": None, "status": "failed", "error": error}, **coords)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; "nan", "inf", "-inf" load back below
    return value


def _from_json(rec: dict) -> dict:
    if isinstance(rec.get("value"), str):
        rec["value"] = float(rec["value"])
    return rec


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json's C encoder, made once: json.dumps makes a new one per call, which costs more than encoding
# a small record (runs write 10^5 of them)
_encode = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _unserializable, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, False)


def dumps(rec: dict) -> str:
    """One record as one line of strict JSON (NaN and inf as the strings "nan", "inf", "-inf")."""
    if _encode is not None:
        try:
            return "".join(_encode(rec, 0))
        except ValueError:  # a non-finite float
            pass
    return json.dumps({k: _json_value(v) for k, v in rec.items()}, allow_nan=False)


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary file and a rename, so readers never see half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _drop_torn_tail(path: Path) -> None:
    """Cut an interrupted run's unterminated last line, so appended records start on a new line."""
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


class RecordStream:
    """Appends records to RUN_DIR/records.jsonl as each task finishes."""

    def __init__(self, path: Path):
        self.path = path
        _drop_torn_tail(path)
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        self._fh.write("".join(dumps(r) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def load_jsonl(path: Path) -> list[dict]:
    """Records from a records.jsonl file (a torn last line from an interrupted run is ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(_from_json(json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


def load(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """(metadata, records) of a finished run directory, or of an interrupted one."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").is_file():
        data = json.loads((run_dir / "results.json").read_text())
        return data["meta"], [_from_json(r) for r in data["records"]]
    return {}, load_jsonl(run_dir / "records.jsonl")


def to_csv(records: list[dict]) -> str:
    """Tidy CSV: the contract's columns first, then any extra keys records carry."""
    fields = COLUMNS + sorted({k for r in records for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # rows as lists (csv writes None as ""): DictWriter's
    writer.writerow(fields)                         # per-row checks cost more than the rest
    writer.writerows([rec.get(k) for k in fields] for rec in records)
    return buf.getvalue()


def to_json(meta: dict, records: list[dict]) -> str:
    """results.json: the metadata indented, then one record per line (an indented dump of the
    whole payload would go through json's pure-Python encoder: seconds for 10^5 records)."""
    head = json.dumps({"meta": meta}, indent=1, allow_nan=False)[:-2]  # without the closing "\n}"
    lines = ",\n".join(dumps(r) for r in records)
    return f'{head},\n "records": [\n{lines}\n ]\n}}\n' if records else f'{head},\n "records": []\n}}\n'


def export(run_dir: Path, meta: dict, records: list[dict]) -> None:
    """Write results.json (metadata and records) and results.csv, atomically."""
    write_atomic(run_dir / "results.json", to_json(meta, records))
    write_atomic(run_dir / "results.csv", to_csv(records))


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
