"""Tables (tabulate) and figures (matplotlib, Agg) drawn from the run's table, never recomputed.

Every function takes the run's pyarrow table (results.COLUMNS and extras), selects and groups
rows with pyarrow, and turns only the small groups it shows into Python values. Per-seed metrics
are shown as ``median [5%, 95%]`` over seeds; ratio metrics are summarized as medians of
log-ratios. Seed-independent metrics are shown as they are; timings as ``median ± IQR`` with a
warning mark when the spread is high.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from tabulate import tabulate

from .results import replace_atomic, summarize

HIGH_SPREAD = 0.10  # IQR / median above which a timing is marked unreliable
TERMINAL_WIDTH = 120  # the widest a terminal table may be (wider ones are split, see fit)
LONG_CELL = 30  # an undefined cell's reason longer than this becomes a footnote in the terminal


def fmt(value: float | int | None) -> str:
    """A number for a table: integers with separators, floats to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, int) or (abs(value) >= 1000 and value == value and abs(value) != float("inf")):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _rows(table: pa.Table, **equal: Any) -> pa.Table:
    """The rows of `table` whose columns equal the given values; an unset (falsy) value, such as a
    figure's experiment "" or a published value's depth 0, matches every row."""
    for name, value in equal.items():
        if value:
            table = table.filter(pc.equal(table[name], value))
    return table


def _lists(table: pa.Table, keys: list[str], columns: list[str]) -> list[dict]:
    """One dict per group of `keys` (in order of first appearance): the keys' values, and each of
    `columns` as the list of its values in the group (in row order)."""
    grouped = table.group_by(keys, use_threads=False).aggregate([(c, "list") for c in columns])
    return grouped.select(keys + [f"{c}_list" for c in columns]).rename_columns(keys + columns).to_pylist()


def _scalar(table: pa.Table) -> pa.Table:
    """The rows of scalar metrics (no index)."""
    return table.filter(pc.is_null(table["index"]))


def _group(table: pa.Table) -> dict[str, dict[tuple, dict[str, dict]]]:
    """measurement -> (variant, depth, width) -> metric -> its values, statuses, seeds, errors,
    IQRs and units as lists (scalar metrics of cells that did not fail only)."""
    scalar = _scalar(table)
    scalar = scalar.filter(pc.not_equal(scalar["status"], "failed"))
    out: dict = defaultdict(lambda: defaultdict(dict))
    keys = ["measurement", "variant", "depth", "width", "metric"]
    columns = ["value", "status", "seed", "error", "iqr", "unit"]
    for g in _lists(scalar, keys, columns):
        out[g["measurement"]][(g["variant"], g["depth"], g["width"])][g["metric"]] = g
    return out


def _cell(g: dict) -> str:
    """A table cell from a group of _group: one seed-independent value as it is (± its IQR), or
    the summary over seeds."""
    values, statuses = g["value"], g["status"]
    if len(values) == 1 and g["seed"][0] is None:
        value, iqr = values[0], g["iqr"][0]
        if statuses[0] == "undefined":
            return f"undefined ({g['error'][0]})"
        if iqr is not None:
            mark = " (!) high spread" if value and iqr / value > HIGH_SPREAD else ""
            return f"{fmt(value)} ± {fmt(iqr)}{mark}"
        return fmt(value)
    s = summarize(values, statuses, log=g["unit"][0] == "ratio")
    if not s.n and s.undefined == len(values):
        return f"undefined: {g['error'][0]}"
    text = f"{fmt(s.median)} [{fmt(s.lo)}, {fmt(s.hi)}]" if s.n else "-"
    notes = []
    if s.undefined:
        notes.append(f"{s.undefined}/{len(values)} undefined")
    if s.nonfinite:
        notes.append(f"{s.nonfinite}/{len(values)} nan/inf (!)")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def measurement_tables(table: pa.Table, measurement_order: Iterable[str], metric_order: dict[str, tuple[str, ...]],
                       extra_columns: dict[str, dict[str, str]] | None = None,
                       variant_order: list[str] | None = None) -> list[tuple[str, list[str], list[list[str]]]]:
    """(measurement, headers, rows) per measurement with scalar metrics: rows (variant, depth),
    and (variant, depth, width) with a width column where `table` holds several widths; one
    column per scalar metric, every cell as text (_cell). The terminal (`tables`) and the HTML
    report show these same cells.

    Rows follow `variant_order` (then depth, then width), whatever order the tasks finished in.
    `extra_columns` maps a column name to {variant: text}, shown on the params table (skip kind).
    """
    grouped = _group(table)
    by_width = len({cell[2] for cells in grouped.values() for cell in cells}) > 1
    out = []
    for name in measurement_order:
        rows_by_cell = grouped.get(name)
        if not rows_by_cell:
            continue
        present = {m for metrics in rows_by_cell.values() for m in metrics}
        metrics = [m for m in metric_order.get(name, ()) if m in present] + sorted(present - set(metric_order.get(name, ())))
        extras = extra_columns if name == "params" and extra_columns else {}
        headers = ["variant", "depth"] + (["width"] if by_width else []) + list(extras) + metrics
        rows = []
        order = {v: i for i, v in enumerate(variant_order or sorted({cell[0] for cell in rows_by_cell}))}
        for (variant, depth, width), by_metric in sorted(rows_by_cell.items(),
                                                         key=lambda kv: (order.get(kv[0][0], len(order)), kv[0])):
            rows.append([variant, str(depth)] + ([str(width)] if by_width else [])
                        + [extras[c].get(variant, "") for c in extras]
                        + [_cell(by_metric[m]) if m in by_metric else "-" for m in metrics])
        out.append((name, headers, rows))
    return out


