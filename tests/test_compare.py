"""`skipbench compare RUN_A RUN_B` on real runs (the CLI in a subprocess): no change between two runs
that differ only in their seeds, the changed variant flagged when one variant's branch scale
changes, the --fail-on gate, bad input, --html and --format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skipbench import compare, results
from skipbench.specs import Measurement, SpecError
from conftest import clean_env

VARIANTS = ["residual", "residual-linear", "plain"]
PROFILE = """\
measurements = ["gradient-flow", "identity", "params"]
depths = [2, 4]
width = 16
batch = 32
seeds = 20
seed_start = {seed_start}

[options.identity]
steps = 10
eval_every = 5
eval_batch = 64
"""
# residual-linear (branch_scale 0.5 in plugins/variants.toml) with the branch at full scale
SCALED = """
[variants.residual-linear]
builder = "residual"
params = { order = "branch-only", branch_scale = 1.0 }
network = { head = "linear" }
replace = true
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skipbench", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three runs: A (seeds 0-19), B (seeds 100-119, same settings), C (as B, with residual-linear's
    branch_scale 1.0 instead of 0.5)."""
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for name, seed_start, extra in (("A", 0, ""), ("B", 100, ""), ("C", 100, SCALED)):
        profile = root / f"{name.lower()}.toml"
        profile.write_text(PROFILE.format(seed_start=seed_start) + extra)
        result = cli("run", *VARIANTS, "--profile", str(profile), "--out", name, "--no-figures", "--jobs", "1",
                     cwd=root)
        assert result.returncode == 0, result.stderr
        out[name] = root / name
    out["root"] = root
    return out


def non_timing(comparison: compare.Comparison) -> list[compare.Row]:
    return [r for r in comparison.rows if r.kind != "timing"]


def test_same_settings_different_seeds_no_significant_change(runs):
    comparison = compare.compare(runs["A"], runs["B"])
    rows = non_timing(comparison)
    unchanged = sum(r.result == "no significant change" for r in rows)
    assert len(rows) >= 50  # 3 variants x 2 depths x (3 gradient-flow + 2 identity + 5 params)
    assert unchanged / len(rows) >= 0.95, [r.label for r in rows if r.result != "no significant change"]
    assert {r.kind for r in rows} == {"seeded", "single"}
    assert all(r.settings == "" for r in rows) and comparison.setting_differences == []
    assert any(d.startswith("seeds 0-19 (20) → 100-119 (20)") for d in comparison.run_differences)
    seeded = [r for r in rows if r.kind == "seeded"]
    assert all(r.p is not None and r.q is not None and r.n_a == r.n_b == 20 for r in seeded)
    assert all(r.ci is not None and r.ci[0] <= r.ci[1] for r in seeded)
    assert "identity/loss_curve" in comparison.per_index and "gradient-flow/grad_norm" in comparison.per_index
    better = json.loads((runs["A"] / "results.json").read_text())["meta"]["better"]  # harness.metadata
    assert (better["grad_ratio"], better["mse_init"]) == ("one", "lower") and "params" not in better
    # deterministic: the bootstrap has a fixed seed
    again = compare.compare(runs["A"], runs["B"])
    assert [(r.ci, r.q) for r in again.rows] == [(r.ci, r.q) for r in comparison.rows]


def test_changed_branch_scale_flags_that_variant(runs):
    comparison = compare.compare(runs["A"], runs["C"])
    flagged = {(r.metric, r.depth): r for r in comparison.rows if r.result != "no significant change"}
    assert all(r.variant == "residual-linear" for r in flagged.values()), sorted(r.label for r in flagged.values())
    # the activation and backward-signal growth and the distance from the identity grow with the
    # branch scale (grad_ratio does not: first/last weight gradients grow alike, and a one-block
    # net's ratios are 1)
    for key in [("act_growth", 2), ("act_growth", 4), ("signal_ratio", 4), ("mse_init", 2), ("mse_init", 4)]:
        assert key in flagged, (key, sorted(flagged))
        assert flagged[key].result == "worse" and flagged[key].change > 0.2
    for r in comparison.rows:
        expected = "params.branch_scale 0.5→1.0" if r.variant == "residual-linear" else ""
        assert r.settings == expected, (r.label, r.settings)
    assert comparison.setting_differences == ["variant residual-linear: params.branch_scale 0.5→1.0"]


def test_cli_fail_on(runs):
    root, a, b, c = runs["root"], str(runs["A"]), str(runs["B"]), str(runs["C"])
    changed = cli("compare", a, c, "--fail-on", "mse_init:20%", "--fail-on", "act_*:0.1", cwd=root)
    assert changed.returncode == 1, changed.stderr
    assert "residual-linear" in changed.stdout and "branch_scale" in changed.stdout
    tripped = [line for line in changed.stderr.splitlines() if line.startswith("fail-on ")]
    assert any("mse_init:0.2: residual-linear identity mse_init depth 4" in line for line in tripped), tripped
    assert any("act_*:0.1: residual-linear gradient-flow act_growth" in line for line in tripped), tripped
    assert all("residual-linear" in line for line in tripped)
    # beyond the threshold only: mse_init rose by far less than 10000 %
    assert cli("compare", a, c, "--fail-on", "mse_init:100", cwd=root).returncode == 0
    same = cli("compare", a, b, "--fail-on", "mse_init", "--fail-on", "act_growth", "--fail-on", "params", cwd=root)
    assert same.returncode == 0, same.stderr
    assert "no significant change" in same.stdout and "Traceback" not in same.stderr


def _usage_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skipbench: error: "), result.stderr
    return lines[0]


def test_cli_bad_input(runs, tmp_path):
    a = str(runs["A"])
    (tmp_path / "not-a-run").mkdir()
    assert "not a skipbench run" in _usage_error(cli("compare", a, "not-a-run", cwd=tmp_path))
    assert "does not exist" in _usage_error(cli("compare", "missing", a, cwd=tmp_path))
    (tmp_path / "interrupted" / results.FRAGMENTS).mkdir(parents=True)
    assert "interrupted" in _usage_error(cli("compare", a, "interrupted", cwd=tmp_path))
    # a finished run of another width: no rows in common
    other = tmp_path / "other"
    other.mkdir()
    table = results.task_table([{"metric": "params", "value": 10.0}], variant="plain", builder="plain",
                               measurement="params", depth=2, width=32, batch=8, experiment="")
    results.export(other, {"seeds": [0]}, table)
    line = _usage_error(cli("compare", a, "other", cwd=tmp_path))
    assert "no rows in common" in line and "width 16" in line and "width 32" in line
    assert "--fail-on" in _usage_error(cli("compare", a, a, "--fail-on", "x:lots", cwd=tmp_path))
    assert "table format" in _usage_error(cli("compare", a, a, "--format", "nope", cwd=tmp_path))


def test_cli_html_and_format(runs):
    root = runs["root"]
    result = cli("compare", str(runs["A"]), str(runs["C"]), "--format", "github", "--html", "cmp.html", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "| variant " in result.stdout and "|---" in result.stdout
    assert "| params.branch_scale 0.5→1.0 |" in result.stdout  # Markdown cells stay whole
    plain = cli("compare", str(runs["A"]), str(runs["C"]), cwd=root)  # the terminal's: within 120 columns
    assert plain.returncode == 0 and max(len(line) for line in plain.stdout.splitlines()) <= 120
    page = (root / "cmp.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page and "<section" in page
    assert "params.branch_scale 0.5→1.0" in page and 'class="flag"' in page
    section = compare.html_section(compare.compare(runs["A"], runs["C"]))
    assert section.startswith("<section") and section.rstrip().endswith("</section>")


def _run(path: Path, records: list[dict], meta: dict) -> Path:
    """A finished run directory of these records (one cell's coordinates each, from the record)."""
    path.mkdir()
    results.export(path, meta, results.concat(results.task_table([r]) for r in records))
    return path


def _rec(metric, value, seed=None, measurement="m", batch=8, **extra):
    return {"variant": "v", "builder": "b", "measurement": measurement, "depth": 2, "width": 16, "batch": batch,
            "experiment": "", "metric": metric, "value": value, "seed": seed, **extra}


def test_status_timing_directions_and_settings(tmp_path):
    """Synthetic runs: finite values gained or lost, timings by factor and spread, directions,
    per-row batch and variant-definition differences, and the --fail-on rule."""
    seeds = range(10)
    nan = float("nan")
    better = {"s": "lower", "d": "lower", "r": "one", "rate": "higher", "rate2": "higher", "g": "higher",
              "g2": "higher"}
    definition = {"builder": "b", "params": {"k": 1}, "last_block": {}, "network": {"dtype": "float32"},
                  "provider": {"plugin": "x", "version": "1"}}
    common = [_rec("rate", 100.0, measurement="t", iqr=2.0), _rec("rate2", 100.0, measurement="t", iqr=20.0),
              _rec("g", 1.0, measurement="t"), _rec("g2", 1.0, measurement="t")]
    a = _run(tmp_path / "a", [_rec("s", None, s, status="undefined", error="never") for s in seeds]
             + [_rec("d", 1.0 + 0.01 * s, s) for s in seeds] + [_rec("r", 1.2 + 0.01 * s, s) for s in seeds]
             + common, {"better": better, "seeds": list(seeds), "torch": "2.4",
                        "variant_definitions": {"v": definition}})
    b = _run(tmp_path / "b", [_rec("s", 5.0 + s, s) for s in seeds] + [_rec("d", nan, s) for s in seeds]
             + [_rec("r", 1.01 + 0.001 * s, s, batch=16) for s in seeds]
             + [_rec("rate", 80.0, measurement="t", iqr=2.0), _rec("rate2", 85.0, measurement="t", iqr=20.0),
                _rec("g", 1.05, measurement="t"), _rec("g2", 2.0, measurement="t")],
             {"better": better, "seeds": list(seeds), "torch": "2.13",
              "variant_definitions": {"v": {**definition, "network": {"dtype": "float64"},
                                            "provider": {"plugin": "x", "version": "2"}}}})
    comparison = compare.compare(a, b)
    rows = {r.metric: r for r in comparison.rows}
    assert {m: (r.kind, r.result) for m, r in rows.items()} == {
        "s": ("status", "improved"), "d": ("status", "worse"), "r": ("seeded", "improved"),
        "rate": ("timing", "worse"), "rate2": ("timing", "no significant change"),
        "g": ("timing", "no significant change"), "g2": ("timing", "improved")}
    assert rows["r"].settings == "batch 8→16; network.dtype float32→float64"
    assert rows["rate"].settings == "network.dtype float32→float64"  # not the provider's version
    assert comparison.run_differences == ["torch 2.4 → 2.13"]
    assert [(rule, r.metric) for rule, r in compare.tripped(comparison, [("d", 0.0), ("rate*", 0.5), ("r", 0)])] \
        == [("d:0", "d")]  # rate fell by 20 % only; r improved
    assert compare.tripped(comparison, [compare.parse_fail_on("rate:15%")])[0][1].metric == "rate"
    assert compare.parse_fail_on("x*:0.05") == compare.parse_fail_on("x*:5%") == ("x*", 0.05)
    assert "none finite" in compare.text(comparison)


def test_measurement_better_is_validated():
    assert dict(Measurement("m", lambda cell: [], better={"x": "one"}).better) == {"x": "one"}
    with pytest.raises(SpecError, match="better"):
        Measurement("m", lambda cell: [], better={"x": "up"})
