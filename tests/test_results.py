"""results: the task table (status derivation, Columns and dicts alike), fragments (atomic,
resumable), the export (parquet, csv, json), loading, and summaries."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import as_rows, clean_env
from skipbench import results
from skipbench.measurements import record, undefined
from skipbench.results import COLUMNS, Columns, FragmentStream, failure, summarize, task_table

CONTRACT = ["variant", "builder", "measurement", "metric", "depth", "width", "batch", "seed", "index",
            "value", "iqr", "unit", "status", "error"]
COORDS = dict(variant="plain", builder="plain", measurement="gradient-flow", depth=4, width=16, batch=8)


def rec(metric, value, seed=0, index=None, **extra):
    """The one row (a dict) that a measurement's record of `value` becomes."""
    [row] = task_table([{"metric": metric, "value": value, "unit": "ratio", "seed": seed, "index": index, **extra}],
                       **COORDS).to_pylist()
    return row


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables: the same schema and rows (NaN equal to NaN)."""
    return a.schema == b.schema and as_rows(a) == as_rows(b)


# -- the task table -----------------------------------------------------------------------------
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


def test_explicit_status_wins():
    """A status the measurement gives is kept (no "value is nan" error added); an undefined
    value is null in the table, whatever the array held."""
    r = rec("grad_ratio", float("nan"), status="ok")
    assert (r["status"], r["error"]) == ("ok", "") and math.isnan(r["value"])
    r = rec("grad_ratio", 3.0, status="undefined", error="why")
    assert (r["status"], r["error"], r["value"]) == ("undefined", "why", None)


def test_failure_record():
    [r] = failure("RuntimeError: kaboom", **COORDS).to_pylist()
    assert (r["status"], r["error"], r["value"], r["metric"]) == ("failed", "RuntimeError: kaboom", None, "")
    assert set(CONTRACT) <= set(r)


def test_columns_are_the_contract():
    """The issue's columns in its order, then the experiment of multi-experiment profiles and
    the mode the network ran in."""
    assert COLUMNS == CONTRACT + ["experiment", "mode"]
    assert task_table([], **COORDS).column_names == COLUMNS


def _as_dicts():
    """A measurement's output as record dicts (measurements.record/undefined)."""
    return ([record("grad_norm", v, "l2", s, i) for s, row in enumerate([[1.0, 2.0], [float("nan"), 4.0]])
             for i, v in enumerate(row)]
            + [record("grad_ratio", 0.5, "ratio", 0), undefined("grad_ratio", "0/0: both zero", "ratio", 1),
               record("grad_ratio", float("inf"), "ratio", 2)]
            + [record("x_hist", d, "density", 0, b, block=3, bin_lo=b * 0.5, bin_hi=(b + 1) * 0.5)
               for b, d in enumerate([0.25, 0.75])]
            + [record("fwd_samples_per_s", 1234.5, "samples/s", iqr=10.0, repeats=30)])


def _as_columns():
    """The same output as Columns blocks."""
    return [Columns("grad_norm", np.array([1.0, 2.0, np.nan, 4.0]), "l2", seed=np.repeat([0, 1], 2),
                    index=np.tile([0, 1], 2)),
            Columns("grad_ratio", np.array([0.5, np.nan, np.inf]), "ratio", seed=np.arange(3),
                    status=["ok", "undefined", None], error=[None, "0/0: both zero", None]),
            Columns("x_hist", np.array([0.25, 0.75]), "density", seed=0, index=np.arange(2),
                    extra={"block": np.array([3, 3]), "bin_lo": np.array([0.0, 0.5]), "bin_hi": np.array([0.5, 1.0])}),
            Columns("fwd_samples_per_s", [1234.5], "samples/s", extra={"iqr": [10.0], "repeats": [30]})]


def test_columns_and_dicts_give_identical_tables():
    from_dicts, from_columns = task_table(_as_dicts(), **COORDS), task_table(_as_columns(), **COORDS)
    assert same(from_dicts, from_columns)
    assert from_dicts.column_names == COLUMNS + ["bin_hi", "bin_lo", "block", "repeats"]
    types = from_dicts.schema
    assert (types.field("value").type, types.field("seed").type, types.field("block").type) == \
        (pa.float64(), pa.int64(), pa.int64())
    rows = from_dicts.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "nonfinite", "ok", "ok", "undefined", "nonfinite",
                                           "ok", "ok", "ok"]
    assert [r["error"] for r in rows][2:7] == ["value is nan", "", "", "0/0: both zero", "value is inf"]
    assert rows[5]["value"] is None and rows[0]["block"] is None and rows[-1]["repeats"] == 30


def test_mixed_items_keep_their_order():
    """Dicts and Columns may be mixed; rows come in the order the measurement gave them."""
    items = _as_dicts()
    mixed = items[:4] + [_as_columns()[1]] + items[7:]
    assert same(task_table(mixed, **COORDS), task_table(items, **COORDS))