def tables(table: pa.Table, measurement_order: Iterable[str], metric_order: dict[str, tuple[str, ...]],
           extra_columns: dict[str, dict[str, str]] | None = None, tablefmt: str = "simple",
           variant_order: list[str] | None = None, width: int = TERMINAL_WIDTH) -> list[tuple[str, str]]:
    """(title, table text) per measurement (see measurement_tables), each fitted to `width`
    columns (see fit)."""
    return [(name, fit(headers, rows, key_columns(headers), tablefmt, width))
            for name, headers, rows in measurement_tables(table, measurement_order, metric_order, extra_columns,
                                                          variant_order)]


def run_tables(meta: dict, table: pa.Table) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(heading, measurement, headers, rows) of every experiment's measurement tables, from a
    run's metadata (results.json: experiments, metric_order, variant_definitions) and table: what
    the terminal prints at the end of a run and report.html shows."""
    out = []
    metric_order = {m: tuple(v) for m, v in meta.get("metric_order", {}).items()}
    for plan in meta.get("experiments") or [meta]:
        definitions = plan.get("variant_definitions", {})
        kinds = {"skip kind": {v: d["builder_definition"]["skip_kind"] for v, d in definitions.items()}}
        experiment = plan.get("experiment") or ""
        mine = table.filter(pc.equal(pc.fill_null(table["experiment"], ""), experiment))
        for name, headers, rows in measurement_tables(mine, plan["measurements"], metric_order, kinds,
                                                      plan["variants"]):
            heading = f"{experiment}: {name} ({widths_text(plan)}, batch {plan['batch']})" if experiment else name
            out.append((heading, name, headers, rows))
    return out


def key_columns(headers: list[str]) -> int:
    """How many leading columns of a measurement table name its rows (variant, depth, and width
    where there is a width column): what each part of a split table repeats."""
    return 3 if headers[2:3] == ["width"] else 2


def plan_widths(plan: dict) -> list[int]:
    """The widths of a plan as results.json records it (`widths`; `width` in a run recorded
    before widths were a grid dimension)."""
    return plan.get("widths") or [plan["width"]]


def widths_text(plan: dict) -> str:
    """A plan's widths in words: "width 64", or "widths 32, 64"."""
    widths = plan_widths(plan)
    return f"width {widths[0]}" if len(widths) == 1 else f"widths {', '.join(map(str, widths))}"


TABLE_NOTE = ("per-seed metrics: median [5%, 95%] over seeds (ratios: of log-ratios); FLOPs: a multiply-add "
              "counts as 2;\nthroughput: median ± IQR")


