"""Theory beside measurement: closed-form predictions of metrics against what a run measured.

A builder (for all its variants) or a variant declares predictions (specs.Prediction): the
expected value over seeds of a metric, or of its square (`moment` 2), as a function of depth,
width and parameters. After a run, `evaluate` computes every prediction that applies to a cell
of the run (JSON-ready dicts; the CLI stores them in results.json's ``meta["predictions"]``, so
that a report needs no plugin); `rows` sets each against the measurement:

- the measured median and 5-95 % interval of the metric over the seeds whose value is ``ok``
  (results.summarize, as in the report's tables: ratios as medians of logs);
- the Monte-Carlo estimate of the predicted quantity: the mean over those seeds of
  metric ** moment, and its standard error SE = sample standard deviation / sqrt(n);
- z = (mean - prediction) / SE. Where SE is 0 (every seed measured the same value: a network
  that is the identity exactly has MSE 0 in every seed), z is 0 when the mean equals the
  prediction within 1e-12 relative, else +-inf. A row is flagged (a departure) where |z|
  exceeds DEPARTURE_Z standard errors, read on Student's t with n - 1 degrees of freedom
  (`threshold`): the standard error is itself estimated from the n seeds, and with few of them
  |z| > 4 happens by chance far more often than the normal tail says (one time in 6 at 2 seeds,
  one in 200 at 8, and more for a discrete metric such as stochastic depth's kept share), so
  that a correct prediction in the default 8-seed run would be flagged now and then. At 64
  seeds the threshold is 4.3, at 8 seeds 8.5; beyond a few hundred it is 4. A mean over n seeds is normal within a few percent for the light-tailed
  metrics shipped here (n = 64); a heavy-tailed one (the square of a plain net's activation
  growth at depth / width near 1) needs depth / width small for the z-test to mean much.

Seeds whose value is undefined or non-finite are left out (and counted in a note). The terminal
table (`text_table`) and the HTML rows (`html_rows`) show the same cells, each prediction's
formula and source in a numbered footnote; `figures` draws, per predicted quantity, the
measured mean with a band of +-2 SE (solid) and the prediction (dashed) against depth.

`gaussian_sigmoid_mean` is the highway gate's theory (Gauss-Hermite and generalized
Gauss-Laguerre quadrature: numpy's and scipy's nodes).
"""

from __future__ import annotations

import functools
import math
import re
import textwrap
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import report
from .results import summarize
from .specs import PredictionSetting

DEPARTURE_Z = 4.0  # a measured mean further than this many standard errors (on the t scale) is flagged
REL_EQUAL = 1e-12  # with a standard error of 0: a mean this close (relative) to the prediction agrees
_KEYS = ("experiment", "variant", "measurement", "metric", "index", "depth", "width")


# -- the highway gate's theory ------------------------------------------------------------------
def gaussian_sigmoid_mean(mean: float, scale2: float, dof: int | None = None, nodes: int = 96) -> float:
    """E[sigmoid(mean + sqrt(scale2 * U) Z)], Z ~ N(0, 1), U ~ chi^2(dof) / 1 independent of Z
    (U = 1 when `dof` is None).

    This is a highway gate's expected value at initialization: gate unit j's pre-activation on
    an N(0, I) input x is w_j . x + b ~ N(b, ||w_j||^2), and with w_j's entries N(0, sigma^2)
    ||w_j||^2 = sigma^2 U, U ~ chi^2(width): scale2 = sigma^2, dof = width. The inner
    expectation is Gauss-Hermite quadrature (probabilists' weight e^{-z^2/2}), the outer one
    generalized Gauss-Laguerre over U / 2 ~ Gamma(dof / 2); the integrand is analytic in U, so
    `nodes` points of each are exact to ~1e-12 for the scales of an initialization."""
    z, wz = np.polynomial.hermite_e.hermegauss(nodes)
    wz = wz / wz.sum()
    if dof is None or scale2 == 0:
        u, wu = np.ones(1), np.ones(1)
    else:
        from scipy.special import roots_genlaguerre

        t, wu = roots_genlaguerre(nodes, dof / 2 - 1)
        u, wu = 2 * t, wu / wu.sum()
    s = np.sqrt(scale2 * u)[:, None]
    inner = (1 / (1 + np.exp(-(mean + s * z[None, :])))) @ wz
    return float(inner @ wu)


