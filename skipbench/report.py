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


def _percentile_of(value: float, values: list[float]) -> float:
    """Percentile rank of `value` among `values` (ties count half)."""
    below = sum(v < value for v in values)
    equal = sum(v == value for v in values)
    return 100.0 * (below + 0.5 * equal) / len(values)


def _where(published: float, values: list[float]) -> str:
    """Where a published value falls in a measured distribution, in words."""
    lo, hi = min(values), max(values)
    if published < lo:
        return f"below all {len(values)} seeds (min {fmt(lo)}, {fmt(lo / published) if published > 0 else '-'}x it)"
    if published > hi:
        return f"above all {len(values)} seeds (max {fmt(hi)}, {fmt(published / hi) if hi > 0 else '-'}x it)"
    p = _percentile_of(published, values)
    return f"inside, percentile {p:.0f}" + (" (tail)" if p < 5 or p > 95 else "")


def published_table(records: list[dict], published: list[dict], tablefmt: str = "simple") -> str:
    """Each published value beside the measured median, 5-95 % interval and the published value's
    percentile in the measured distribution (or how far outside it lies)."""
    def matching(pub: dict, metric: str) -> list[dict]:
        return [r for r in records if r["metric"] == metric and r["variant"] == pub["variant"]
                and r["index"] is None and (not pub["experiment"] or r.get("experiment") == pub["experiment"])
                and (not pub["depth"] or r["depth"] == pub["depth"])]

    rows = []
    for pub in published:
        match = matching(pub, pub["metric"])
        ok = [r["value"] for r in match if r["status"] == "ok"]
        label = pub["label"] or pub["metric"]
        row = [pub["experiment"], pub["variant"], pub["depth"] or "", label, fmt(pub["value"])]
        if not ok:
            statuses = sorted({r["status"] for r in match})
            row += ["not measured" if not match else f"none finite ({', '.join(statuses)})", "", "", ""]
        elif len(ok) == 1:
            row += [fmt(ok[0]), "", "exact" if ok[0] == pub["value"] else f"differs by {fmt(ok[0] - pub['value'])}", ""]
        else:
            s = summarize(ok, ["ok"] * len(ok), log=match[0]["unit"] == "ratio")  # as in the tables
            row += [fmt(s.median), f"[{fmt(s.lo)}, {fmt(s.hi)}]", _where(pub["value"], ok), ""]
        also = []
        for metric in pub["also"]:
            vals = [r["value"] for r in matching(pub, metric) if r["status"] == "ok"]
            if vals:
                also.append(f"{metric} {fmt(summarize(vals, ['ok'] * len(vals)).median)}")
        row[-1] = ", ".join(also)
        rows.append(row)
    return tabulate(rows, headers=["experiment", "variant", "depth", "metric", "published", "measured median",
                                   "5-95 %", "published value in the measured distribution", "also measured"],
                    tablefmt=tablefmt, disable_numparse=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path_stem: Path) -> list[Path]:
    paths = [path_stem.with_suffix(ext) for ext in (".png", ".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    _pyplot().close(fig)
    return paths


def _select(records: list[dict], metric: str, experiment: str = "") -> list[dict]:
    return [r for r in records if r["metric"] == metric and r["status"] == "ok"
            and (not experiment or r.get("experiment") == experiment)]


def profile_figure(records: list[dict], metric: str, path_stem: Path, title: str, experiment: str = "",
                   depths: list[int] | None = None, xlabel: str = "block (0 = input side)") -> list[Path]:
    """Per-index `metric` (per block, or per step for a loss curve) on a log scale, one panel per
    depth, one line per variant: the median over seeds with an interquartile band. PNG and SVG."""
    from matplotlib.ticker import MaxNLocator

    data: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in _select(records, metric, experiment):
        if r["index"] is not None and r["value"] > 0 and (not depths or r["depth"] in depths):
            data[r["depth"]][r["variant"]][r["index"]].append(r["value"])
    if not data:
        return []
    panels = sorted(data)
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, depth in zip(axes[0], panels):
        for variant, by_index in sorted(data[depth].items()):
            idx = sorted(by_index)
            stats = [summarize(by_index[i], ["ok"] * len(by_index[i]), log=True, interval=0.5) for i in idx]
            line, = ax.plot(idx, [s.median for s in stats], marker="o", ms=3, label=variant)
            ax.fill_between(idx, [s.lo for s in stats], [s.hi for s in stats], color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"depth {depth}")
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel(f"{metric} (median, IQR band)")
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path_stem)


def histogram_figure(records: list[dict], probe: str, path_stem: Path, title: str, experiments: list[str]) -> list[Path]:
    """Histograms of a probe's raw values (records PROBE_hist), one panel per experiment, one line
    per variant: the median density over seeds; the legend gives the median of PROBE_mean."""
    panels = [e for e in experiments if _select(records, f"{probe}_hist", e)]
    if not panels:
        return []
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, experiment in zip(axes[0], panels):
        by_variant: dict = defaultdict(lambda: defaultdict(list))
        edges = {}
        for r in _select(records, f"{probe}_hist", experiment):
            by_variant[r["variant"]][r["index"]].append(r["value"])
            edges[r["index"]] = (r["bin_lo"], r["bin_hi"])
        for variant, bins in by_variant.items():
            idx = sorted(bins)
            density = [summarize(bins[b], ["ok"] * len(bins[b])).median for b in idx]
            means = [r["value"] for r in _select(records, f"{probe}_mean", experiment)
                     if r["variant"] == variant and r["index"] is None]
            mean = summarize(means, ["ok"] * len(means)).median if means else None
            ax.stairs(density, [edges[idx[0]][0]] + [edges[b][1] for b in idx], label=f"{variant} (mean {fmt(mean)})")
        ax.set_title(experiment)
        ax.set_xlabel(probe)
        ax.set_ylabel("density (median over seeds)")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path_stem)