def _footnoted(rows: list[list[str]], keys: int) -> tuple[list[list[str]], list[str]]:
    """The rows with every reason of an undefined cell longer than LONG_CELL moved to a numbered
    footnote ("undefined [1]"), and the footnotes (one per distinct reason)."""
    notes: dict[str, int] = {}
    out = []
    for row in rows:
        new = row[:keys]
        for cell in row[keys:]:
            if len(cell) > LONG_CELL and cell.startswith("undefined"):
                reason = cell.removeprefix("undefined").strip(" :()")
                number = notes.setdefault(reason, len(notes) + 1)
                cell = f"undefined [{number}]"
            new.append(cell)
        out.append(new)
    return out, [f"[{n}] undefined: {reason}" for reason, n in notes.items()]


def widest(text: str) -> int:
    """The length of the longest line of `text`."""
    return max((len(line) for line in text.splitlines()), default=0)


def is_markup(tablefmt: str) -> bool:
    """Whether a tabulate format is for a machine or a document (TSV, Markdown, HTML, LaTeX, ...),
    not for reading in a terminal: such tables are never split."""
    return tablefmt in ("tsv", "pipe", "github", "mediawiki", "moinmoin", "jira", "textile", "asciidoc",
                        "youtrack") or "html" in tablefmt or "latex" in tablefmt


def fit(headers: list[str], rows: list[list[Any]], keys: int, tablefmt: str = "simple", width: int = TERMINAL_WIDTH,
        maxcolwidths: list[int | None] | None = None) -> str:
    """A tabulate table within `width` characters: long reasons of undefined cells become
    footnotes; a table still too wide is split into parts that each repeat the first `keys`
    columns (the row's labels), saying so (not in machine or markup formats: TSV, Markdown,
    HTML, LaTeX, ... stay whole). Every cell is in results.csv and report.html."""
    rows = [[str(c) for c in row] for row in rows]
    rows, notes = _footnoted(rows, keys)

    def render(columns: list[int]) -> str:
        widths = [maxcolwidths[c] for c in columns] if maxcolwidths else None
        return tabulate([[row[c] for c in columns] for row in rows], headers=[headers[c] for c in columns],
                        tablefmt=tablefmt, disable_numparse=True, maxcolwidths=widths)

    key_cols = list(range(keys))
    parts, current = [], []
    for column in range(keys, len(headers)):
        if current and not is_markup(tablefmt) and widest(render(key_cols + current + [column])) > width:
            parts.append(current)
            current = []
        current.append(column)
    parts.append(current)
    texts = [render(key_cols + part) for part in parts]
    if len(texts) > 1:
        texts = [f"(part {i} of {len(texts)}: {', '.join(headers[c] for c in part)})\n{text}"
                 for i, (part, text) in enumerate(zip(parts, texts), 1)]
    return "\n\n".join(texts) + ("\n" + "\n".join(notes) if notes else "")


FAILURE_HEADERS = ["experiment", "variant", "measurement", "depth", "width", "error"]


def failure_rows(table: pa.Table) -> list[list]:
    """(experiment, variant, measurement, depth, width, error) of each failed cell."""
    failed = table.filter(pc.equal(table["status"], "failed")).select(FAILURE_HEADERS)
    return [[row["experiment"] or "", row["variant"], row["measurement"], row["depth"], row["width"], row["error"]]
            for row in failed.to_pylist()]


def failure_lines(table: pa.Table) -> list[str]:
    """One line per fault for the end of a run: the failed cells of a variant that share an error,
    "boom (gradient-flow at depth 2; params at depth 2): RuntimeError: kaboom", the error on one
    line (an exception's message may span several); cells name their width where the run has
    several."""
    several = _several_widths(table)
    groups: dict[tuple, list] = defaultdict(list)
    for experiment, variant, measurement, depth, width, error in failure_rows(table):
        groups[(experiment, variant, " ".join(str(error).split()))].append((measurement, depth, width))
    return [f"{_label(experiment, variant)} ({_cells(cells, several)}): {error}"
            for (experiment, variant, error), cells in groups.items()]


