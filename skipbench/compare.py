"""``skipbench compare RUN_A RUN_B``: what changed from run A (the baseline) to run B, row by row.

Rows compared: the scalar rows (index null) of both runs, keyed by (experiment, variant,
measurement, metric, depth, width); a key only one run has is counted, not compared. Per-index
rows (per-block profiles, loss curves, histograms) are not compared: the footnote names them.
Only ``ok`` values enter the statistics; undefined and nonfinite values are counted apart, and a
row whose values are all undefined or nonfinite in one run but not in the other is a change of
its own (kind ``status``: finite values gained are "improved", lost "worse"; "changed" for a
metric without a direction). Failed cells are left out.

Three kinds of rows:

- per-seed (``seeded``, the seed column set): the medians over seeds of A and B, the relative
  change (B - A) / |A|, a bootstrap 95 % interval of median(B) - median(A)
  (scipy.stats.bootstrap: the two runs' seeds resampled independently, percentile method, which
  stays defined for samples of equal values where BCa is not, BOOTSTRAP_RESAMPLES resamples from
  the fixed seed BOOTSTRAP_SEED, so a comparison is reproducible), and the two-sided
  Mann-Whitney U p-value of the two samples (scipy.stats.mannwhitneyu; 1 where every value of
  both is equal). The p-values of all per-seed rows are corrected together (Benjamini-Hochberg,
  scipy.stats.false_discovery_control); a row is significant when its q < `alpha`. The interval
  is shown, the test decides.
- seed-independent (``single``: one value per run, say params or FLOPs): significant when the
  two values differ at all (they are computed, not sampled).
- timing (``timing``: any row of the same measurement has an IQR, the way throughput records its
  rates), as ``asv compare --factor`` does: significant when B/A or A/B exceeds `factor` and the
  intervals value ± IQR/2 of the two runs do not overlap. The rates that measurement derives
  without an IQR of their own (GFLOP/s, fraction of the matmul rate, peak memory) are judged by
  the factor alone: two timings never agree to the last digit.

Direction: a measurement may declare ``better`` (specs.Measurement: metric -> "higher", "lower"
or "one", nearer to 1 on a log scale); the run records it as meta["better"], read from B, then A.
A significant row is "improved" or "worse" by its metric's direction, "changed" where the metric
has none (or the medians are equal); any other row is "no significant change". The built-in
directions: gradient-flow's ratios nearer to 1, identity's MSEs and steps lower, throughput's
rates higher and its peak memory lower; counts (params, FLOPs) and probes have none.

Settings: each row says what differs between the runs for it: its batch and its mode (columns;
a mode that varies between seeds of one run, as steps_to_threshold's may, is not compared), its
variant's definition (meta variant_definitions, per experiment where meta experiments exists:
builder, params, last_block, network with dtype; providers, versions, tags and descriptions are
left out) and its measurement's options. Width is part of the key: runs of different widths have
no rows in common, and the error says which widths each has. Run-level differences (versions,
device, CPU, threads, git commit, seeds, profile, forced mode) are listed above the tables.

`compare` returns a `Comparison`; `text` renders it for the terminal (tabulate, any format; one
table per experiment, measurement and width, within report.TERMINAL_WIDTH columns: columns empty
in every row are left out, the settings column wraps in the room left or becomes numbered
footnotes, and report.fit splits what is still too wide; Markdown, HTML and other document
formats stay whole), `html_section` as an HTML ``<section>`` (html.table, every column) that a
report can embed, `html_page` as a self-contained page. `parse_fail_on` and `tripped` are the
``--fail-on`` CI gate.

Choices: the bootstrap's percentile interval and the rank test can disagree at the margin (the
test decides); the rows of one key are pooled whatever their extra columns (the built-in scalar
metrics have one row per seed); a run recorded before meta["better"] existed has no directions,
so its significant rows are "changed"; scipy is imported only once both runs have loaded, so a
bad directory is reported at once.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import html, report, results
from .specs import UsageError

ALPHA = 0.05  # false discovery rate (Benjamini-Hochberg) of the per-seed rows
FACTOR = 1.1  # a timing must change by more than this factor (asv compare --factor)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 12345
DIRECTIONS = ("higher", "lower", "one")
RESULTS = ("improved", "worse", "changed", "no significant change")
KEY = ["experiment", "variant", "measurement", "metric", "depth", "width"]
_LISTS = ["value", "status", "seed", "iqr", "batch", "mode"]
SHORT = {"no significant change": "n.s."}  # the terminal's label (the HTML says it in full)
MIN_SETTINGS_WIDTH = 24  # the terminal's settings column wraps in the room a table leaves; with less, footnotes


@dataclass
class Row:
    """One compared row: A's and B's value (the median over seeds for per-seed rows), the
    relative change (B - A) / |A| (None where A is 0 and B is not), and the verdict."""

    experiment: str
    variant: str
    measurement: str
    metric: str
    depth: int
    width: int
    kind: str  # "seeded", "single", "timing" or "status" (finite values in one run only)
    a: float | None
    b: float | None
    n_a: int  # ok values
    n_b: int
    not_ok_a: int = 0  # undefined or nonfinite values
    not_ok_b: int = 0
    change: float | None = None
    ci: tuple[float, float] | None = None  # bootstrap 95 % interval of median(B) - median(A)
    p: float | None = None  # Mann-Whitney U, two-sided
    q: float | None = None  # Benjamini-Hochberg over all rows with a p
    iqr_a: float | None = None  # timing rows
    iqr_b: float | None = None
    direction: str | None = None
    significant: bool = False
    result: str = "no significant change"
    settings: str = ""  # what differs between the runs for this row

    @property
    def label(self) -> str:
        where = f"{self.experiment}: " if self.experiment else ""
        return f"{where}{self.variant} {self.measurement} {self.metric} depth {self.depth} width {self.width}"


@dataclass
class Comparison:
    """Run A against run B: the compared rows, and what the tables do not show."""

    a: str
    b: str
    alpha: float
    factor: float
    rows: list[Row]
    run_differences: list[str] = field(default_factory=list)  # "torch 2.4.0 → 2.13.0"
    setting_differences: list[str] = field(default_factory=list)  # variant definitions and options, by name
    only_a: int = 0  # keys only one run has
    only_b: int = 0
    not_compared: int = 0  # keys with no ok value in either run
    per_index: list[str] = field(default_factory=list)  # per-index metrics, not compared
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many rows have each result (RESULTS order)."""
        return {r: sum(row.result == r for row in self.rows) for r in RESULTS}

    def summary(self) -> str:
        c = self.counts()
        return (f"{len(self.rows)} rows compared: {c['improved']} improved, {c['worse']} worse, "
                f"{c['changed']} changed, {c['no significant change']} no significant change")

    def method(self) -> str:
        tested = sum(r.p is not None for r in self.rows)
        text = (f"per-seed rows: medians over seeds, change (B - A)/|A|, bootstrap 95% interval of "
                f"median(B) - median(A) ({BOOTSTRAP_RESAMPLES} resamples, percentile), Mann-Whitney U "
                f"two-sided p, q: Benjamini-Hochberg over the {tested} rows with a p; significant when "
                f"q < {self.alpha:g}. Seed-independent rows: significant when the values differ. Timings "
                f"(value ± IQR): significant when the ratio exceeds {self.factor:g} and value ± IQR/2 of "
                f"the two runs do not overlap. Only ok values count. n.s.: no significant change.")
        if self.per_index:
            text += f" Not compared: per-index metrics ({', '.join(self.per_index)})."
        return text