def widths_figure(records: list[dict], path_stem: Path, title: str, experiment: str = "") -> list[Path]:
    """Feature accumulation of variants whose width changes through depth (from block_width
    records): the width after each layer, and which earlier outputs each layer reads."""
    series: dict = defaultdict(dict)
    for r in _select(records, "block_width", experiment):
        series[(r["variant"], r["depth"])][r["index"]] = (r["width"], r["value"])
    growing = {k: v for k, v in series.items() if any(w != v[0][0] for _, w in v.values())}
    if not growing:
        return []
    fig, axes = _pyplot().subplots(len(growing), 2, figsize=(10, 3.6 * len(growing)), squeeze=False)
    for (ax_w, ax_m), ((variant, depth), by_index) in zip(axes, sorted(growing.items())):
        widths = [by_index[0][0]] + [by_index[i][1] for i in sorted(by_index)]
        ax_w.bar(range(len(widths)), widths, color="tab:blue")
        for x, w in enumerate(widths):
            ax_w.text(x, w, str(w), ha="center", va="bottom", fontsize="small")
        ax_w.set_xlabel("after layer (0 = block input)")
        ax_w.set_ylabel("features")
        ax_w.set_title(f"{variant}, {depth} layers: width")
        # layer i reads features [0, widths[i]): the input and the outputs of layers 0..i-1
        reads = [[1.0 if j <= i else 0.0 for j in range(len(widths) - 1)] for i in range(len(widths) - 1)]
        ax_m.imshow(reads, cmap="Blues", vmin=0, vmax=1.3)
        ax_m.set_xticks(range(len(widths) - 1), ["input"] + [f"out {j}" for j in range(len(widths) - 2)], fontsize="small")
        ax_m.set_yticks(range(len(widths) - 1), [f"layer {i}" for i in range(len(widths) - 1)], fontsize="small")
        ax_m.set_title("what each layer reads (shaded)")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path_stem)


def scaling_figure(records: list[dict], metric: str, path_stem: Path, title: str, experiment: str = "") -> list[Path]:
    """A scalar `metric` against depth, one line per variant (the median over seeds, with the
    5-95 % band when there are several), on log-log axes where the values allow. PNG and SVG."""
    from matplotlib.ticker import EngFormatter, FixedLocator, NullLocator, ScalarFormatter

    recs = [r for r in _select(records, metric, experiment) if r["index"] is None]
    if not recs:
        return []
    data: dict = defaultdict(lambda: defaultdict(list))
    for r in recs:
        data[r["variant"]][r["depth"]].append(r["value"])
    unit = recs[0]["unit"]
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for variant, by_depth in sorted(data.items()):
        depths = sorted(by_depth)
        stats = [summarize(by_depth[d], ["ok"] * len(by_depth[d]), log=unit == "ratio") for d in depths]
        line, = ax.plot(depths, [s.median for s in stats], marker="o", ms=4, label=variant)
        if any(len(by_depth[d]) > 1 for d in depths):
            ax.fill_between(depths, [s.lo for s in stats], [s.hi for s in stats], color=line.get_color(), alpha=0.2)
    all_depths = sorted({r["depth"] for r in recs})
    if all_depths[0] > 0 and all_depths[-1] >= 4 * all_depths[0]:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(all_depths))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    values = [r["value"] for r in recs]
    if min(values) > 0 and max(values) >= 10 * min(values):
        ax.set_yscale("log")
    if unit == "B":
        ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    sizes = {(r["width"], r.get("batch")) for r in recs}
    ax.set_title(title + (f"\n(width {recs[0]['width']}, batch {recs[0].get('batch')})" if len(sizes) == 1 else ""))
    fig.tight_layout()
    return _save(fig, path_stem)


def draw(figures: list[dict], records: list[dict], run_dir: Path) -> list[Path]:
    """Draw every declared figure (see the profiles' [[figures]] tables) into run_dir."""
    paths = []
    for f in figures:
        stem, title = run_dir / f["name"], f["title"] or f["name"]
        if f["kind"] in ("profile", "curve"):
            xlabel = "training step" if f["kind"] == "curve" else "block (0 = input side)"
            paths += profile_figure(records, f["metric"], stem, title, f["experiment"], f.get("depths"), xlabel)
        elif f["kind"] == "histogram":
            paths += histogram_figure(records, f["metric"], stem, title, f.get("experiments") or [f["experiment"]])
        elif f["kind"] == "widths":
            paths += widths_figure(records, stem, title, f["experiment"])
        elif f["kind"] == "scaling":
            paths += scaling_figure(records, f["metric"], stem, title, f["experiment"])
    return paths