def nonfinite_lines(table: pa.Table) -> list[str]:
    """One line per cell with NaN or inf values (status nonfinite): how many, in which metrics."""
    keys = ["experiment", "variant", "measurement", "depth", "width"]
    several = _several_widths(table)
    nonfinite = table.filter(pc.equal(table["status"], "nonfinite"))
    return [f"{_label(g['experiment'], g['variant'])} ({_cells([(g['measurement'], g['depth'], g['width'])], several)}): "
            f"{len(g['metric'])} value(s) NaN or inf, in {', '.join(dict.fromkeys(g['metric']))}"
            for g in _lists(nonfinite, keys, ["metric"])]


def _several_widths(table: pa.Table) -> bool:
    return len(pc.unique(table["width"].drop_null())) > 1


def _label(experiment: str | None, variant: str) -> str:
    """A variant as the end-of-run summary names it: with its experiment, when it has one."""
    return f"{variant} [{experiment}]" if experiment else variant


def _cells(cells: list[tuple[str, int, int]], widths: bool = False) -> str:
    """(measurement, depth, width) cells in words: "gradient-flow at depths 2, 4; params at
    depth 2", with "(width W)" after the depths when `widths` (a run of several widths)."""
    depths: dict[tuple, set] = defaultdict(set)
    for measurement, depth, width in cells:
        depths[(measurement, width if widths else None)].add(depth)
    return "; ".join(f"{m} at depth{'s' if len(d) > 1 else ''} {', '.join(map(str, sorted(d)))}"
                     + (f" (width {w})" if widths else "") for (m, w), d in depths.items())


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


def published_rows(table: pa.Table, published: list[dict]) -> tuple[list[str], list[list]]:
    """(headers, rows): each published value beside the measured median, 5-95 % interval and the published value's
    percentile in the measured distribution (or how far outside it lies)."""
    scalar = _scalar(table)

    def matching(pub: dict, metric: str) -> pa.Table:
        return _rows(scalar, metric=metric, variant=pub["variant"], experiment=pub["experiment"], depth=pub["depth"])

    def ok_values(match: pa.Table) -> list[float]:
        return _rows(match, status="ok")["value"].to_pylist()

    rows = []
    for pub in published:
        match = matching(pub, pub["metric"])
        ok = ok_values(match)
        label = pub["label"] or pub["metric"]
        row = [pub["experiment"], pub["variant"], pub["depth"] or "", label, fmt(pub["value"])]
        if not ok:
            statuses = sorted(set(match["status"].to_pylist()))
            row += ["not measured" if not len(match) else f"none finite ({', '.join(statuses)})", "", "", ""]
        elif len(ok) == 1:
            row += [fmt(ok[0]), "", "exact" if ok[0] == pub["value"] else f"differs by {fmt(ok[0] - pub['value'])}", ""]
        else:
            s = summarize(ok, ["ok"] * len(ok), log=match["unit"][0].as_py() == "ratio")  # as in the tables
            row += [fmt(s.median), f"[{fmt(s.lo)}, {fmt(s.hi)}]", _where(pub["value"], ok), ""]
        also = []
        for metric in pub["also"]:
            vals = ok_values(matching(pub, metric))
            if vals:
                also.append(f"{metric} {fmt(summarize(vals, ['ok'] * len(vals)).median)}")
        row[-1] = ", ".join(also)
        rows.append(row)
    return PUBLISHED_HEADERS, rows


PUBLISHED_HEADERS = ["experiment", "variant", "depth", "metric", "published", "measured median", "5-95 %",
                     "published value in the measured distribution", "also measured"]


def published_table(table: pa.Table, published: list[dict], tablefmt: str = "simple") -> str:
    """The published-values table (published_rows) for the terminal."""
    headers, rows = published_rows(table, published)
    return fit(headers, rows, 4, tablefmt)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")
_POWER = re.compile(r"\$\\mathdefault\{(-?)(?:([0-9.]+)\\times)?(\d+)\^\{(-?\d+)\}\}\$")
_NUMBER = re.compile(r"\$\\mathdefault\{(-?[0-9.e+-]+)\}\$")
_MINUS, _TIMES = "\u2212", "\u00d7"


def plain_power(label: str) -> str:
    """A log-axis tick label of matplotlib's (``$\\mathdefault{2\\times10^{-3}}$``) as plain
    Unicode text (2×10⁻³), which draws without mathtext; any other label as it is."""
    power, number = _POWER.fullmatch(label), _NUMBER.fullmatch(label)
    if power:
        sign, coeff, base, exponent = power.groups()
        return (_MINUS if sign else "") + (coeff + _TIMES if coeff else "") + base + exponent.translate(_SUPERSCRIPT)
    return number.group(1).replace("-", _MINUS) if number else label