# -- loading ------------------------------------------------------------------------------------
def _groups(table: pa.Table) -> dict[tuple, dict]:
    """key (KEY) -> lists of the scalar rows' values, statuses, seeds, IQRs, batches and modes (failed
    cells left out), in order of first appearance."""
    scalar = table.filter(pc.and_(pc.is_null(table["index"]), pc.not_equal(table["status"], "failed")))
    scalar = scalar.set_column(scalar.schema.get_field_index("experiment"), "experiment",
                               pc.fill_null(scalar["experiment"], ""))
    grouped = scalar.group_by(KEY, use_threads=False).aggregate([(c, "list") for c in _LISTS])
    grouped = grouped.select(KEY + [f"{c}_list" for c in _LISTS]).rename_columns(KEY + _LISTS)
    return {tuple(g[k] for k in KEY): g for g in grouped.to_pylist()}


def _per_index(table: pa.Table) -> list[str]:
    """The metrics with per-index rows, "measurement/metric"."""
    rows = table.filter(pc.is_valid(table["index"])).select(["measurement", "metric"])
    pairs = rows.group_by(["measurement", "metric"], use_threads=False).aggregate([]).to_pylist()
    return [f"{r['measurement']}/{r['metric']}" for r in pairs]


# -- settings -----------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """'name a→b' for each key whose values differ (a missing key shows as -)."""
    return [f"{prefix}{k} {_show(a.get(k))}→{_show(b.get(k))}" for k in dict.fromkeys([*a, *b])
            if a.get(k) != b.get(k)]


