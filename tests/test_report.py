"""report: tables from the run's table (median [lo, hi] over seeds), the failures table, figures."""

from __future__ import annotations

import numpy as np

from skipbench import report
from skipbench.results import concat, failure, summarize, task_table


def rec(variant, measurement, metric, value, seed=0, index=None, depth=4, unit="", **extra):
    """One record, with its cell's coordinates (task_table takes them from the record itself)."""
    return {"variant": variant, "builder": variant, "measurement": measurement, "depth": depth, "width": 16,
            "batch": 8, "metric": metric, "value": value, "unit": unit, "seed": seed, "index": index, **extra}


def table(records):
    """The run's table of these records."""
    return task_table(records)


GRAD_RATIOS = {"plain": [0.5, 0.8, 1.1, 0.7, 0.9], "residual": [1.0, 1.2, 0.95, 1.05, 1.1]}


def _records():
    out = []
    for variant, values in GRAD_RATIOS.items():
        out += [rec(variant, "gradient-flow", "grad_ratio", v, seed, unit="ratio") for seed, v in enumerate(values)]
        out += [rec(variant, "gradient-flow", "grad_norm", 1.0 + i, 0, index=i, unit="l2") for i in range(3)]
        out += [rec(variant, "identity", "mse_init", 0.1 * (seed + 1), seed, unit="mse") for seed in range(3)]
        out.append(rec(variant, "params", "params", 123456, None, unit="count"))
        out.append(rec(variant, "throughput", "fwd_samples_per_s", 5000.0, None, unit="samples/s", iqr=50.0))
    out += [rec("odd", "gradient-flow", "grad_ratio", v, s, unit="ratio")
            for s, v in enumerate([1.0, None, float("nan"), 2.0])]
    out.append(rec("slow", "throughput", "fwd_samples_per_s", 100.0, None, unit="samples/s", iqr=40.0))
    out.append(rec("zero", "identity", "steps_to_threshold", None, None, status="undefined", error="never reached"))
    return table(out)


def _tables(records, fmt="simple"):
    metric_order = {"gradient-flow": ("grad_ratio", "grad_norm"), "identity": ("mse_init",), "params": ("params",),
                    "throughput": ("fwd_samples_per_s",)}
    kinds = {"skip kind": {"plain": "none", "residual": "additive"}}
    return dict(report.tables(records, ["gradient-flow", "identity", "params", "throughput"], metric_order, kinds, fmt))


def _row(table: str, variant: str) -> str:
    """The one line of a "simple" table whose first column is `variant`."""
    [line] = [line for line in table.splitlines() if line.split()[:1] == [variant]]
    return line


def test_one_table_per_measurement_with_scalar_metrics():
    tables = _tables(_records())
    assert list(tables) == ["gradient-flow", "identity", "params", "throughput"]
    assert "grad_ratio" in tables["gradient-flow"]
    assert "grad_norm" not in tables["gradient-flow"]  # per-block metric: a figure, not a column
    assert "mse_init" in tables["identity"] and "params" in tables["params"]
    assert "skip kind" in tables["params"] and "additive" in _row(tables["params"], "residual")
    assert "skip kind" not in tables["gradient-flow"]


def test_per_seed_cells_are_median_and_interval():
    tables = _tables(_records())
    for variant, values in GRAD_RATIOS.items():
        med, lo, hi = np.exp(np.percentile(np.log(values), [50, 5, 95]))
        assert f"{report.fmt(med)} [{report.fmt(lo)}, {report.fmt(hi)}]" in _row(tables["gradient-flow"], variant)
    med, lo, hi = np.percentile([0.1, 0.2, 0.3], [50, 5, 95])
    assert f"{report.fmt(med)} [{report.fmt(lo)}, {report.fmt(hi)}]" in _row(tables["identity"], "plain")


def test_cells_note_undefined_and_nonfinite_seeds():
    row = _row(_tables(_records())["gradient-flow"], "odd")
    s = summarize([1.0, 2.0], ["ok", "ok"], log=True)
    assert f"{report.fmt(s.median)} [{report.fmt(s.lo)}, {report.fmt(s.hi)}]" in row
    assert "1/4 undefined" in row and "1/4 nan/inf (!)" in row


def test_seed_independent_and_timing_cells():
    tables = _tables(_records())
    assert "123,456" in _row(tables["params"], "plain")
    assert "5,000 ± 50" in _row(tables["throughput"], "plain")
    assert "(!) high spread" in _row(tables["throughput"], "slow")
    assert "high spread" not in _row(tables["throughput"], "plain")
    assert "undefined (never reached)" in _row(_tables(_records())["identity"], "zero")


def test_tablefmt_is_passed_to_tabulate():
    text = _tables(_records(), fmt="github")["params"]
    assert all(line.startswith("|") for line in text.splitlines())


