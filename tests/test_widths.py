"""Width as a grid dimension: `--widths` and a profile's `widths`.

A run over several widths (a real CLI run) measures, at each width, exactly what a single-width
run at that width measures; its tables gain a width column, its figures include the by-width
kind, and resume tells apart cells that differ only in width. Bad widths are a usage error of
one line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import as_rows, clean_env
from skipbench import grid, harness, report, results
from skipbench.specs import UsageError

VARIANTS = ["plain", "residual"]
MEASUREMENTS = ["gradient-flow", "params"]
DEPTHS = [2, 4]
WIDTHS = [8, 16]
SIZES = dict(batch=4, seeds=2, jobs=1)
SWEEP = ["run", *VARIANTS, "-m", MEASUREMENTS[0], "-m", MEASUREMENTS[1], "--depths", *map(str, DEPTHS),
         "--batch", "4", "--seeds", "2", "--jobs", "1", "--widths", *map(str, WIDTHS)]


def cli(cwd, *args: str) -> subprocess.CompletedProcess:
    """`python -m skipbench ARGS` in `cwd`."""
    return subprocess.run([sys.executable, "-m", "skipbench", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=300)


def measured(table, width: int) -> list[dict]:
    """The rows of one width, in a fixed order."""
    rows = [row for row in as_rows(table) if row["width"] == width]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def table_header(stdout: str, heading: str) -> list[str]:
    """The column names of the terminal table under `== heading ==`."""
    lines = stdout.splitlines()
    return lines[lines.index(f"== {heading} ==") + 1].split()


def executed(registry, run: grid.Run, run_dir) -> tuple[dict, object]:
    """(metadata, table) of a run executed in this process."""
    run_dir.mkdir()
    return harness.metadata(run, registry), harness.execute(registry, run, run_dir)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(completed process, run directory) of the CLI run over --widths 8 16."""
    base = tmp_path_factory.mktemp("widths")
    proc = cli(base, *SWEEP, "--out", "sweep")
    assert proc.returncode == 0, proc.stderr
    return proc, base / "sweep"


@pytest.mark.parametrize("width", WIDTHS)
def test_each_width_measures_what_a_single_width_run_measures(sweep, registry, tmp_path, width):
    _, both = results.load(sweep[1])
    assert sorted(set(both["width"].to_pylist())) == WIDTHS
    run = grid.make_run(registry, "default", VARIANTS, measurements=MEASUREMENTS, depths=DEPTHS, width=width, **SIZES)
    meta, alone = executed(registry, run, tmp_path / "alone")
    assert measured(both, width) == measured(alone, width) != []
    # a single-width run is as it always was: no width column, the `width` key in its metadata
    assert (meta["width"], meta["widths"]) == (width, [width])
    assert {name: headers[:2] for _, name, headers, _ in report.run_tables(meta, alone)} == {
        "gradient-flow": ["variant", "depth"], "params": ["variant", "depth"]}
    assert report.run_tables(meta, alone)[0][2][2] == "grad_ratio"


def test_tables_gain_a_width_column(sweep):
    stdout = sweep[0].stdout
    assert table_header(stdout, "gradient-flow")[:4] == ["variant", "depth", "width", "grad_ratio"]
    assert table_header(stdout, "params")[:4] == ["variant", "depth", "width", "skip"]  # "skip kind"
    cells = [line.split()[:3] for line in stdout.splitlines() if line.split()[:1] == ["residual"]]
    assert cells.count(["residual", "2", "8"]) == 2 and cells.count(["residual", "2", "16"]) == 2  # both tables
    meta, table = results.load(sweep[1])
    assert meta["widths"] == WIDTHS and "width" not in meta
    assert [headers[2] for _, _, headers, _ in report.run_tables(meta, table)] == ["width", "width"]
    page = (sweep[1] / "report.html").read_text()
    assert page.count('<th scope="col">width</th>') >= 2 and "widths 8, 16; batch 4" in page


def test_by_width_figures_are_drawn_by_default(sweep):
    proc, run_dir = sweep
    for metric in ("grad_ratio", "signal_ratio"):
        assert (run_dir / f"by-width-{metric}.svg").stat().st_size > 0
        assert (run_dir / f"by-width-{metric}.png").stat().st_size > 0
    assert not (run_dir / "by-width-mse_trained.svg").exists()  # identity was not measured
    assert "by-width-grad_ratio" in proc.stdout
    profile_svg = (run_dir / "gradient-flow-grad_norm.svg").read_text()
    assert "depth 4, width 8" in profile_svg and "depth 4, width 16" in profile_svg  # a row of panels per width