# -- predictions for a run ----------------------------------------------------------------------
def _present(table: pa.Table, metrics: set[str]) -> set[tuple]:
    """(experiment, variant, measurement, metric, index, depth, width) of every group of rows of
    these metrics that the table holds (experiment "" where null)."""
    if not metrics or len(table) == 0:
        return set()
    mine = table.filter(pc.is_in(table["metric"], pa.array(sorted(metrics), pa.string())))
    mine = mine.select(list(_KEYS)).set_column(0, "experiment", pc.fill_null(mine["experiment"], ""))
    groups = mine.group_by(list(_KEYS), use_threads=False).aggregate([]).to_pylist()
    return {tuple(g[k] for k in _KEYS) for g in groups}


def _prediction_value(prediction, setting: PredictionSetting) -> tuple[float | None, str, bool]:
    """(value, error, applies): the prediction's value for the setting; an exception or a
    non-finite value gives value None and the error; applies False where it returns None."""
    try:
        value = prediction.predict(setting)
    except Exception as exc:  # a prediction's own arithmetic (a zero division, an overflow): say so
        return None, f"the prediction raised {type(exc).__name__}: {exc}", True
    if value is None:
        return None, "", False
    if not math.isfinite(value):
        return None, f"the prediction is {value}", True
    return value, "", True


def evaluate(registry, run, table: pa.Table) -> list[dict[str, Any]]:
    """Every prediction that applies to what `run` (a grid.Run, or a single grid.Plan) measured
    into `table`: per experiment, variant (with the experiment's overrides), (depth, width) cell
    and the measurement(s) that recorded the metric (at the prediction's index), the builder's
    predictions then the variant's. JSON-ready dicts with keys experiment, variant,
    measurement, metric, index, depth, width, moment, value (None with a non-empty `error` where
    the prediction raised or is not finite), formula, source, declared_by ("builder NAME" or
    "variant NAME") and error. A prediction whose value is None for a cell (it does not apply
    there) gives no dict."""
    plans = getattr(run, "plans", None) or [run]
    metrics = {p.metric for plan in plans for v in plan.variants
               for p in (*registry.builders[v.builder].predictions, *v.predictions)}
    present = _present(table, metrics)
    by_cell: dict[tuple, set[str]] = {}
    for experiment, variant, measurement, metric, index, depth, width in present:
        by_cell.setdefault((experiment, variant, metric, index, depth, width), set()).add(measurement)
    out = []
    for plan in plans:
        experiment = plan.experiment or ""
        for variant in plan.variants:
            builder = registry.builders[variant.builder]
            declared = ([(p, f"builder {builder.name}") for p in builder.predictions]
                        + [(p, f"variant {variant.name}") for p in variant.predictions])
            if not declared:
                continue
            params = registry.params_of(variant)
            last_params = registry.params_of(variant, last_block=True)
            for depth, width in ((d, w) for d in plan.depths for w in plan.widths):
                for prediction, who in declared:
                    key = (experiment, variant.name, prediction.metric, prediction.index, depth, width)
                    for measurement in sorted(by_cell.get(key, set())):
                        if prediction.measurement and measurement != prediction.measurement:
                            continue
                        setting = PredictionSetting(
                            depth, width, plan.batch, depth // builder.layers_per_block, params,
                            dict(variant.last_block), dict(variant.network), plan.options.get(measurement, {}),
                            measurement, plan.mode, last_params)
                        value, error, applies = _prediction_value(prediction, setting)
                        if not applies:
                            continue
                        out.append({"experiment": experiment, "variant": variant.name, "measurement": measurement,
                                    "metric": prediction.metric, "index": prediction.index, "depth": depth,
                                    "width": width, "moment": prediction.moment, "value": value,
                                    "formula": prediction.formula, "source": prediction.source, "declared_by": who,
                                    "error": error})
    return out


