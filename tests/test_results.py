"""results: record completion, JSONL streaming, atomic export, loading and summaries."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from skipbench import results
from skipbench.results import COLUMNS, RecordStream, complete, failure, summarize

CONTRACT = ["variant", "builder", "measurement", "metric", "depth", "width", "batch", "seed", "index",
            "value", "iqr", "unit", "status", "error"]
COORDS = dict(variant="plain", builder="plain", measurement="gradient-flow", depth=4, width=16, batch=8)


def rec(metric, value, seed=0, index=None, **extra):
    return complete({"metric": metric, "value": value, "unit": "ratio", "seed": seed, "index": index, **extra}, **COORDS)


def strict_json(line: str):
    """json.loads that refuses NaN/Infinity literals."""
    def refuse(const):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(line, parse_constant=refuse)


# -- complete -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1.5, 0.0, -2.0, 7, 0])
def test_complete_ok(value):
    r = rec("grad_ratio", value)
    assert r["status"] == "ok" and r["error"] == "" and r["value"] == value
    assert list(r)[:len(CONTRACT)] == CONTRACT
    assert {k: r[k] for k in COORDS} == COORDS


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_complete_flags_nonfinite_with_error_text(value):
    r = rec("grad_ratio", value)
    assert r["status"] == "nonfinite"
    assert r["error"] == f"value is {value}"


def test_complete_undefined():
    assert rec("grad_ratio", None)["status"] == "undefined"
    r = rec("grad_ratio", None, status="undefined", error="0/0: both zero")
    assert (r["status"], r["error"], r["value"]) == ("undefined", "0/0: both zero", None)


def test_failure_record():
    r = failure("RuntimeError: kaboom", **COORDS)
    assert (r["status"], r["error"], r["value"], r["metric"]) == ("failed", "RuntimeError: kaboom", None, "")
    assert set(CONTRACT) <= set(r)


def test_columns_are_the_contract():
    """The issue's columns in its order, then the experiment of multi-experiment profiles."""
    assert COLUMNS == CONTRACT + ["experiment"]


# -- JSONL --------------------------------------------------------------------------------------
def _sample():
    return [rec("grad_ratio", 0.5, 0), rec("grad_ratio", float("nan"), 1), rec("grad_ratio", float("inf"), 2),
            rec("grad_ratio", float("-inf"), 3), rec("grad_ratio", None, 4, status="undefined", error="0/0"),
            rec("grad_norm", 1e-30, 0, index=3), failure("ValueError: x", **COORDS),
            complete({"metric": "fwd_samples_per_s", "value": 1234.5, "iqr": 10.0, "unit": "samples/s",
                      "threads": 2}, **COORDS)]


def _same(a: list[dict], b: list[dict]) -> bool:
    def norm(r):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
    return [norm(r) for r in a] == [norm(r) for r in b]


def test_jsonl_round_trip_with_nan_and_inf(tmp_path):
    path = tmp_path / "records.jsonl"
    stream = RecordStream(path)
    records = _sample()
    stream.write(records[:3])
    stream.write(records[3:])
    stream.close()
    lines = path.read_text().splitlines()
    assert len(lines) == len(records)
    for line in lines:
        strict_json(line)  # strict JSON: no NaN/Infinity literals
    loaded = results.load_jsonl(path)
    assert _same(loaded, records)
    assert math.isnan(loaded[1]["value"]) and loaded[2]["value"] == math.inf and loaded[3]["value"] == -math.inf


def test_stream_is_readable_after_each_write(tmp_path):
    path = tmp_path / "records.jsonl"
    stream = RecordStream(path)
    try:
        stream.write([rec("grad_ratio", 1.0)])
        assert len(results.load_jsonl(path)) == 1
        stream.write([rec("grad_ratio", 2.0), rec("grad_ratio", 3.0)])
        assert [r["value"] for r in results.load_jsonl(path)] == [1.0, 2.0, 3.0]
    finally:
        stream.close()


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "records.jsonl"
    records = _sample()[:3]
    full = "".join(results.dumps(r) + "\n" for r in records)
    torn = results.dumps(rec("grad_ratio", 9.0))[:25]
    path.write_text(full + torn)
    assert _same(results.load_jsonl(path), records)


