"""report.html of a real run: loaded in headless Chromium, the same numbers as the terminal and
results.csv, `skipbench report`, terminal tables within 120 columns, skipbench.load."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import skipbench
from skipbench import report, results
from skipbench.report_page import REPORT
from conftest import clean_env

# a quick run of variants that exercise every part of the page: probes (highway), theory
# predictions (plain, rezero, residual-linear, stochastic-depth), undefined cells (rezero)
VARIANTS = ["plain", "residual", "highway", "rezero", "residual-linear", "stochastic-depth"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skipbench", *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A real `--profile quick` run (tables printed as TSV, so that they can be read back)."""
    tmp = tmp_path_factory.mktemp("report")
    result = cli("run", *VARIANTS, "--profile", "quick", "--format", "tsv", "--out", "run", cwd=tmp)
    assert result.returncode == 0, result.stderr
    return tmp / "run", result.stdout


class Tables(HTMLParser):
    """The tables of a page: {id of the heading before it: [[cell text, ...], ...] (header row first)}."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.heading, self.rows, self.cell, self.in_table = "", None, None, False
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h3":
            self.heading = attrs.get("id", "")
        elif tag == "table":
            self.rows = []
        elif tag == "tr" and self.rows is not None:
            self.rows.append([])
        elif tag in ("td", "th") and self.rows is not None:
            self.cell = ""
        elif tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None
        elif tag == "table" and self.rows is not None:
            self.tables.setdefault(self.heading, self.rows)
            self.rows = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def page_tables(path: Path) -> Tables:
    parser = Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def terminal_tables(stdout: str) -> dict[str, list[list[str]]]:
    """{measurement heading: rows (header first)} of the TSV tables a run printed, the parts of a
    split table joined back on their key columns and footnoted reasons put back."""
    out: dict[str, list[list[str]]] = {}
    for block in re.split(r"\n== ", stdout)[1:]:
        heading, _, body = block.partition(" ==\n")
        chunks = body.split("\n\n")  # the table's parts, then whatever the run printed next
        parts = chunks[:1] + [c for c in chunks[1:] if c.startswith("(part")]
        notes = dict(re.findall(r"^\[(\d+)\] (undefined: .*)$", "\n".join(parts), re.M))
        merged: list[list[str]] | None = None
        for part in parts:
            lines = [line for line in part.strip("\n").splitlines()
                     if line and not line.startswith("(part") and not re.match(r"^\[\d+\] ", line)]
            rows = [[c.strip() for c in line.split("\t")] for line in lines]
            rows = [[re.sub(r"^undefined \[(\d+)\]$", lambda m: notes[m.group(1)], c) for c in r] for r in rows]
            merged = rows if merged is None else [a + b[2:] for a, b in zip(merged, rows)]
        out[heading] = merged or []
    return out


def test_report_is_written_with_every_section(quick_run):
    run_dir, stdout = quick_run
    path = run_dir / REPORT
    assert f"report: run/{REPORT}" in stdout
    text = path.read_text(encoding="utf-8")
    for anchor in ("tables", "theory", "figures", "problems", "variants", "run"):
        assert f'id="{anchor}"' in text
    # nothing to fetch: no source, link, import or url() outside the page (namespaces are names, not fetches)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|@import|url\(\s*["']?(https?:|//)""", text)
    parsed = page_tables(path)
    assert parsed.svgs >= 4  # the quick profile's four figures and the theory figures, inline
    for variant in VARIANTS:
        assert f"<td>{variant}</td>" in text


def test_report_shows_the_terminal_numbers_and_the_csv(quick_run):
    run_dir, stdout = quick_run
    terminal = terminal_tables(stdout)
    page = page_tables(run_dir / REPORT).tables
    headings = [h for h, *_ in report.run_tables(*results.load(run_dir))]
    compared = 0
    for i, heading in enumerate(headings):
        assert page[f"table-{i}"] == terminal[heading], heading
        compared += len(terminal[heading]) - 1
    assert compared >= 5 * len(VARIANTS)
    # against results.csv: a seed-independent count and a median over seeds
    with open(run_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    params_table = page[f"table-{headings.index('params')}"]
    header = params_table[0]
    for row in params_table[1:]:
        variant, depth = row[0], row[1]
        [value] = [r["value"] for r in rows if (r["variant"], r["depth"], r["metric"]) == (variant, depth, "params")]
        assert row[header.index("params")] == report.fmt(int(value))
    flow = page[f"table-{headings.index('gradient-flow')}"]
    for row in flow[1:]:
        values = [float(r["value"]) for r in rows if (r["variant"], r["depth"], r["metric"], r["status"])
                  == (row[0], row[1], "act_growth", "ok")]
        median = results.summarize(values, ["ok"] * len(values), log=True).median
        assert row[flow[0].index("act_growth")].startswith(report.fmt(median) + " ["), row


def test_terminal_tables_fit_120_columns(quick_run, capsys):
    from skipbench.cli import print_tables

    run_dir, _ = quick_run
    meta, table = results.load(run_dir)
    print_tables(meta, table, "simple")
    out = capsys.readouterr().out
    widths = [len(line) for line in out.splitlines()]
    assert max(widths) <= report.TERMINAL_WIDTH, max(widths)
    assert "(part 1 of" in out  # the throughput table is split, and says so
    assert "undefined [1]" in out and "[1] undefined: 0/0" in out  # rezero's reason, as a footnote


def test_report_command_rewrites_the_same_page(quick_run, tmp_path):
    run_dir, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / REPORT).unlink()
    result = cli("report", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"report: .*report\.html \(\d+\.\d+ MB, \d+\.\d s\)", result.stdout)
    assert page_tables(copy / REPORT).tables == page_tables(run_dir / REPORT).tables