def test_fmt():
    assert report.fmt(None) == "-"
    assert report.fmt(1234567) == "1,234,567"
    assert report.fmt(0.000123456) == "0.000123"
    assert report.fmt(float("nan")) == "nan" and report.fmt(float("inf")) == "inf"


def test_failure_lines_give_one_line_per_fault():
    """Cells of a variant failing with the same error are one line, a multi-line error too."""
    cells = [failure("RuntimeError: kaboom\n  in forward", variant="boom", builder="boom", measurement=m,
                     depth=d, width=16, batch=8) for m, d in (("identity", 8), ("identity", 4), ("params", 8))]
    records = concat([_records(), *cells])
    assert report.failure_lines(records) == [
        "boom (identity at depths 4, 8; params at depth 8): RuntimeError: kaboom in forward"]
    assert report.failure_lines(_records()) == []
    assert "boom" not in "".join(_tables(records).values())  # failures are not table rows
    wider = [failure("RuntimeError: kaboom", variant="boom", builder="boom", measurement="params", depth=8,
                     width=w, batch=8) for w in (16, 32)]
    assert report.failure_lines(concat([_records(), *wider])) == [  # a run of several widths names them
        "boom (params at depth 8 (width 16); params at depth 8 (width 32)): RuntimeError: kaboom"]


def test_profile_figure_writes_png_and_svg(tmp_path):
    records = []
    for variant in ("plain", "residual"):
        for depth in (2, 4):
            records += [rec(variant, "gradient-flow", "grad_norm", (1 + i) * (1 + seed), seed, index=i, depth=depth)
                        for seed in range(3) for i in range(depth)]
    paths = report.profile_figure(table(records), "grad_norm", tmp_path / "fig", "grad_norm per block")
    assert sorted(p.name for p in paths) == ["fig.png", "fig.svg"]
    png, svg = (tmp_path / "fig.png").read_bytes(), (tmp_path / "fig.svg").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert b"<svg" in svg[:2000] and svg.rstrip().endswith(b"</svg>")


def test_profile_figure_without_data_writes_nothing(tmp_path):
    assert report.profile_figure(_records(), "signal_norm", tmp_path / "fig", "t") == []
    assert list(tmp_path.iterdir()) == []


def test_profile_figure_skips_nonpositive_and_nonfinite(tmp_path):
    records = [rec("plain", "gradient-flow", "grad_norm", 0.0, 0, index=0),
               rec("plain", "gradient-flow", "grad_norm", float("nan"), 0, index=1)]
    assert report.profile_figure(table(records), "grad_norm", tmp_path / "fig", "t") == []


def test_rows_follow_the_variant_order_then_depth():
    """Rows come in the plan's variant order, then by depth, whatever order records arrived in."""
    records = [rec(v, "params", "params", 1, None, depth=d) for v, d in
               [("b", 8), ("a", 4), ("b", 2), ("a", 8)]]
    [(_, text)] = report.tables(table(records), ["params"], {"params": ("params",)}, variant_order=["b", "a"])
    rows = [line.split()[:2] for line in text.splitlines()[2:]]
    assert rows == [["b", "2"], ["b", "8"], ["a", "4"], ["a", "8"]]


def test_all_undefined_cell_shows_the_reason():
    records = [rec("rezero", "gradient-flow", "grad_ratio", None, s, unit="ratio", status="undefined",
                   error="0/0: both zero") for s in range(3)]
    [(_, text)] = report.tables(table(records), ["gradient-flow"], {"gradient-flow": ("grad_ratio",)})
    assert "undefined: 0/0: both zero" in _row(text, "rezero")


def test_log_axes_have_matplotlibs_ticks_and_labels_in_plain_text():
    """report.log_y: the same ticks and labels as matplotlib's default log axis, written as
    plain text (10⁻², 2×10³) instead of mathtext, on short and long ranges alike."""
    plt = report._pyplot()
    for low, high in [(1e-2, 1e3), (0.3, 4.0), (1e-12, 1e12), (2.0, 9.0)]:
        fig, (default, plain) = plt.subplots(1, 2)
        for ax in (default, plain):
            ax.plot([0, 1], [low, high])
        default.set_yscale("log")
        report.log_y(plain)
        fig.canvas.draw()
        for which in ("major", "minor"):
            want = [t.get_text() for t in default.yaxis.get_ticklabels(which=which)]
            got = [t.get_text() for t in plain.yaxis.get_ticklabels(which=which)]
            assert got == [report.plain_power(w) for w in want]
            assert not any("$" in g for g in got) and (which == "minor" or any(got))
        plt.close(fig)
    assert report.plain_power(r"$\mathdefault{10^{-12}}$") == "10\u207b\u00b9\u00b2"
    assert report.plain_power(r"$\mathdefault{-2\times10^{3}}$") == "\u22122\u00d710\u00b3"
    assert report.plain_power(r"$\mathdefault{0.5}$") == "0.5"
    assert report.plain_power("x") == "x"