# -- against the measurement --------------------------------------------------------------------
def _samples(table: pa.Table, predictions: list[dict]) -> dict[tuple, tuple[list, list, str]]:
    """(values, statuses, unit) of every predicted group of rows, by _KEYS."""
    if not predictions or len(table) == 0:
        return {}
    metrics = sorted({p["metric"] for p in predictions})
    variants = sorted({p["variant"] for p in predictions})
    mine = table.filter(pc.and_(pc.is_in(table["metric"], pa.array(metrics, pa.string())),
                                pc.is_in(table["variant"], pa.array(variants, pa.string()))))
    cols = mine.select([*_KEYS, "value", "status", "unit"]).to_pydict()
    out: dict[tuple, tuple[list, list, str]] = {}
    for i in range(len(mine)):
        key = tuple("" if k == "experiment" and cols[k][i] is None else cols[k][i] for k in _KEYS)
        values, statuses, _ = out.setdefault(key, ([], [], cols["unit"][i] or ""))
        values.append(cols["value"][i])
        statuses.append(cols["status"][i])
    return out


def _z(mean: float, se: float, prediction: float) -> float:
    if se > 0:
        return (mean - prediction) / se
    if math.isclose(mean, prediction, rel_tol=REL_EQUAL, abs_tol=0.0):
        return 0.0
    return math.copysign(math.inf, mean - prediction)


@functools.lru_cache(maxsize=None)
def threshold(n: int) -> float:
    """The |z| beyond which a mean over n seeds departs: the quantile of Student's t with n - 1
    degrees of freedom whose two-sided tail is that of a normal beyond DEPARTURE_Z (at least
    DEPARTURE_Z; infinite below 2 seeds)."""
    if n < 2:
        return math.inf
    # scipy.special's functions behind stats.t.isf and stats.norm.sf (the same values, bit for
    # bit): importing scipy.stats would add about a second to the end of every run
    from scipy.special import ndtr, stdtrit

    return max(DEPARTURE_Z, float(-stdtrit(n - 1, ndtr(-DEPARTURE_Z))))


def rows(table: pa.Table, predictions: list[dict]) -> list[dict[str, Any]]:
    """Each prediction (evaluate's dicts) against the measurement: the prediction's keys and n
    (ok seeds), undefined, nonfinite (left out), median, lo, hi (5-95 %, results.summarize),
    mean and se (of metric ** moment), z, flagged (|z| > threshold(n)) and notes (why z is missing or not tested, what was left out)."""
    samples = _samples(table, predictions)
    out = []
    for p in predictions:
        key = tuple("" if k == "experiment" and p[k] is None else p[k] for k in _KEYS)
        values, statuses, unit = samples.get(key, ([], [], ""))
        s = summarize(values, statuses, log=unit == "ratio")
        ok = np.array([v for v, st in zip(values, statuses) if st == "ok"], dtype=np.float64)
        notes = []
        mean = se = z = None
        if len(ok):
            with np.errstate(over="ignore", invalid="ignore"):
                powered = ok ** p["moment"]
                mean = float(powered.mean())
                se = float(powered.std(ddof=1) / math.sqrt(len(ok))) if len(ok) > 1 else None
        if s.undefined or s.nonfinite:
            notes.append(" and ".join(f"{n} {what}" for n, what in ((s.undefined, "undefined"),
                                                                     (s.nonfinite, "non-finite")) if n)
                         + " seed value(s) left out")
        if p.get("error"):
            notes.append(p["error"])
        elif not len(ok):
            notes.append("no seed measured a finite value")
        elif se is None:
            notes.append("one seed: no standard error")
        elif not (math.isfinite(mean) and math.isfinite(se)):
            notes.append(f"the mean of {p['metric']}^{p['moment']} overflows")
        else:
            z = _z(mean, se, p["value"])
        out.append({**p, "n": s.n, "undefined": s.undefined, "nonfinite": s.nonfinite, "median": s.median,
                    "lo": s.lo, "hi": s.hi, "mean": mean, "se": se, "z": z,
                    "flagged": z is not None and abs(z) > threshold(s.n), "notes": notes})
    return out