def _experiment_meta(meta: dict, experiment: str) -> dict:
    """The plan part of the meta of one experiment (the top level where meta has no experiments)."""
    for exp in meta.get("experiments") or []:
        if (exp.get("experiment") or "") == experiment:
            return exp
    return meta


def _definition_diff(a: dict | None, b: dict | None) -> list[str]:
    """What differs between two variant definitions (registry.Registry.definition)."""
    if not a or not b:
        return []
    out = [f"builder {a.get('builder')}→{b.get('builder')}"] if a.get("builder") != b.get("builder") else []
    for part in ("params", "last_block", "network"):
        out += _diff(a.get(part) or {}, b.get(part) or {}, f"{part}.")
    return out


class _Settings:
    """Per-row setting differences, from both runs' meta (cached per experiment and variant)."""

    def __init__(self, meta_a: dict, meta_b: dict):
        self.meta_a, self.meta_b = meta_a, meta_b
        self.cache: dict[tuple, list[str]] = {}

    def definition(self, experiment: str, variant: str) -> list[str]:
        key = ("variant", experiment, variant)
        if key not in self.cache:
            defs = [(_experiment_meta(m, experiment).get("variant_definitions") or {}).get(variant)
                    for m in (self.meta_a, self.meta_b)]
            self.cache[key] = _definition_diff(*defs)
        return self.cache[key]

    def options(self, experiment: str, measurement: str) -> list[str]:
        key = ("options", experiment, measurement)
        if key not in self.cache:
            opts = [(_experiment_meta(m, experiment).get("options") or {}).get(measurement)
                    for m in (self.meta_a, self.meta_b)]
            self.cache[key] = _diff(*opts, "options.") if all(o is not None for o in opts) else []
        return self.cache[key]

    def row(self, key: tuple, ga: dict, gb: dict) -> str:
        experiment, variant, measurement = key[:3]
        out = []
        batches = [sorted({b for b in g["batch"] if b is not None}) for g in (ga, gb)]
        if batches[0] != batches[1]:
            out.append(f"batch {','.join(map(str, batches[0])) or '-'}→{','.join(map(str, batches[1])) or '-'}")
        modes = [sorted({m or "-" for m in g["mode"]}) for g in (ga, gb)]
        if len(modes[0]) == 1 and len(modes[1]) == 1 and modes[0] != modes[1]:
            out.append(f"mode {modes[0][0]}→{modes[1][0]}")
        out += self.definition(experiment, variant) + self.options(experiment, measurement)
        return "; ".join(out)


def _seed_range(seeds: Any) -> str:
    if not isinstance(seeds, list) or not seeds:
        return "-"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]} ({len(seeds)})" if len(seeds) > 1 else str(seeds[0])
    return f"{len(seeds)} seeds from {min(seeds)}"


RUN_KEYS = [("skipbench", "skipbench"), ("torch", "torch"), ("python", "python"), ("device", "device"),
            ("device_name", "device name"), ("cpu", "cpu"), ("cpu_count", "CPUs"), ("threads", "threads"),
            ("git_commit", "git commit"), ("profile", "profile"), ("mode", "forced mode")]


def _run_differences(meta_a: dict, meta_b: dict) -> list[str]:
    out = []
    for key, label in RUN_KEYS:
        a, b = meta_a.get(key), meta_b.get(key)
        if a != b:
            if key == "git_commit":
                a, b = (a or "")[:12] or None, (b or "")[:12] or None
            out.append(f"{label} {_show(a)} → {_show(b)}")
    seeds = [_seed_range(m.get("seeds")) for m in (meta_a, meta_b)]
    if meta_a.get("seeds") != meta_b.get("seeds"):
        out.append(f"seeds {seeds[0]} → {seeds[1]}")
    return out