def test_an_items_own_column_wins_over_the_coordinates():
    rows = task_table([record("block_width", 24, "features", index=0, width=99)], **COORDS).to_pylist()
    assert rows[0]["width"] == 99 and rows[0]["depth"] == 4
    table = task_table([record("m", 1.0)], **COORDS, launch="x")  # a new coordinate: an extra column
    assert table.column_names == COLUMNS + ["launch"] and table["launch"].to_pylist() == ["x"]


def test_values_are_float64_and_huge_counts_are_rounded():
    """Counts are exact in float64 up to 2**53; beyond, they are rounded rather than failing the cell."""
    rows = task_table([record("params", 2 ** 53), record("flops", 2 ** 60 + 1)], **COORDS).to_pylist()
    assert [r["value"] for r in rows] == [2.0 ** 53, 2.0 ** 60] and all(r["status"] == "ok" for r in rows)


def test_columns_of_the_wrong_length_are_an_error():
    with pytest.raises(ValueError, match="'grad_norm': column 'seed' has 3 entries for 2 values"):
        task_table([Columns("grad_norm", [1.0, 2.0], seed=[0, 1, 2])], **COORDS)


def test_concat_promotes_and_fills_extras():
    a = task_table([record("m", 1.0, threads=2)], **COORDS)
    b = task_table([record("m", 2.0, threads=2.5, size=8)], **COORDS)
    c = task_table([record("m", 3.0)], **COORDS)
    table = results.concat([a, b, c])
    assert table.column_names == COLUMNS + ["size", "threads"]
    assert table["threads"].type == pa.float64() and table["threads"].to_pylist() == [2.0, 2.5, None]
    assert table["size"].to_pylist() == [None, 8, None]
    assert results.concat([]).column_names == COLUMNS


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity literals."""
    def refuse(const):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(text, parse_constant=refuse)


def _sample() -> pa.Table:
    """A run's table with every status, NaN and inf, a count, an extra column and a failure."""
    return results.concat([
        task_table([record("grad_ratio", 0.5, "ratio", 0), record("grad_ratio", float("nan"), "ratio", 1),
                    record("grad_ratio", float("inf"), "ratio", 2), record("grad_ratio", float("-inf"), "ratio", 3),
                    undefined("grad_ratio", "0/0", "ratio", 4), record("grad_norm", 1e-30, "l2", 0, 3),
                    record("params", 123456, "count")], **COORDS),
        failure("ValueError: x", **COORDS),
        task_table([record("fwd_samples_per_s", 1234.5, "samples/s", iqr=10.0, threads=2)], **COORDS)])


# -- fragments ----------------------------------------------------------------------------------
def test_fragments_round_trip_and_number_on(tmp_path):
    sample = _sample()
    stream = FragmentStream(tmp_path / "records")
    paths = [stream.write(sample.slice(0, 3)), stream.write(sample.slice(3))]
    assert [p.name for p in paths] == ["000001.arrow", "000002.arrow"]
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["000001.arrow", "000002.arrow"]
    fragments = list(results.read_fragments(tmp_path / "records"))
    assert [p for p, _ in fragments] == paths
    assert same(results.concat(t for _, t in fragments), sample)
    assert FragmentStream(tmp_path / "records").write(sample.slice(0, 1)).name == "000003.arrow"  # a resumed run's
    meta, loaded = results.load(tmp_path)  # an interrupted run: no results.json, no results.parquet
    assert meta == {} and same(loaded, results.concat([sample, sample.slice(0, 1)]))


def test_a_table_handed_over_is_taken_over_whole(tmp_path):
    """results.hand_over / take_over (the end of a run hands its table to the processes drawing
    figures): the same table, readable after its file is gone (memory-mapped, unlinked)."""
    sample = results.conform(_sample())
    path = tmp_path / "table.arrow"
    results.hand_over(sample, path)
    taken = results.take_over(path)
    path.unlink()
    assert same(taken, sample) and taken.num_rows == sample.num_rows > 0


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pyarrow as pa
    from skipbench import results

    table = results.task_table([{"metric": "m", "value": float(i), "seed": i} for i in range(50000)],
                               variant="plain", builder="plain", measurement="m", depth=2, width=4, batch=2)
    stream = results.FragmentStream(Path(sys.argv[1]))
    stream.write(table.slice(0, 100))  # a finished task

    def stalled(table, path):  # writes the first batches of the next fragment, then stalls there
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.slice(0, 1000))
            sink.flush()
            print("half written", flush=True)
            time.sleep(120)
            writer.write_table(table.slice(1000))

    results._write_ipc = stalled
    stream.write(table)
