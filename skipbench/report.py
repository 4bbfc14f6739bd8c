"""Tables (tabulate) and figures (matplotlib, Agg) drawn from run records, never recomputed.

Per-seed metrics are shown as ``median [5%, 95%]`` over seeds; ratio metrics are summarized as
medians of log-ratios. Seed-independent metrics are shown as they are; timings as
``median ± IQR`` with a warning mark when the spread is high.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

from tabulate import tabulate

from .results import summarize

HIGH_SPREAD = 0.10  # IQR / median above which a timing is marked unreliable


def fmt(value: float | int | None) -> str:
    """A number for a table: integers with separators, floats to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, int) or (abs(value) >= 1000 and value == value and abs(value) != float("inf")):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _group(records: Iterable[dict]) -> dict[str, dict[tuple, dict[str, list[dict]]]]:
    """measurement -> (variant, depth) -> metric -> records (scalar metrics only)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        if r["status"] != "failed" and r["index"] is None:
            out[r["measurement"]][(r["variant"], r["depth"])][r["metric"]].append(r)
    return out


def _cell(recs: list[dict]) -> str:
    if all(r["seed"] is None for r in recs) and len(recs) == 1:
        r = recs[0]
        if r["status"] == "undefined":
            return f"undefined ({r['error']})"
        if r.get("iqr") is not None:
            mark = " (!) high spread" if r["value"] and r["iqr"] / r["value"] > HIGH_SPREAD else ""
            return f"{fmt(r['value'])} ± {fmt(r['iqr'])}{mark}"
        return fmt(r["value"])
    s = summarize([r["value"] for r in recs], [r["status"] for r in recs], log=recs[0]["unit"] == "ratio")
    if not s.n and s.undefined == len(recs):
        return f"undefined: {recs[0]['error']}"
    text = f"{fmt(s.median)} [{fmt(s.lo)}, {fmt(s.hi)}]" if s.n else "-"
    notes = []
    if s.undefined:
        notes.append(f"{s.undefined}/{len(recs)} undefined")
    if s.nonfinite:
        notes.append(f"{s.nonfinite}/{len(recs)} nan/inf (!)")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def tables(records: list[dict], measurement_order: Iterable[str], metric_order: dict[str, tuple[str, ...]],
           extra_columns: dict[str, dict[str, str]] | None = None, tablefmt: str = "simple",
           variant_order: list[str] | None = None) -> list[tuple[str, str]]:
    """(title, table text) per measurement, rows (variant, depth), one column per scalar metric.

    Rows follow `variant_order` (then depth), whatever order the tasks finished in.

    `extra_columns` maps a column name to {variant: text}, shown on the params table (skip kind).
    """
    grouped = _group(records)
    out = []
    for name in measurement_order:
        rows_by_cell = grouped.get(name)
        if not rows_by_cell:
            continue
        present = {m for metrics in rows_by_cell.values() for m in metrics}
        metrics = [m for m in metric_order.get(name, ()) if m in present] + sorted(present - set(metric_order.get(name, ())))
        extras = extra_columns if name == "params" and extra_columns else {}
        headers = ["variant", "depth"] + list(extras) + metrics
        rows = []
        order = {v: i for i, v in enumerate(variant_order or sorted({v for v, _ in rows_by_cell}))}
        for (variant, depth), by_metric in sorted(rows_by_cell.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0])):
            rows.append([variant, depth] + [extras[c].get(variant, "") for c in extras]
                        + [_cell(by_metric[m]) if m in by_metric else "-" for m in metrics])
        out.append((name, tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)))
    return out


def failures_table(records: list[dict], tablefmt: str = "simple") -> str:
    """A table of failed cells, or an empty string when none failed."""
    rows = [[r["variant"], r["measurement"], r["depth"], r["error"]] for r in records if r["status"] == "failed"]
    return tabulate(rows, headers=["variant", "measurement", "depth", "error"], tablefmt=tablefmt) if rows else ""


def profile_figure(records: list[dict], metric: str, path_stem: Path, title: str) -> list[Path]:
    """Per-block `metric` against block index (log scale), one panel per depth, one line per
    variant: the median over seeds with an interquartile band. Writes PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    data: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        if r["metric"] == metric and r["index"] is not None and r["status"] == "ok" and r["value"] > 0:
            data[r["depth"]][r["variant"]][r["index"]].append(r["value"])
    if not data:
        return []
    depths = sorted(data)
    fig, axes = plt.subplots(1, len(depths), figsize=(4 * len(depths), 3.4), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        for variant, by_index in sorted(data[depth].items()):
            idx = sorted(by_index)
            stats = [summarize(by_index[i], ["ok"] * len(by_index[i]), log=True, interval=0.5) for i in idx]
            line, = ax.plot(idx, [s.median for s in stats], marker="o", ms=3, label=variant)
            ax.fill_between(idx, [s.lo for s in stats], [s.hi for s in stats], color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("block (0 = input side)")
    axes[0][0].set_ylabel(f"{metric} (median, IQR band)")
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    paths = [path_stem.with_suffix(ext) for ext in (".png", ".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths
