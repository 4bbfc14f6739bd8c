"""report.html: one self-contained page of a run, written at the end of every run and by
``skipbench report RUN_DIR``.

The page is drawn from what the run directory holds (results.json's metadata, the run's table)
with the functions the terminal uses, so it shows the same numbers: the run's summary and
metadata, every measurement table (report.run_tables; sortable in the page), the published
values against the measured distributions, theory against measurement (theory.rows), every
figure inline as SVG, failed cells and cells whose seeds fell back to a slower path, and each
variant's definition and provider. No script or style is fetched: it works from file://.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
import pyarrow as pa
import pyarrow.compute as pc

from . import html, report, results, theory

REPORT = "report.html"


def draw_figures(meta: dict, table: pa.Table, directory: Path, workers: int = 1) -> list[tuple[str, Path]]:
    """Draw the run's declared figures and its theory figures into `directory` (PNG and SVG);
    (title, SVG path) of each, in that order. `workers`: see FigureDrawing."""
    with FigureDrawing(meta.get("figures", []), table, directory, workers) as drawing:
        return drawing.finish(meta.get("predictions", []))


class FigureDrawing:
    """A run's figures, drawn into `directory` (PNG and SVG), started before the run has its
    theory predictions. With `workers` > 1 the declared figures start at once in that many
    forkserver children, which take the next figure as each finishes one, while this process
    goes on with the end of the run (theory, results files, the terminal's tables); `finish`
    adds the theory figures and collects them all. The children read the table from an Arrow
    file this process hands over (results.hand_over: pickling it costs more than drawing, reading
    results.parquet back half a second). With one worker `finish` draws everything here. A
    figure is drawn from the table alone, so its files are the same whichever process draws it.
    Use as a context manager: leaving it stops the children and removes the hand-over file."""

    def __init__(self, declared: list[dict], table: pa.Table, directory: Path, workers: int = 1):
        self.jobs = [("figure", f) for f in declared]
        self.table, self.directory = table, Path(directory)
        self.pool = self.handed = self.path = None
        self.futures: list[Future] = []
        if workers > 1:
            self.handed = tempfile.TemporaryDirectory(prefix="skipbench-figures-")
            try:
                self.path = Path(self.handed.name) / "table.arrow"
                results.hand_over(table, self.path)
                self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
                self.futures = [self._submit(job) for job in self.jobs]
            except BaseException:
                self.__exit__()
                raise

    def _submit(self, job: tuple[str, object]) -> Future:
        return self.pool.submit(_draw_from_file, job, self.path, self.directory)

    def finish(self, predictions: list) -> list[tuple[str, Path]]:
        """Draw the theory figures of `predictions` too; (title, SVG path) of every figure, the
        declared ones first in their order, then the theory figures."""
        theory_job = ("theory", predictions)
        if self.pool is None:
            return [drawn for job in [*self.jobs, theory_job] for drawn in _draw(job, self.table, self.directory)]
        return [drawn for future in [*self.futures, self._submit(theory_job)] for drawn in future.result()]

    def __enter__(self) -> "FigureDrawing":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.handed is not None:
            self.handed.cleanup()


def _draw(job: tuple[str, object], table: pa.Table, directory: Path) -> list[tuple[str, Path]]:
    """(title, SVG path) of one figure job: a declared figure, or every theory figure."""
    kind, what = job
    if kind == "figure":
        return [(what["title"] or what["name"], p) for p in report.draw([what], table, directory) if p.suffix == ".svg"]
    return [(title, p) for stem, title, fig in theory.figures(table, what)
            for p in report.save(fig, directory / stem) if p.suffix == ".svg"]


@functools.lru_cache(maxsize=1)
def _handed_table(path: Path) -> pa.Table:
    return results.take_over(path)


def _draw_from_file(job: tuple[str, object], path: Path, directory: Path) -> list[tuple[str, Path]]:
    """_draw in a child process, on the table handed over at `path` (read once per process)."""
    return _draw(job, _handed_table(path), directory)


_ID = re.compile(r'\bid="([^"]+)"')


def inline_svg(text: str, prefix: str) -> str:
    """An SVG file's markup for inlining in a page: without its XML prologue and metadata, every id (and every
    reference to one) prefixed, so that figures' clip paths and glyphs cannot clash."""
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # matplotlib's RDF block: not shown
    ids = set(_ID.findall(text))
    if not ids:
        return text

    def rename(match: re.Match) -> str:
        name = match.group(2)
        return f"{match.group(1)}{prefix}{name}" if name in ids else match.group(0)

    text = re.sub(r'(\bid=")([^"]+)', rename, text)
    return re.sub(r'((?:url\(|href=")#)([^")]+)', rename, text)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _meta_list(meta: dict) -> str:
    keys = [("profile", "profile"), ("started", "started"), ("wall_seconds", "wall time (s)"),
            ("git_commit", "git commit"), ("skipbench", "skipbench"), ("torch", "torch"), ("python", "python"),
            ("platform", "platform"), ("device", "device"), ("device_name", "device name"), ("cpu_count", "CPUs"),
            ("threads", "timing threads"), ("nontiming_threads", "threads per worker"), ("jobs", "worker processes"),
            ("seeds", "seeds"), ("mode", "mode (forced)"), ("peak_mem_method", "peak memory"),
            ("flops_convention", "FLOPs"), ("random_streams", "random streams")]
    items = []
    for key, label in keys:
        value = meta.get(key)
        if value in (None, "", []):
            continue
        if key == "seeds":
            value = f"{len(value)} ({value[0]}..{value[-1]})" if len(value) > 2 else ", ".join(map(str, value))
        items.append(f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>")
    for plan in meta.get("experiments", []):
        name = plan.get("experiment") or "(the run)"
        grid = (f"{len(plan['variants'])} variants; {', '.join(plan['measurements'])}; depths "
                f"{', '.join(map(str, plan['depths']))}; {report.widths_text(plan)}; batch {plan['batch']}")
        items.append(f"<dt>experiment {html.escape(name)}</dt><dd>{html.escape(grid)}</dd>")
    return f'<dl class="meta">{"".join(items)}</dl>'


def _summary(meta: dict, table: pa.Table, theory_rows: list[dict], n_figures: int, fell_back: list[str]) -> str:
    variants = sorted(set(table["variant"].to_pylist()) - {None})
    failed = results.count(table, "failed")
    flagged = sum(r["flagged"] for r in theory_rows)
    parts = [f"<b>{len(variants)}</b> variants, <b>{len(table):,}</b> records, "
             f"<b>{len(meta.get('seeds', []))}</b> seeds, {n_figures} figures",
             f'<span class="{"flag" if failed else "good"}">{failed} failed cell(s)</span>',
             f"{len(fell_back)} variant(s) on a slower seed path" if fell_back else "every variant on its fastest seed path"]
    if theory_rows:
        cls = "flag" if flagged else "good"
        parts.append(f'theory: <span class="{cls}">{len(theory_rows) - flagged} of {len(theory_rows)} predictions '
                     f"agree with the measurement</span>")
    return '<p class="summary">' + " · ".join(parts) + "</p>"


def _variants_table(meta: dict) -> str:
    definitions: dict[str, dict] = {}
    for plan in meta.get("experiments") or [meta]:
        for name, d in plan.get("variant_definitions", {}).items():
            definitions.setdefault(name, d)
    rows = []
    for name, d in definitions.items():
        b = d["builder_definition"]
        provider = d.get("provider") or {}
        bprovider = b.get("provider") or {}
        params = ", ".join(f"{k}={v!r}" for k, v in d["params"].items())
        if d.get("last_block"):
            params += "; last block: " + ", ".join(f"{k}={v!r}" for k, v in d["last_block"].items())
        rows.append([name, d["builder"], b["skip_kind"], params,
                     ", ".join(f"{k}={v!r}" for k, v in d["network"].items()), ", ".join(d.get("tags", [])),
                     _provider(provider), _provider(bprovider), d.get("description", "")])
    headers = ["variant", "builder", "skip kind", "parameters", "network", "tags", "variant from", "builder from",
               "description"]
    return html.table(headers, rows)


def _provider(p: dict) -> str:
    if not p:
        return ""
    return " ".join(x for x in (p.get("plugin"), p.get("distribution"), p.get("version")) if x)


def _plugins_table(meta: dict) -> str:
    rows = [[p.get("name", ""), p.get("source", ""), p.get("distribution", ""), p.get("version", ""),
             p.get("status", "") + (f": {p['error']}" if p.get("error") else ""),
             "; ".join(f"{k}: {', '.join(v)}" for k, v in p.get("contributes", {}).items())]
            for p in meta.get("plugins", [])]
    return html.table(["plugin", "source", "distribution", "version", "status", "contributes"], rows) if rows else ""


def _seed_paths(table: pa.Table) -> str:
    """How each variant's seeds ran (column seeds_path), as counts of records."""
    if "seeds_path" not in table.column_names:
        return ""
    sel = table.filter(pc.is_valid(table["seeds_path"])).select(["variant", "measurement", "seeds_path"])
    grouped = sel.group_by(["variant", "measurement", "seeds_path"], use_threads=False).aggregate([("variant", "count")])
    rows = [[r["variant"], r["measurement"], r["seeds_path"], f"{r['variant_count']:,}"] for r in grouped.to_pylist()]
    return html.table(["variant", "measurement", "how its seeds ran", "records"], rows)


def _theory(theory_rows: list[dict]) -> str:
    if not theory_rows:
        return "<p>No variant of this run declares a prediction for what was measured.</p>"
    headers, rows, notes = theory.html_rows(theory_rows)
    classes = {i: "flag" for i, r in enumerate(theory_rows) if r["flagged"]}
    foot = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f"<p>Each prediction is of the mean over seeds of the metric (or its square); z is the measured mean's "
            f"distance from the prediction in standard errors; rows beyond {theory.DEPARTURE_Z:g} (read on Student's t "
            f"with n - 1 degrees of freedom: 4.3 at 64 seeds, 8.5 at 8) are flagged (!).</p>"
            + html.table(headers, rows, classes) + f'<ol class="note">{foot}</ol>')


def build(run_dir: Path, meta: dict, table: pa.Table, figures: list[tuple[str, Path]] | None) -> str:
    """The report page of a run (HTML text); `figures` are (title, SVG path) to inline, None
    where the run drew none (``--no-figures``: the page says so)."""
    theory_rows = theory.rows(table, meta.get("predictions", []))
    fell_back = results.fallbacks(table)
    toc, sections = [], []

    def add(anchor: str, title: str, body: str) -> None:
        toc.append(f'<li><a href="#{anchor}">{html.escape(title)}</a></li>')
        sections.append(_section(anchor, title, body))

    tables = []
    for i, (heading, _, headers, rows) in enumerate(report.run_tables(meta, table)):
        tables.append(f'<h3 id="table-{i}">{html.escape(heading)}</h3>' + html.table(headers, rows))
    add("tables", "Measurements", f'<p class="note">{html.escape(report.TABLE_NOTE)}</p>' + "".join(tables))
    if meta.get("published"):
        headers, rows = report.published_rows(table, meta["published"])
        add("published", f"Published values against the measured distributions ({len(meta.get('seeds', []))} seeds)",
            html.table(headers, rows))
    add("theory", "Theory against measurement", _theory(theory_rows))
    if figures:
        body = []
        for i, (title, path) in enumerate(figures):
            svg = inline_svg(Path(path).read_text(encoding="utf-8"), f"f{i}-")
            body.append(f'<figure id="figure-{i}">{svg}<figcaption>{html.escape(title)} '
                        f'({html.escape(Path(path).stem)}.svg)</figcaption></figure>')
        add("figures", "Figures", "".join(body))
    elif figures is None:
        add("figures", "Figures", f'<p class="note">This run drew no figures (<code>skipbench run --no-figures</code>); '
                                  f'<code>skipbench report {html.escape(run_dir.name)}</code> draws them into the page.</p>')
    failed = report.failure_rows(table)
    problems = (html.table(report.FAILURE_HEADERS, failed) if failed else "<p class=\"good\">No cell failed.</p>")
    problems += ("<ul>" + "".join(f'<li class="flag">{html.escape(line)}</li>' for line in fell_back) + "</ul>"
                 if fell_back else "<p>Every variant's seeds ran on the fastest path its blocks allow.</p>")
    add("problems", "Failed and fallen-back cells", problems + _seed_paths(table))
    add("variants", "Variants: definitions and providers", _variants_table(meta) + _plugins_table(meta))
    add("run", "Run metadata", _meta_list(meta))
    title = f"skipbench report: {meta.get('profile', '')} ({run_dir.name})"
    where = " · ".join(str(x) for x in (meta.get("description"), meta.get("started"),
                                         f"commit {meta['git_commit'][:10]}" if meta.get("git_commit") else "",
                                         f"torch {meta.get('torch', '?')} on {meta.get('device_name', '?')}",
                                         f"{meta.get('wall_seconds', '?')} s") if x)
    head = (f"<h1>{html.escape(title)}</h1><p class=\"muted\">{html.escape(where)}</p>"
            + _summary(meta, table, theory_rows, len(figures or ()), fell_back)
            + f"<nav><ul>{''.join(toc)}</ul></nav>")
    return html.page(title, head + "\n".join(sections))


def write(run_dir: Path, meta: dict, table: pa.Table, figures: list[tuple[str, Path]] | None = None,
          draw: bool = True) -> Path:
    """Write RUN_DIR/report.html (atomically) with `figures` (title, SVG path), or else with
    figures drawn into a temporary directory for the page only (`draw`), or without any (not
    `draw`: a run with --no-figures, whose page says so)."""
    run_dir = Path(run_dir)
    if figures is None and draw:
        with tempfile.TemporaryDirectory() as tmp:
            text = build(run_dir, meta, table, draw_figures(meta, table, Path(tmp)))
    else:
        text = build(run_dir, meta, table, figures)
    path = run_dir / REPORT
    results.write_atomic(path, text)
    return path