def test_resume_tells_apart_cells_that_differ_only_in_width(sweep, tmp_path):
    """Only the fragments of width 8 are kept: resume runs every width-16 cell, and each
    (variant, measurement, depth, width) cell ends with its records exactly once."""
    _, full_dir = sweep
    _, full = results.load(full_dir)
    part = tmp_path / "part" / "records"
    part.mkdir(parents=True)
    kept = 0
    for path, table in results.read_fragments(full_dir / "records"):
        if set(table["width"].to_pylist()) == {8}:
            (part / path.name).write_bytes(path.read_bytes())
            kept += 1
    total = len(list((full_dir / "records").iterdir()))
    assert 0 < kept < total
    for path in full_dir.glob("run.json"):  # what the run was, where the run directory records it
        (part.parent / path.name).write_bytes(path.read_bytes())
    proc = cli(tmp_path, *SWEEP, "--resume", "part", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == total - kept and all("width=16" in line for line in progress)
    _, resumed = results.load(tmp_path / "part")
    cells = {grid.task_key(r) for r in resumed.to_pylist()}
    assert {(v, m, d, w) for _, v, m, d, w in cells} == {
        (v, m, d, w) for v in VARIANTS for m in MEASUREMENTS for d in DEPTHS for w in WIDTHS}
    for width in WIDTHS:
        assert measured(resumed, width) == measured(full, width)  # every record once


# -- profiles -----------------------------------------------------------------------------------
def profile(tmp_path, text: str, name: str = "mine") -> str:
    """The path of a profile file NAME.toml holding `text`."""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def test_profile_widths_expand_every_depth_at_every_width(registry, tmp_path):
    run = grid.make_run(registry, profile(tmp_path, 'measurements = ["params"]\ndepths = [2, 4]\nwidths = [16, 8, 16]\n'),
                        ["plain"])
    [plan] = run.plans
    assert plan.widths == [16, 8]  # duplicates dropped, order kept
    assert [(t.depth, t.width) for t in plan.tasks(registry)] == [(2, 16), (2, 8), (4, 16), (4, 8)]
    assert len({t.key for t in plan.tasks(registry)}) == 4
    assert {f["kind"] for f in run.figures} >= {"profile", "by-width"}
    one = grid.make_run(registry, profile(tmp_path, 'measurements = ["params"]\nwidth = 12\n', "one"), ["plain"])
    assert one.plans[0].widths == [12] and "by-width" not in {f["kind"] for f in one.figures}
    overridden = grid.make_run(registry, profile(tmp_path, "widths = [8, 16]\n", "over"), ["plain"], width=32)
    assert overridden.plans[0].widths == [32]


def test_profile_widths_per_experiment(registry, tmp_path):
    """An experiment's own widths win over the top level's width; only it gets by-width figures,
    and its tables say its widths."""
    text = ('width = 4\nmeasurements = ["params"]\ndepths = [2]\nbatch = 2\nseeds = 1\n'
            '[[experiments]]\nname = "sweep"\nvariants = ["plain"]\nwidths = [4, 8]\n'
            '[[experiments]]\nname = "fixed"\nvariants = ["plain"]\n')
    run = grid.make_run(registry, profile(tmp_path, text), jobs=1)
    plans = {p.experiment: p for p in run.plans}
    assert (plans["sweep"].widths, plans["fixed"].widths) == ([4, 8], [4])
    by_width = {f["name"] for f in run.figures if f["kind"] == "by-width"}
    assert by_width and all(name.endswith("-sweep") for name in by_width)
    meta, table = executed(registry, run, tmp_path / "run")
    headers = {heading: h[:3] for heading, _, h, _ in report.run_tables(meta, table)}
    assert headers == {"sweep: params (widths 4, 8, batch 2)": ["variant", "depth", "width"],
                       "fixed: params (width 4, batch 2)": ["variant", "depth", "skip kind"]}


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, culprit", [
    ("width = 8\nwidths = [8, 16]\n", "profile mine: give width = N (one width) or widths = [N, ...], not both"),
    ('[[experiments]]\nname = "e"\nvariants = ["plain"]\nwidth = 8\nwidths = [8]\n', "experiment 'e': give width = N"),
    ("widths = []\n", "widths must list at least one width"),
    ("widths = [8, 0]\n", "widths must be >= 1, got 0"),
    ("width = 0\n", "width must be >= 1, got 0"),
    ('widths = [8, "16"]\n', "widths must be a list of integers"),
    ("widths = [8.5]\n", "widths must be a list of integers"),
    ("widths = 8\n", "widths must be a list of integers"),
])
def test_bad_profile_widths(registry, tmp_path, text, culprit):
    with pytest.raises(UsageError) as error:
        grid.make_run(registry, profile(tmp_path, text), ["plain"])
    assert culprit in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, culprit", [
    (dict(width=8, widths=[8, 16]), "give --width N (one width) or --widths N... (several), not both"),
    (dict(widths=[16, 0]), "widths must be >= 1, got 0"),
    (dict(width=0), "width must be >= 1, got 0"),
])
def test_bad_command_line_widths(registry, overrides, culprit):
    with pytest.raises(UsageError, match=re.escape(culprit)):
        grid.make_run(registry, "quick", ["plain"], **overrides)


@pytest.mark.parametrize("args, culprit", [
    (["--width", "8", "--widths", "8", "16"], "not both"),
    (["--profile", "{profile}"], "widths must list at least one width"),
])
def test_bad_widths_exit_2_with_one_line(run_cli, tmp_path, args, culprit):
    args = [a.replace("{profile}", profile(tmp_path, "widths = []\n")) for a in args]
    proc = run_cli("run", "plain", "--jobs", "1", *args)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("skipbench: error: ") and culprit in line, line