""")


def test_a_fragment_killed_mid_write_is_never_read(tmp_path):
    """SIGKILL during a fragment's write leaves only a hidden temporary file, which readers skip:
    the finished fragment reads back whole, the torn one not at all."""
    records = tmp_path / "records"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(records)], stdout=subprocess.PIPE, text=True,
                            env=clean_env())
    try:
        assert proc.stdout.readline() == "half written\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    [torn] = [p for p in records.iterdir() if p.name.startswith(".")]
    assert torn.stat().st_size > 0 and torn.name.startswith(".000002.arrow.")
    [(path, table)] = list(results.read_fragments(records))
    assert path.name == "000001.arrow" and table["value"].to_pylist() == [float(i) for i in range(100)]
    _, loaded = results.load(tmp_path)
    assert len(loaded) == 100


def test_failed_write_leaves_no_fragment(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    stream = FragmentStream(tmp_path / "records")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        stream.write(_sample())
    assert list((tmp_path / "records").iterdir()) == []


# -- export -------------------------------------------------------------------------------------
def test_export_writes_parquet_csv_and_json(tmp_path):
    table = _sample()
    meta = {"profile": "quick", "seeds": [0, 1]}
    results.export(tmp_path, meta, table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "results.parquet"]
    assert strict_json((tmp_path / "results.json").read_text()) == {"meta": meta}  # the metadata only
    assert same(results.conform(pq.read_table(tmp_path / "results.parquet")), table)
    loaded_meta, loaded = results.load(tmp_path)
    assert loaded_meta == meta and same(loaded, table)

    with open(tmp_path / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == ",".join(header)  # a plain header line
    assert header[:len(CONTRACT)] == CONTRACT
    assert header[len(CONTRACT):len(CONTRACT) + 2] == ["experiment", "mode"] and header[len(CONTRACT) + 2:] == ["threads"]
    assert len(rows) == len(table)
    assert [r["value"] for r in rows[:5]] == ["0.5", "nan", "inf", "-inf", ""]
    assert rows[5]["value"] == "1e-30" and rows[6]["value"] == "123456"  # a count prints as an integer
    assert [r["status"] for r in rows] == table["status"].to_pylist()
    assert [r["seed"] for r in rows[:2]] == ["0", "1"] and rows[6]["seed"] == "" and rows[7]["error"] == "ValueError: x"
    assert rows[-1]["threads"] == "2" and rows[0]["threads"] == ""


def test_exported_files_get_the_usual_permissions(tmp_path):
    """Atomic writes must not leave results private (mkstemp's 0600): same mode as a plain write."""
    results.export(tmp_path, {}, _sample())
    (tmp_path / "plain.txt").write_text("x")
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    for name in ("results.json", "results.csv", "results.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_export_is_atomic(tmp_path, monkeypatch):
    """A failed rename leaves the previous files whole and no temporary file behind."""
    results.export(tmp_path, {"run": 1}, _sample())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        results.export(tmp_path, {"run": 2}, _sample().slice(0, 1))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# -- resuming a run from its fragments, end to end ---------------------------------------------
def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in ("variant", "measurement", "depth", "metric", "seed", "index")])


def test_cli_resume_completes_a_run_from_its_fragments(run_cli, tmp_path):
    """An interrupted run (some fragments, one torn write, no results files) resumed with --resume
    runs only the missing tasks and ends with the table a whole run makes."""
    args = ["run", "plain", "residual", "-m", "params", "-m", "gradient-flow", "--profile", "quick", "--no-figures"]
    proc = run_cli(*args, "--out", "full")
    assert proc.returncode == 0, proc.stderr
    fragments = sorted((tmp_path / "full" / "records").iterdir())
    total = len(fragments)
    assert total == 8 and all(p.suffix == ".arrow" for p in fragments)

    part = tmp_path / "part" / "records"
    part.mkdir(parents=True)
    (part.parent / "run.json").write_bytes((tmp_path / "full" / "run.json").read_bytes())  # the run's identity
    for p in fragments[:3]:
        (part / p.name).write_bytes(p.read_bytes())
    data = fragments[3].read_bytes()
    (part / ".000004.arrow.x1y2").write_bytes(data[:len(data) // 2])  # the write SIGKILL interrupted
    proc = run_cli(*args, "--resume", "part")
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("[")]) == total - 3
    assert sorted(p.name for p in part.iterdir()) == [f"{i:06d}.arrow" for i in range(1, total + 1)]
    _, full = results.load(tmp_path / "full")
    meta, resumed = results.load(tmp_path / "part")
    assert meta["profile"] == "quick" and same(_sorted(resumed), _sorted(full))
    assert "== params ==" in proc.stdout and "== gradient-flow ==" in proc.stdout

    proc = run_cli(*args, "--resume", "nothing-here")
    assert proc.returncode == 2 and "no records/ there to resume from" in proc.stderr


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
    statuses = task_table([{"metric": "m", "value": v} for v in values], **COORDS)["status"].to_pylist()
    s = summarize(values, statuses)
    assert (s.n, s.undefined, s.nonfinite, s.median) == (3, 2, 2, 2.0)


def test_summarize_without_finite_values():
    s = summarize([None, float("nan")], ["undefined", "nonfinite"])
    assert (s.n, s.median, s.lo, s.hi, s.undefined, s.nonfinite) == (0, None, None, None, 1, 1)