# -- tables -------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def quantity(metric: str, index: int | None, moment: int) -> str:
    """The predicted quantity's label: E[act_growth^2], E[gate_mean[0]]."""
    name = metric if index is None else f"{metric}[{index}]"
    return f"E[{name}^2]" if moment == 2 else f"E[{name}]"


FLAG = "(!)"  # after the z of a flagged row


def html_rows(theory_rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows of text cells, footnotes) of `rows`' output: the cells the terminal and
    report.html show. Footnote k (1-based, in order) holds a formula and its source, or a row's
    notes; the column "see" names a row's footnotes. A flagged row's z ends in FLAG. A width
    column follows depth where the rows have several widths."""
    notes: list[str] = []

    def note(text: str) -> int:
        if text not in notes:
            notes.append(text)
        return notes.index(text) + 1

    experiments = any(r["experiment"] for r in theory_rows)
    by_width = len({r["width"] for r in theory_rows}) > 1
    headers = (["experiment"] if experiments else []) + ["variant", "depth"] + (["width"] if by_width else []) + [
        "quantity", "n", "median [5%, 95%]", "mean ± SE", "predicted", "z", "see"]
    body = []
    for r in theory_rows:
        formula = f"{r['declared_by']}: {quantity(r['metric'], r['index'], r['moment'])} = {r['formula'] or '?'}"
        if r["source"]:
            formula += f". Source: {r['source']}"
        refs = [note(formula)] + [note(n) for n in r["notes"]]  # the column "see" ties a note to its rows
        median = "-" if r["median"] is None else f"{_num(r['median'], 3)} [{_num(r['lo'], 3)}, {_num(r['hi'], 3)}]"
        mean = "-" if r["mean"] is None else f"{_num(r['mean'])} ± {_num(r['se'], 2)}"
        z = "-" if r["z"] is None else (f"{r['z']:+.2f}" if math.isfinite(r["z"]) else f"{r['z']:+}")
        z += f" {FLAG}" if r["flagged"] else ""
        cells = ([r["variant"], str(r["depth"])] + ([str(r["width"])] if by_width else [])
                 + [quantity(r["metric"], r["index"], r["moment"]), str(r["n"]), median, mean, _num(r["value"]), z,
                    ",".join(str(k) for k in refs)])
        body.append(([r["experiment"]] if experiments else []) + cells)
    return headers, body, notes


def _fitted(headers: list[str], body: list[list[str]], tablefmt: str, width: int) -> str:
    """The table; where wider than `width`, the widest of its variant, quantity and median cells
    wrap within their columns, down to 8 characters (never in report.is_markup formats)."""
    from tabulate import tabulate

    wrap = [headers.index(h) for h in ("experiment", "variant", "quantity", "median [5%, 95%]") if h in headers]
    limits: dict[int, int] = {}

    def render() -> str:
        widths = [limits.get(i) for i in range(len(headers))]
        return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                        maxcolwidths=widths if limits else None, maxheadercolwidths=widths if limits else None)

    text = render()
    while not report.is_markup(tablefmt) and report.widest(text) > width:
        current = {i: limits.get(i, max(len(headers[i]), *(len(row[i]) for row in body))) for i in wrap}
        column = max(current, key=current.get)
        if current[column] <= 8:
            break
        limits[column] = current[column] - 1
        text = render()
    return text


def text_table(table: pa.Table, predictions: list[dict], tablefmt: str = "simple",
               width: int = report.TERMINAL_WIDTH) -> str:
    """Theory against measurement for the terminal: the table of `rows` (in a terminal format,
    one table per experiment under its name, so that the name takes no column), then a line on
    how to read it and the numbered footnotes (formulas and sources, notes), within `width`
    characters (see _fitted); "" when there is no prediction."""
    if not predictions:
        return ""
    theory_rows = rows(table, predictions)
    headers, body, notes = html_rows(theory_rows)
    if headers[0] == "experiment" and not report.is_markup(tablefmt):
        groups: dict[str, list[list[str]]] = {}
        for row in body:
            groups.setdefault(row[0], []).append(row[1:])
        text = "\n\n".join(f"experiment {name or '(none)'}:\n{_fitted(headers[1:], part, tablefmt, width)}"
                            for name, part in groups.items())
    else:
        text = _fitted(headers, body, tablefmt, width)
    flagged = sum(r["flagged"] for r in theory_rows)
    lines = [text, "", *textwrap.wrap(
        f"mean ± SE: of the metric (or its square) over the n seeds with a finite value; z = (mean - predicted) / SE; "
        f"{FLAG}: departs by more than {DEPARTURE_Z:g} standard errors (read on Student's t with n - 1 degrees of "
        f"freedom: 4.3 at 64 seeds, 8.5 at 8): {flagged} of {len(theory_rows)}.", width)]
    for k, text_note in enumerate(notes, 1):
        lines += textwrap.wrap(f"[{k}] {text_note}", width, subsequent_indent="    ", break_long_words=True)
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def figures(table: pa.Table, predictions: list[dict]) -> list[tuple[str, str, Any]]:
    """(file name stem, title, matplotlib Figure) per predicted quantity (experiment,
    measurement, metric, index, moment): against depth, per variant (per variant and width where
    the quantity was measured at several widths) the measured mean of metric ** moment with a
    band of +-2 standard errors (solid line) and the prediction (dashed, the same colour); a
    departure (flagged, see rows) is circled in red. The caller saves (and closes) the figures."""
    theory_rows = [r for r in rows(table, predictions) if r["value"] is not None]
    groups: dict[tuple, list[dict]] = {}
    for r in theory_rows:
        groups.setdefault((r["experiment"], r["measurement"], r["metric"], r["index"], r["moment"]), []).append(r)
    several = len({g[0] for g in groups}) > 1
    plt = report._pyplot()
    out = []
    for (experiment, measurement, metric, index, moment), members in groups.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        lines = list(dict.fromkeys((r["variant"], r["width"]) for r in members))
        several_widths = len({width for _, width in lines}) > 1
        positive = True
        for k, (variant, width) in enumerate(lines):
            color = f"C{k % 10}"
            mine = sorted((r for r in members if (r["variant"], r["width"]) == (variant, width)), key=lambda r: r["depth"])
            name = f"{variant}, width {width}" if several_widths else variant
            measured = [r for r in mine if r["mean"] is not None and r["se"] is not None]
            if measured:
                d = [r["depth"] for r in measured]
                m = np.array([r["mean"] for r in measured])
                se = np.array([r["se"] for r in measured])
                ax.plot(d, m, "-o", color=color, label=f"{name} (measured)", markersize=4)
                ax.fill_between(d, m - 2 * se, m + 2 * se, color=color, alpha=0.2, linewidth=0)
                positive = positive and bool(np.all(m - 2 * se > 0))
                bad = [r for r in measured if r["flagged"]]
                if bad:
                    ax.plot([r["depth"] for r in bad], [r["mean"] for r in bad], "o", markersize=11,
                            markerfacecolor="none", markeredgecolor="red")
            ax.plot([r["depth"] for r in mine], [r["value"] for r in mine], "--", color=color,
                    label=f"{name} (prediction)")
            positive = positive and all(r["value"] > 0 for r in mine)
        values = [v for r in members for v in (r["value"], r["mean"]) if v is not None]
        if positive and values and max(values) / min(values) > 30:
            report.log_y(ax)
        label = quantity(metric, index, moment)
        ax.set_xlabel("depth (weight layers)")
        ax.set_ylabel(label)
        title = (f"{label} ({measurement}): measured mean ± 2 SE (solid), prediction (dashed)"
                 + (f", {experiment}" if experiment else ""))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        stem = f"theory-{_slug(measurement)}-{_slug(metric)}" + ("" if index is None else f"-index{index}")
        stem += "-squared" if moment == 2 else ""
        stem += f"-{_slug(experiment)}" if several and experiment else ""
        out.append((stem, title, fig))
    return out