def test_stream_after_a_torn_line_starts_a_new_line(tmp_path):
    """Appending (resume) after an interrupted write must not glue a record onto the torn line."""
    path = tmp_path / "records.jsonl"
    records = _sample()[:2]
    path.write_text("".join(results.dumps(r) + "\n" for r in records) + results.dumps(rec("x", 1.0))[:30])
    stream = RecordStream(path)
    stream.write([rec("grad_ratio", 5.0)])
    stream.close()
    assert _same(results.load_jsonl(path), records + [rec("grad_ratio", 5.0)])
    for line in path.read_text().splitlines():
        strict_json(line)


def test_load_interrupted_run_dir_reads_jsonl(tmp_path):
    stream = RecordStream(tmp_path / "records.jsonl")
    stream.write(_sample())
    stream.close()
    meta, loaded = results.load(tmp_path)
    assert meta == {} and _same(loaded, _sample())


# -- export -------------------------------------------------------------------------------------
def test_export_writes_json_and_csv(tmp_path):
    records = _sample()
    meta = {"profile": "quick", "seeds": [0, 1]}
    results.export(tmp_path, meta, records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]  # no temporary files left
    payload = strict_json((tmp_path / "results.json").read_text())
    assert payload["meta"] == meta and len(payload["records"]) == len(records)
    loaded_meta, loaded = results.load(tmp_path)
    assert loaded_meta == meta and _same(loaded, records)

    with open(tmp_path / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    assert header[:len(CONTRACT)] == CONTRACT
    assert header[len(CONTRACT)] == "experiment" and set(header[len(CONTRACT) + 1:]) == {"threads"}
    assert len(rows) == len(records)
    assert [r["value"] for r in rows[:5]] == ["0.5", "nan", "inf", "-inf", ""]
    assert [r["status"] for r in rows] == [r["status"] for r in records]
    assert rows[-1]["threads"] == "2" and rows[0]["threads"] == ""


def test_exported_files_get_the_usual_permissions(tmp_path):
    """Atomic writes must not leave results private (mkstemp's 0600): same mode as a plain write."""
    results.export(tmp_path, {}, _sample())
    (tmp_path / "plain.txt").write_text("x")
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == mode


def test_export_is_atomic(tmp_path, monkeypatch):
    """A failed rename leaves the previous file whole and no temporary file behind."""
    results.export(tmp_path, {"run": 1}, _sample())
    before = (tmp_path / "results.json").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        results.export(tmp_path, {"run": 2}, _sample()[:1])
    assert (tmp_path / "results.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]


# -- summaries ----------------------------------------------------------------------------------
def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    data = sorted(rng.normal(size=11).tolist())
    for q in (0, 0.05, 0.25, 0.5, 0.9, 1):
        assert results.percentile(data, q) == pytest.approx(np.percentile(data, 100 * q))


def test_summarize_median_and_interval():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    s = summarize(values, ["ok"] * len(values))
    assert (s.n, s.undefined, s.nonfinite) == (6, 0, 0)
    assert [s.median, s.lo, s.hi] == pytest.approx(np.percentile(values, [50, 5, 95]))
    s50 = summarize(values, ["ok"] * len(values), interval=0.5)
    assert [s50.lo, s50.hi] == pytest.approx(np.percentile(values, [25, 75]))


def test_summarize_ratios_as_log_ratios():
    values = [0.5, 2.0, 8.0, 1.0]
    s = summarize(values, ["ok"] * 4, log=True)
    expected = np.exp(np.percentile(np.log(values), [50, 5, 95]))
    assert [s.median, s.lo, s.hi] == pytest.approx(expected)
    assert s.median == pytest.approx(math.sqrt(2.0))  # geometric, not arithmetic (1.5), middle


def test_summarize_counts_undefined_and_nonfinite():
    values = [1.0, None, float("nan"), 2.0, float("inf"), None, 3.0]
    statuses = [complete({"metric": "m", "value": v}, **COORDS)["status"] for v in values]
    s = summarize(values, statuses)
    assert (s.n, s.undefined, s.nonfinite, s.median) == (3, 2, 2, 2.0)


def test_summarize_without_finite_values():
    s = summarize([None, float("nan")], ["undefined", "nonfinite"])
    assert (s.n, s.median, s.lo, s.hi, s.undefined, s.nonfinite) == (0, None, None, None, 1, 1)