@functools.cache
def _plain_log_formatter() -> type:
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        """matplotlib's log-axis labels (the same ticks, the same thinning), as plain_power."""

        def __call__(self, x, pos=None):
            return plain_power(super().__call__(x, pos))

    return PlainLogFormatter


def log_y(ax) -> None:
    """A log-scale y axis labelled in plain text (plain_power): the same ticks and labels, drawn
    about 15% faster, as mathtext no longer parses every label for each of PNG and SVG."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain_log_formatter()())
    ax.yaxis.set_minor_formatter(_plain_log_formatter()())


def save(fig, path_stem: Path) -> list[Path]:
    """Save a figure as PATH_STEM.png and PATH_STEM.svg, and close it; the two paths."""
    paths = [path_stem.with_suffix(ext) for ext in (".png", ".svg")]
    for p in paths:  # through a rename, as every file of a run: a reader never sees half of one
        replace_atomic(p, lambda tmp, fmt=p.suffix[1:]: fig.savefig(tmp, dpi=120, format=fmt))
    _pyplot().close(fig)
    return paths


def _select(table: pa.Table, metric: str, experiment: str = "") -> pa.Table:
    """The ok rows of `metric` (in `experiment`, when one is given)."""
    return _rows(table, metric=metric, status="ok", experiment=experiment)


def _integral(value: float) -> float | int:
    """An integral value as an int (counts such as widths are stored as float64)."""
    return int(value) if value.is_integer() else value


def profile_figure(table: pa.Table, metric: str, path_stem: Path, title: str, experiment: str = "",
                   depths: list[int] | None = None, xlabel: str = "block (0 = input side)") -> list[Path]:
    """Per-index `metric` (per block, or per step for a loss curve) on a log scale, one panel per
    depth, one line per variant: the median over seeds with an interquartile band. With several
    widths, one row of such panels per width. PNG and SVG."""
    sel = _select(table, metric, experiment)
    sel = sel.filter(pc.and_(pc.is_valid(sel["index"]), pc.greater(sel["value"], 0)))
    if depths:
        sel = sel.filter(pc.is_in(sel["depth"], pa.array(depths, pa.int64())))
    data: dict = defaultdict(lambda: defaultdict(dict))
    for g in _lists(sel, ["width", "depth", "variant", "index"], ["value"]):
        data[(g["width"], g["depth"])][g["variant"]][g["index"]] = g["value"]
    if not data:
        return []
    widths, panels = sorted({w for w, _ in data}), sorted({d for _, d in data})
    fig, axes = _pyplot().subplots(len(widths), len(panels), figsize=(4 * len(panels), 3.4 * len(widths)),
                                   squeeze=False)
    for row, width in zip(axes, widths):
        for ax, depth in zip(row, panels):
            _profile_panel(ax, data[(width, depth)], xlabel)
            ax.set_title(f"depth {depth}" + (f", width {width}" if len(widths) > 1 else ""))
        row[0].set_ylabel(f"{metric} (median, IQR band)")
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path_stem)


def _profile_panel(ax, by_variant: dict[str, dict[int, list[float]]], xlabel: str) -> None:
    """One panel of profile_figure: per variant, its values by index as the median over seeds
    with an interquartile band, on a log scale."""
    from matplotlib.ticker import MaxNLocator

    for variant, by_index in sorted(by_variant.items()):
        idx = sorted(by_index)
        stats = [summarize(by_index[i], ["ok"] * len(by_index[i]), log=True, interval=0.5) for i in idx]
        line, = ax.plot(idx, [s.median for s in stats], marker="o", ms=3, label=variant)
        ax.fill_between(idx, [s.lo for s in stats], [s.hi for s in stats], color=line.get_color(), alpha=0.2)
    log_y(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)


def histogram_figure(table: pa.Table, probe: str, path_stem: Path, title: str, experiments: list[str]) -> list[Path]:
    """Histograms of a probe's raw values (records PROBE_hist), one panel per experiment, one line
    per variant (per variant and width where a panel has several widths): the median density over
    seeds; the legend gives the median of PROBE_mean."""
    hists = {e: _select(table, f"{probe}_hist", e) for e in experiments}
    panels = [e for e in experiments if len(hists[e])]
    if not panels:
        return []
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, experiment in zip(axes[0], panels):
        sel = hists[experiment]
        by_line: dict = defaultdict(dict)  # (variant, width) in the order they first appear
        for g in _lists(sel, ["variant", "width", "index"], ["value"]):
            by_line[(g["variant"], g["width"])][g["index"]] = g["value"]
        several = len({width for _, width in by_line}) > 1
        edges = {g["index"]: (g["bin_lo"][-1], g["bin_hi"][-1]) for g in _lists(sel, ["index"], ["bin_lo", "bin_hi"])}
        means = _scalar(_select(table, f"{probe}_mean", experiment))
        for (variant, width), bins in by_line.items():
            idx = sorted(bins)
            density = [summarize(bins[b], ["ok"] * len(bins[b])).median for b in idx]
            mine = _rows(means, variant=variant, width=width)["value"].to_pylist()
            mean = summarize(mine, ["ok"] * len(mine)).median if mine else None
            label = f"{variant}{f', width {width}' if several else ''} (mean {fmt(mean)})"
            ax.stairs(density, [edges[idx[0]][0]] + [edges[b][1] for b in idx], label=label)
        ax.set_title(experiment)
        ax.set_xlabel(probe)
        ax.set_ylabel("density (median over seeds)")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path_stem)


def widths_figure(table: pa.Table, path_stem: Path, title: str, experiment: str = "") -> list[Path]:
    """Feature accumulation of variants whose width changes through depth (from block_width
    records): the width after each layer, and which earlier outputs each layer reads."""
    series: dict = defaultdict(dict)  # by (variant, depth, width): each width of a run is its own network
    sel = _select(table, "block_width", experiment).select(["variant", "depth", "index", "width", "value"])
    for variant, depth, index, width, value in zip(*sel.to_pydict().values()):
        series[(variant, depth, width)][index] = (width, _integral(value))
    growing = {k: v for k, v in series.items() if any(w != v[0][0] for _, w in v.values())}
    if not growing:
        return []
    fig, axes = _pyplot().subplots(len(growing), 2, figsize=(10, 3.6 * len(growing)), squeeze=False)
    for (ax_w, ax_m), ((variant, depth, _), by_index) in zip(axes, sorted(growing.items())):
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
    return save(fig, path_stem)


def scaling_figure(table: pa.Table, metric: str, path_stem: Path, title: str, experiment: str = "") -> list[Path]:
    """A scalar `metric` against depth, one line per variant (the median over seeds, with the
    5-95 % band when there are several), on log-log axes where the values allow; with several
    widths, one panel per width (a shared y axis). PNG and SVG."""
    sel = _scalar(_select(table, metric, experiment))
    if not len(sel):
        return []
    first = sel.slice(0, 1).to_pylist()[0]
    unit = first["unit"]
    widths = sorted(pc.unique(sel["width"]).to_pylist())
    all_depths = sorted(pc.unique(sel["depth"]).to_pylist())
    fig, axes = _pyplot().subplots(1, len(widths), figsize=(6 * len(widths), 4), squeeze=False, sharey=True)
    for ax, width in zip(axes[0], widths):
        data: dict = defaultdict(dict)
        for g in _lists(_rows(sel, width=width), ["variant", "depth"], ["value"]):
            data[g["variant"]][g["depth"]] = g["value"]
        for variant, by_depth in sorted(data.items()):
            _median_line(ax, by_depth, unit == "ratio", variant)
        _scalar_axes(ax, all_depths, all_depths[0] > 0 and all_depths[-1] >= 4 * all_depths[0], sel, unit)
        ax.set_xlabel("depth (weight layers)")
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel(f"{metric} ({unit})" if unit else metric)
    if len(widths) > 1:
        for ax, width in zip(axes[0], widths):
            ax.set_title(f"width {width}")
        fig.suptitle(title)
    else:
        sizes = sel.select(["width", "batch"]).group_by(["width", "batch"]).aggregate([])
        axes[0][0].set_title(title + (f"\n(width {first['width']}, batch {first['batch']})" if len(sizes) == 1 else ""))
    fig.tight_layout()
    return save(fig, path_stem)


def by_width_figure(table: pa.Table, metric: str, path_stem: Path, title: str, experiment: str = "",
                    depths: list[int] | None = None) -> list[Path]:
    """A scalar per-cell `metric` against width (a log2 axis), one panel per variant, one line per
    depth (those of `depths`, when given): the median over seeds with the 5-95 % band (ratios: of
    log-ratios). PNG and SVG."""
    sel = _scalar(_select(table, metric, experiment))
    if depths:
        sel = sel.filter(pc.is_in(sel["depth"], pa.array(depths, pa.int64())))
    if not len(sel):
        return []
    data: dict = defaultdict(lambda: defaultdict(dict))
    for g in _lists(sel, ["variant", "depth", "width"], ["value"]):
        data[g["variant"]][g["depth"]][g["width"]] = g["value"]
    unit = sel["unit"][0].as_py()
    all_widths = sorted(pc.unique(sel["width"]).to_pylist())
    variants = sorted(data)
    columns = min(len(variants), BY_WIDTH_COLUMNS)
    rows = -(-len(variants) // columns)
    fig, axes = _pyplot().subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False, sharey=True)
    for ax, variant in zip(axes.flat, variants):
        for depth, by_width in sorted(data[variant].items()):
            _median_line(ax, by_width, unit == "ratio", f"depth {depth}")
        _scalar_axes(ax, all_widths, True, sel, unit)
        ax.set_title(variant)
        ax.set_xlabel("width")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"{metric}{f' ({unit})' if unit else ''}, median [5%, 95%]")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path_stem)


BY_WIDTH_COLUMNS = 4  # panels in a row of by_width_figure; more variants wrap to further rows


def _median_line(ax, by_x: dict[int, list[float]], log: bool, label: str) -> None:
    """One line: the median over seeds of the values at each x, with the 5-95 % band where some x
    has several values (`log`: of log-values, for ratios)."""
    xs = sorted(by_x)
    stats = [summarize(by_x[x], ["ok"] * len(by_x[x]), log=log) for x in xs]
    line, = ax.plot(xs, [s.median for s in stats], marker="o", ms=4, label=label)
    if any(len(by_x[x]) > 1 for x in xs):
        ax.fill_between(xs, [s.lo for s in stats], [s.hi for s in stats], color=line.get_color(), alpha=0.2)


def _scalar_axes(ax, xs: list[int], log_x: bool, sel: pa.Table, unit: str) -> None:
    """The axes of a scalar metric against depth or width: a tick at each of `xs` (on a log2
    axis where `log_x`), a log y axis where the values of `sel` are positive and span 10x or
    more, bytes in engineering units, a light grid."""
    from matplotlib.ticker import EngFormatter, FixedLocator, NullLocator, ScalarFormatter

    if log_x:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    low, high = pc.min_max(sel["value"]).values()
    if low.as_py() > 0 and high.as_py() >= 10 * low.as_py():
        log_y(ax)
    if unit == "B":
        ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.grid(True, which="major", alpha=0.3)


def draw(figures: list[dict], table: pa.Table, run_dir: Path) -> list[Path]:
    """Draw every declared figure (see the profiles' [[figures]] tables) into run_dir."""
    paths = []
    for f in figures:
        stem, title = run_dir / f["name"], f["title"] or f["name"]
        if f["kind"] in ("profile", "curve"):
            xlabel = "training step" if f["kind"] == "curve" else "block (0 = input side)"
            paths += profile_figure(table, f["metric"], stem, title, f["experiment"], f.get("depths"), xlabel)
        elif f["kind"] == "histogram":
            paths += histogram_figure(table, f["metric"], stem, title, f.get("experiments") or [f["experiment"]])
        elif f["kind"] == "widths":
            paths += widths_figure(table, stem, title, f["experiment"])
        elif f["kind"] == "scaling":
            paths += scaling_figure(table, f["metric"], stem, title, f["experiment"])
        elif f["kind"] == "by-width":
            paths += by_width_figure(table, f["metric"], stem, title, f["experiment"], f.get("depths"))
    return paths