def test_figures_drawn_over_two_processes_are_the_ones_drawn_in_one(quick_run, tmp_path):
    """The end of a run draws its figures in two forkserver children that read the table this
    process hands over: the same figures, in the same order, pixel for pixel, as drawn here."""
    from skipbench import report_page

    run_dir, _ = quick_run
    meta, table = results.load_finished(run_dir)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    alone = report_page.draw_figures(meta, table, one)
    shared = report_page.draw_figures(meta, table, two, workers=2)
    assert meta["figures"] and len(alone) >= 4  # declared and theory figures
    assert [(title, path.name) for title, path in shared] == [(title, path.name) for title, path in alone]
    for _, path in alone:
        png = path.with_suffix(".png").name
        assert (two / png).read_bytes() == (one / png).read_bytes(), png


def test_no_figures_draws_none_and_the_report_command_draws_them_later(tmp_path):
    """--no-figures costs no drawing: no PNG or SVG anywhere in the run, a page that says so
    (no inline figure); `skipbench report RUN_DIR` then draws them into the page."""
    result = cli("run", "plain", "residual", "-m", "gradient-flow", "--profile", "quick", "--jobs", "1",
                 "--no-figures", "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".png", ".svg")]
    page = (run_dir / REPORT).read_text(encoding="utf-8")
    assert "This run drew no figures" in page and page_tables(run_dir / REPORT).svgs == 0
    assert cli("report", str(run_dir), cwd=tmp_path).returncode == 0
    assert page_tables(run_dir / REPORT).svgs >= 1 and "drew no figures" not in (run_dir / REPORT).read_text()


@pytest.mark.parametrize("case", ["missing", "not-a-run", "interrupted"])
def test_report_bad_input_is_one_line(case, tmp_path):
    target = tmp_path / "target"
    if case != "missing":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    if case == "interrupted":
        (target / results.FRAGMENTS).mkdir()
    result = cli("report", str(target), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("skipbench: error: ") and str(target) in line


def test_load_returns_the_run_as_a_dataframe(quick_run):
    run_dir, _ = quick_run
    frame = skipbench.load(run_dir)
    with open(run_dir / "results.csv", newline="") as fh:
        n = sum(1 for _ in csv.DictReader(fh))
    assert len(frame) == n
    assert list(frame.columns[:len(results.COLUMNS)]) == results.COLUMNS
    assert frame.attrs["meta"]["profile"] == "quick"
    grad = frame[(frame.metric == "grad_ratio") & (frame.variant == "residual") & (frame.depth == 4)]
    assert len(grad) == len(frame.attrs["meta"]["seeds"]) and grad.seed.notna().all()
    with pytest.raises(skipbench.UsageError, match="not a skipbench run"):
        skipbench.load(run_dir / "records" / "nonexistent")


# -- the page in a real browser -----------------------------------------------------------------
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("SKIPBENCH_REQUIRE_BROWSER"):
            pytest.fail("SKIPBENCH_REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


def test_report_in_chromium(quick_run, browser, tmp_path):
    run_dir, _ = quick_run
    page = browser.new_page(viewport={"width": 1366, "height": 800})  # a laptop screen
    problems, requests = [], []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((run_dir / REPORT).resolve().as_uri(), wait_until="load")
    assert problems == []
    assert all(url.startswith("file://") or url.startswith("data:") for url in requests), requests
    sizes = page.eval_on_selector_all("figure svg", "els => els.map(e => [e.getBoundingClientRect().width, "
                                                     "e.getBoundingClientRect().height])")
    assert len(sizes) >= 4 and all(w > 100 and h > 100 for w, h in sizes), sizes
    # nothing wider than the window: the page reads on a laptop without sideways scrolling
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    # sortable: clicking a header orders the rows by it
    first = page.locator("#tables table").first
    column = "t => Array.from(t.tBodies[0].rows, r => r.cells[0].textContent)"
    before = first.evaluate(column)
    first.locator("thead th").first.click()
    after = first.evaluate(column)
    assert after == sorted(before) and sorted(after) == sorted(before)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot))
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3].reshape(-1, 3)
    colours = {tuple(p) for p in (pixels[:: max(1, len(pixels) // 20000)] * 255).astype(int)}
    assert len(colours) > 20 and pixels.std() > 0.05  # text, tables and colour: not a blank page
    page.emulate_media(media="print")
    pdf = page.pdf(path=str(tmp_path / "report.pdf"))
    assert len(pdf) > 10_000
    assert problems == []
    page.close()