def _setting_differences(settings: _Settings, keys: list[tuple]) -> list[str]:
    """Each variant definition and measurement's options that differ, once, by name."""
    out = []
    for experiment, variant, measurement in dict.fromkeys(k[:3] for k in keys):
        where = f"{experiment}: " if experiment else ""
        d = settings.definition(experiment, variant)
        line = f"{where}variant {variant}: {'; '.join(d)}"
        if d and line not in out:
            out.append(line)
        o = settings.options(experiment, measurement)
        line = f"{where}{measurement} {'; '.join(o)}"
        if o and line not in out:
            out.append(line)
    return out


# -- statistics ---------------------------------------------------------------------------------
def _median_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(b, axis=axis) - np.median(a, axis=axis)


def _bootstrap(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """Bootstrap 95 % interval of median(b) - median(a), or None with fewer than two values in one."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    rng = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"  # scipy < 1.15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((a, b), _median_difference, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                              vectorized=True, paired=False, confidence_level=0.95,
                              **{rng: np.random.default_rng(BOOTSTRAP_SEED)})
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _mann_whitney(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value; 1 where all values are equal."""
    both = np.concatenate([a, b])
    if np.all(both == both[0]):
        return 1.0
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else 1.0


def _relative(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if a == 0:
        return 0.0 if b == 0 else None
    return (b - a) / abs(a)


def _distance_from_one(a: float, b: float) -> tuple[float, float]:
    if a > 0 and b > 0:
        return abs(math.log(a)), abs(math.log(b))
    return abs(a - 1), abs(b - 1)


def _verdict(row: Row) -> str:
    """improved / worse / changed for a significant row, by its metric's direction."""
    if row.kind == "status":  # finite values gained or lost
        if row.direction is None:
            return "changed"
        return "improved" if row.n_b > 0 else "worse"
    if row.direction is None or row.a is None or row.b is None or row.a == row.b:
        return "changed"
    if row.direction == "one":
        da, db = _distance_from_one(row.a, row.b)
        if da == db:
            return "changed"
        return "improved" if db < da else "worse"
    higher = row.b > row.a
    return "improved" if higher == (row.direction == "higher") else "worse"


def _ok(g: dict) -> tuple[np.ndarray, int]:
    """The ok values of a group, and how many are not ok (undefined or nonfinite)."""
    ok = [v for v, s in zip(g["value"], g["status"]) if s == "ok" and v is not None]
    return np.asarray(ok, dtype=np.float64), len(g["value"]) - len(ok)


def _timing_row(row: Row, ga: dict, gb: dict, factor: float) -> None:
    def first(g: dict, values: np.ndarray) -> tuple[float, float | None]:
        iqrs = [i for i, s in zip(g["iqr"], g["status"]) if s == "ok" and i is not None]
        return float(np.median(values)), (float(np.median(iqrs)) if iqrs else None)

    row.kind = "timing"
    row.a, row.iqr_a = first(ga, _ok(ga)[0])
    row.b, row.iqr_b = first(gb, _ok(gb)[0])
    a, b = row.a, row.b
    if a == b:
        return
    ratio = math.inf if min(a, b) <= 0 else max(a / b, b / a)
    ha, hb = (row.iqr_a or 0.0) / 2, (row.iqr_b or 0.0) / 2
    overlap = a - ha <= b + hb and b - hb <= a + ha
    row.significant = ratio > factor and not overlap


def _compare_key(key: tuple, ga: dict, gb: dict, timed: bool, factor: float) -> Row | None:
    va, bad_a = _ok(ga)
    vb, bad_b = _ok(gb)
    row = Row(*key, kind="seeded", a=None, b=None, n_a=len(va), n_b=len(vb), not_ok_a=bad_a, not_ok_b=bad_b)
    if not len(va) and not len(vb):
        return None
    if not len(va) or not len(vb):
        row.kind, row.significant = "status", True
        row.a = float(np.median(va)) if len(va) else None
        row.b = float(np.median(vb)) if len(vb) else None
        return row
    seeded = any(s is not None for s in ga["seed"] + gb["seed"])
    has_iqr = any(i is not None for i in ga["iqr"] + gb["iqr"])
    if has_iqr or (timed and not seeded):
        _timing_row(row, ga, gb, factor)
    elif not seeded:
        row.kind = "single"
        row.a, row.b = float(np.median(va)), float(np.median(vb))
        row.significant = row.a != row.b
    else:
        row.a, row.b = float(np.median(va)), float(np.median(vb))
        row.ci = _bootstrap(va, vb)
        row.p = _mann_whitney(va, vb)
    row.change = _relative(row.a, row.b)
    return row


def _directions(meta_a: dict, meta_b: dict) -> dict[str, str]:
    out = {}
    for meta in (meta_a, meta_b):  # B's wins
        better = meta.get("better")
        if isinstance(better, dict):
            out.update({k: v for k, v in better.items() if v in DIRECTIONS})
    return out


def _describe(groups: dict[tuple, dict]) -> str:
    """What a run's scalar rows cover, for the no-rows-in-common error."""
    def values(i: int) -> str:
        return ", ".join(str(v) for v in dict.fromkeys(k[i] for k in groups)) or "none"

    experiments = values(0) if any(k[0] for k in groups) else ""
    return (f"{'experiments ' + experiments + '; ' if experiments else ''}variants {values(1)}; "
            f"measurements {values(2)}; depths {values(4)}; width {values(5)}")


def compare(dir_a: str | Path, dir_b: str | Path, alpha: float = ALPHA, factor: float = FACTOR) -> Comparison:
    """Compare run B with run A (the baseline), row by row (see the module's docstring).
    UsageError for a directory that is not a finished run and for runs with no rows in common."""
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must lie between 0 and 1, got {alpha:g}")
    if not factor >= 1:
        raise UsageError(f"--factor must be at least 1, got {factor:g}")
    meta_a, table_a = results.load_finished(dir_a)
    meta_b, table_b = results.load_finished(dir_b)
    groups_a, groups_b = _groups(table_a), _groups(table_b)
    common = [k for k in groups_a if k in groups_b]
    if not common:
        raise UsageError(f"{str(dir_a)!r} and {str(dir_b)!r} have no rows in common "
                         f"(A: {_describe(groups_a)} | B: {_describe(groups_b)})")
    timed = {k[2] for g in (groups_a, groups_b) for k, v in g.items() if any(i is not None for i in v["iqr"])}
    better = _directions(meta_a, meta_b)
    settings = _Settings(meta_a, meta_b)
    rows, not_compared = [], 0
    for key in common:
        row = _compare_key(key, groups_a[key], groups_b[key], key[2] in timed, factor)
        if row is None:
            not_compared += 1
            continue
        row.direction = better.get(row.metric)
        row.settings = settings.row(key, groups_a[key], groups_b[key])
        rows.append(row)
    tested = [r for r in rows if r.p is not None]
    if tested:
        from scipy import stats  # imported here: a bad run directory is reported without waiting for scipy

        qs = stats.false_discovery_control([r.p for r in tested], method="bh")
        for r, q in zip(tested, qs):
            r.q = float(q)
            r.significant = r.q < alpha
    for r in rows:
        r.result = _verdict(r) if r.significant else "no significant change"
    notes = [f"{r.label}: {r.not_ok_a} of {r.not_ok_a + r.n_a} values undefined or nonfinite in A, "
             f"{r.not_ok_b} of {r.not_ok_b + r.n_b} in B" for r in rows if r.kind != "status"
             and r.not_ok_a != r.not_ok_b]
    for name, meta, table in (("A", meta_a, table_a), ("B", meta_b, table_b)):
        failed = results.count(table, "failed")
        if failed:
            notes.append(f"run {name}: {failed} failed cell(s), not compared")
    per_index = list(dict.fromkeys(_per_index(table_a) + _per_index(table_b)))
    return Comparison(str(dir_a), str(dir_b), alpha, factor, rows, _run_differences(meta_a, meta_b),
                      _setting_differences(settings, common), len(groups_a) - len(common),
                      len(groups_b) - len(common), not_compared, per_index, notes)


# -- the --fail-on gate -------------------------------------------------------------------------
def parse_fail_on(spec: str) -> tuple[str, float]:
    """METRIC[:THRESHOLD] -> (pattern, threshold as a fraction): 0.05 and 5% are the same."""
    pattern, _, threshold = spec.partition(":")
    if not pattern:
        raise UsageError(f"--fail-on {spec!r}: name a metric (wildcards allowed), METRIC[:THRESHOLD]")
    if not threshold:
        return pattern, 0.0
    text = threshold.strip()
    try:
        value = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise UsageError(f"--fail-on {spec!r}: threshold {threshold!r} is not a number "
                         f"(a fraction, 0.05, or a percentage, 5%)") from None
    if not value >= 0 or not math.isfinite(value):
        raise UsageError(f"--fail-on {spec!r}: the threshold must be a finite number >= 0")
    return pattern, value


def wrong_way(row: Row) -> bool:
    """Whether a row is a significant change the wrong way: worse, or any change of a metric
    without a direction."""
    return row.significant and (row.result == "worse" or (row.direction is None and row.result == "changed"))


def tripped(comparison: Comparison, rules: list[tuple[str, float]]) -> list[tuple[str, Row]]:
    """(rule, row) for each row that a --fail-on rule trips: its metric matches the pattern, it
    changed significantly the wrong way (wrong_way), and by more than the threshold (a change
    without a relative value, from 0 or to no finite value, exceeds every threshold)."""
    out = []
    for pattern, threshold in rules:
        for row in comparison.rows:
            if fnmatch.fnmatchcase(row.metric, pattern) and wrong_way(row):
                size = math.inf if row.change is None else abs(row.change)
                if size > threshold:
                    out.append((f"{pattern}:{threshold:g}", row))
    return out


def unmatched(comparison: Comparison, rules: list[tuple[str, float]]) -> list[str]:
    """The --fail-on patterns that match no compared metric."""
    metrics = {r.metric for r in comparison.rows}
    return [p for p, _ in rules if not any(fnmatch.fnmatchcase(m, p) for m in metrics)]


# -- rendering ----------------------------------------------------------------------------------
HEADERS = ["variant", "metric", "depth", "A", "B", "change", "95% CI of B-A", "q", "result", "settings"]


def _value(value: float | None, iqr: float | None = None) -> str:
    text = report.fmt(value)
    return f"{text} ± {report.fmt(iqr)}" if iqr is not None else text


def _cells(row: Row, short: bool) -> list[str]:
    a, b = _value(row.a, row.iqr_a), _value(row.b, row.iqr_b)
    if row.kind == "status":
        a = a if row.n_a else f"none finite ({row.not_ok_a})"
        b = b if row.n_b else f"none finite ({row.not_ok_b})"
    change = "-" if row.change is None else f"{row.change:+.1%}"
    ci = f"[{report.fmt(row.ci[0])}, {report.fmt(row.ci[1])}]" if row.ci else ""
    q = "" if row.q is None else f"{row.q:.2g}"
    result = SHORT.get(row.result, row.result) if short else row.result
    return [row.variant, row.metric, str(row.depth), a, b, change, ci, q, result, row.settings]


def _sections(comparison: Comparison) -> list[tuple[str, list[Row]]]:
    """(heading, rows) per experiment, measurement and width, in A's order."""
    sections: dict[tuple, list[Row]] = {}
    for row in comparison.rows:
        sections.setdefault((row.experiment, row.measurement, row.width), []).append(row)
    out = []
    for (experiment, measurement, width), rows in sections.items():
        variants = list(dict.fromkeys(r.variant for r in rows))
        metrics = list(dict.fromkeys(r.metric for r in rows))
        rows = sorted(rows, key=lambda r: (variants.index(r.variant), metrics.index(r.metric), r.depth))
        heading = f"{experiment + ': ' if experiment else ''}{measurement} (width {width})"
        out.append((heading, rows))
    return out


def _header_lines(comparison: Comparison) -> list[str]:
    lines = [f"A: {comparison.a}", f"B: {comparison.b}"]
    if comparison.run_differences:
        lines.append("runs differ in: " + "; ".join(comparison.run_differences))
    lines += [f"settings differ: {d}" for d in comparison.setting_differences]
    if comparison.only_a or comparison.only_b:
        lines.append(f"not in both runs (not compared): {comparison.only_a} row(s) only in A, "
                     f"{comparison.only_b} only in B")
    if comparison.not_compared:
        lines.append(f"{comparison.not_compared} row(s) with no finite value in either run (not compared)")
    return lines


def text(comparison: Comparison, tablefmt: str = "simple", width: int = report.TERMINAL_WIDTH) -> str:
    """The comparison for the terminal: what differs between the runs, one table per
    experiment, measurement and width, the counts and the method. A terminal format's table
    keeps within `width` columns (the settings column wraps, or becomes footnotes); a document's
    format (Markdown, HTML, ...) is left whole."""
    out = ["\n".join(_header_lines(comparison))]
    optional = [HEADERS.index(h) for h in ("95% CI of B-A", "q", "settings")]
    for heading, rows in _sections(comparison):
        full = [_cells(r, short=True) for r in rows]
        # columns empty in every row (no interval, q or settings: seed-independent rows, same settings) are left out
        keep = [c for c in range(len(HEADERS)) if c not in optional or any(row[c] for row in full)]
        headers, cells = [HEADERS[c] for c in keep], [[row[c] for c in keep] for row in full]
        if headers[-1] != "settings" or report.is_markup(tablefmt):  # a document's table stays whole (report.fit)
            table = report.fit(headers, cells, 3, tablefmt, width)
        else:  # the settings wrap in the room the rest leaves, or become footnotes where too little is left
            rest = report.fit(headers[:-1], [c[:-1] for c in cells], 3, tablefmt, width)
            room = width - max(len(line) for line in rest.splitlines()) - 2
            notes: dict[str, int] = {}
            if room < MIN_SETTINGS_WIDTH:
                for c in cells:
                    c[-1] = f"[{notes.setdefault(c[-1], len(notes) + 1)}]" if c[-1] else ""
            if room < len("settings") + 2:  # not even room for the markers' column: they go with the result
                cells = [c[:-2] + [f"{c[-2]} {c[-1]}".strip()] for c in cells]
                headers = headers[:-1]
            maxcol = [None] * (len(headers) - 1) + [None if notes else room]
            table = report.fit(headers, cells, 3, tablefmt, width, maxcolwidths=maxcol)
            table += "".join(f"\n[{n}] settings differ: {t}" for t, n in notes.items())
        out.append(f"== {heading} ==\n{table}")
    tail = [comparison.summary()] + [f"note: {n}" for n in comparison.notes]
    out.append("\n".join(tail + textwrap.wrap(comparison.method(), width, break_on_hyphens=False)))
    return "\n\n".join(out)


_CLASSES = {"worse": "flag", "improved": "good"}


def html_section(comparison: Comparison) -> str:
    """The comparison as an HTML <section> (html.table per experiment, measurement and width; rows
    marked "flag" when worse, "good" when improved, a changed row's result "flag")."""
    esc = html.escape
    parts = [f"<section class=\"comparison\">\n<h2>Comparison: {esc(comparison.a)} → {esc(comparison.b)}</h2>"]
    parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _header_lines(comparison)) + "</ul>")
    parts.append(f"<p class=\"summary\">{esc(comparison.summary())}</p>")
    result_col = HEADERS.index("result")
    for heading, rows in _sections(comparison):
        classes: dict[int, Any] = {}
        for i, r in enumerate(rows):
            if r.result in _CLASSES:
                classes[i] = _CLASSES[r.result]
            elif r.result == "changed":
                classes[i] = {result_col: "flag"}
        parts.append(f"<h3>{esc(heading)}</h3>")
        parts.append(html.table(HEADERS, [_cells(r, short=False) for r in rows], classes))
    parts += [f"<p class=\"note\">note: {esc(n)}</p>" for n in comparison.notes]
    parts.append(f"<p class=\"note\">{esc(comparison.method())}</p>\n</section>")
    return "\n".join(parts)


def html_page(comparison: Comparison) -> str:
    """A self-contained HTML page of the comparison (html.page)."""
    title = f"skipbench compare {comparison.a} {comparison.b}"
    return html.page(title, f"<h1>{html.escape(title)}</h1>\n{html_section(comparison)}")
