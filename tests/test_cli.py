"""The real `skipbench` command in a subprocess: help, listings, bad input, TOML and drop-in variants."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import textwrap

import pytest

import skipbench
from skipbench import results
from conftest import clean_env

HIGHWAY_CLOSED = """\
[variants.highway-closed]
builder = "highway"
params = { gate_bias = -3.0 }
network = { head = "linear" }
tags = ["gated"]
"""


def rows_of(listing: str, name: str) -> list[list[str]]:
    """The table rows (split on whitespace) whose first cell is `name`."""
    return [line.split() for line in listing.splitlines() if line.split()[:1] == [name]]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_usage_error(result, *culprits: str) -> str:
    """Exit status 2, nothing on stdout, one `skipbench: error:` line naming every culprit, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("skipbench: error: ")
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    return lines[0]


# -- version and help -------------------------------------------------------------------------
def test_version(run_cli):
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"skipbench {skipbench.__version__}"


@pytest.mark.parametrize("command", [[], ["run"], ["report"], ["compare"], ["list"], ["plugins"], ["check"]])
def test_help_for_every_command(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"usage: skipbench {' '.join(command)}".rstrip())
    if command and command[0] not in ("report", "compare"):  # these read finished runs: no plugins
        assert "--plugins-dir DIR" in result.stdout and "--disable-plugin NAME" in result.stdout
    elif not command:
        for name in ("run", "report", "compare", "list", "plugins", "check"):
            assert name in result.stdout


def test_help_does_not_import_torch(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        from skipbench.cli import main
        codes = []
        for argv in (["--help"], ["run", "--help"], ["list", "--help"], ["plugins", "--help"]):
            try:
                main(argv)
            except SystemExit as exc:
                codes.append(exc.code)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "matplotlib", "numpy", "pyarrow"))
        print(json.dumps({"codes": codes, "heavy": heavy}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("modules imported by --help:", report)
    assert report["codes"] == [0, 0, 0, 0]
    assert report["heavy"] == []


def test_no_command_is_a_usage_error(run_cli):
    result = run_cli()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the following arguments are required: COMMAND" in result.stderr


# -- listings ---------------------------------------------------------------------------------
def test_list_shows_the_builtins_with_their_skip_kinds(run_cli, registry):
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:3] == ["variant", "builder", "skip"]
    for name, variant in registry.variants.items():
        (row,) = rows_of(result.stdout, name)
        assert row[1:3] == [variant.builder, registry.builders[variant.builder].skip_kind]
    assert {r[2] for name in registry.variants for r in rows_of(result.stdout, name)} == {
        b.skip_kind for b in registry.builders.values() if any(v.builder == b.name for v in registry.variants.values())}


def test_list_builders(run_cli, registry):
    result = run_cli("list", "--builders")
    assert result.returncode == 0, result.stderr
    for name, builder in registry.builders.items():
        (row,) = rows_of(result.stdout, name)
        assert row[1:3] == [builder.skip_kind, str(builder.layers_per_block)]
    highway = next(line for line in result.stdout.splitlines() if line.startswith("highway"))
    assert "gate_bias=-2.0" in highway and "gate_mean" in highway


def test_plugins_table(run_cli, registry):
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    for info in registry.plugins.infos:
        (row,) = rows_of(result.stdout, info.name)
        assert row[1:6] == [info.source, info.module, info.distribution, info.version, "ok"]
    (row,) = rows_of(result.stdout, "measurements")
    assert "gradient-flow," in row and "identity," in row


def test_plugins_json(run_cli, registry):
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    infos = json.loads(result.stdout)
    builtin = [i for i in infos if i["source"] == "builtin"]
    assert builtin == [info.as_dict() for info in registry.plugins.infos]
    assert {i["status"] for i in builtin} == {"ok"}
    assert sorted(n for i in builtin for n in i["contributes"].get("builders", [])) == sorted(registry.builders)


# -- bad input: exit 2, one line, no traceback ------------------------------------------------
def test_unknown_variant(run_cli, tmp_path, registry):
    result = run_cli("run", "nope", "--profile", "quick", "--out", str(tmp_path / "out"))
    line = assert_usage_error(result, "unknown variant 'nope'")
    assert f"available: {', '.join(sorted(registry.variants))}" in line
    assert not (tmp_path / "out").exists()


def test_unknown_measurement(run_cli):
    line = assert_usage_error(run_cli("run", "plain", "-m", "nope"), "unknown measurement 'nope'")
    assert "gradient-flow" in line


def test_unknown_profile(run_cli):
    assert_usage_error(run_cli("run", "plain", "--profile", "nope"), "unknown profile 'nope'", "quick")


def test_malformed_profile(run_cli, tmp_path):
    profile = tmp_path / "mine.toml"
    profile.write_text("depths = [2, 4\n")
    assert_usage_error(run_cli("run", "plain", "--profile", str(profile)), str(profile), "malformed TOML")


@pytest.mark.parametrize("text, culprits", [
    ('[variants.x]\nbuilder = "plain\n', ["malformed TOML", "line 2"]),
    ('[variants.x]\nbuilder = "highwy"\n', ["variant 'x'", "unknown builder 'highwy'", "available: bn-residual, deepnorm, dense, diracnet"]),
    ('[variants.x]\nbuilder = "highway"\nparams = { gate_bias = "low" }\n',
     ["variant 'x'", "gate_bias must be a float", "'low'"]),
], ids=["malformed", "unknown-builder", "wrong-param-type"])
def test_invalid_variants_file(run_cli, tmp_path, text, culprits):
    file = tmp_path / "variants.toml"
    file.write_text(text)
    assert_usage_error(run_cli("list", "--variants", str(file)), str(file), *culprits)


def test_depth_zero(run_cli):
    assert_usage_error(run_cli("run", "plain", "--profile", "quick", "--depths", "0"), "depth must be >= 1, got 0")


def test_depth_one_is_impossible_for_residual(run_cli):
    assert_usage_error(run_cli("run", "residual", "--profile", "quick", "--depths", "1"),
                       "depth 1 is impossible for variant 'residual'", "minimum depth is 2")


def test_width_zero(run_cli):
    assert_usage_error(run_cli("run", "plain", "--profile", "quick", "--width", "0"), "width must be >= 1, got 0")


def test_missing_plugins_dir(run_cli, tmp_path):
    assert_usage_error(run_cli("list", "--plugins-dir", str(tmp_path / "gone")), str(tmp_path / "gone"), "does not exist")


@pytest.mark.parametrize("command", [["run", "plain"], ["list"]])
def test_bad_format(run_cli, command):
    line = assert_usage_error(run_cli(*command, "--format", "nope"), "unknown table format 'nope'")
    assert "github" in line


def test_out_pointing_at_a_non_empty_directory(run_cli, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_usage_error(run_cli("run", "plain", "--profile", "quick", "-m", "params", "--out", str(out)),
                       str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_run_without_variants(run_cli):
    assert_usage_error(run_cli("run", "--profile", "quick"), "name variants to run", "--all")


def test_device_cuda_without_cuda(run_cli):
    assert_usage_error(run_cli("run", "plain", "--profile", "quick", "--device", "cuda"), "--device cuda", "CUDA is not available")


# -- TOML variants through the CLI ------------------------------------------------------------
def test_variants_file_and_pyproject_show_in_list(run_cli, tmp_path):
    file = tmp_path / "mine.toml"
    file.write_text(HIGHWAY_CLOSED)
    (tmp_path / "pyproject.toml").write_text('[tool.skipbench.variants.plain-tanh]\nbuilder = "plain"\n'
                                             'params = { activation = "tanh" }\n')
    result = run_cli("list", "--variants", str(file))  # cwd: tmp_path, so its pyproject.toml counts
    assert result.returncode == 0, result.stderr
    (row,) = rows_of(result.stdout, "highway-closed")
    assert row[:3] == ["highway-closed", "highway", "gated"] and "gate_bias=-3.0," in row
    assert row[-1] == str(file)
    (row,) = rows_of(result.stdout, "plain-tanh")
    assert "activation='tanh'," in row and row[-1] == str(tmp_path / "pyproject.toml")


def test_toml_variant_runs_and_its_gates_are_more_closed(run_cli, tmp_path):
    file = tmp_path / "mine.toml"
    file.write_text(HIGHWAY_CLOSED)
    out = tmp_path / "run"
    result = run_cli("run", "highway-closed", "highway", "--variants", str(file), "--profile", "quick",
                     "-m", "probes", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [r for r in read_csv(out / "results.csv") if r["metric"] == "gate_mean" and r["index"] == ""]
    assert rows and {r["status"] for r in rows} == {"ok"}
    means = {}
    for r in rows:
        means.setdefault((r["variant"], int(r["depth"])), []).append(float(r["value"]))
    depths = sorted({d for _, d in means})
    assert depths == [2, 4]
    for depth in depths:
        closed = statistics.median(means["highway-closed", depth])
        default = statistics.median(means["highway", depth])
        assert 0 < closed < default < 1


# -- drop-in plugins through the CLI ----------------------------------------------------------
@pytest.mark.parametrize("route", ["flag", "env"])
def test_dropin_plugin_lists_and_runs(run_cli, tmp_path, dropin_dir, route):
    if route == "flag":
        args, env = ["--plugins-dir", str(dropin_dir)], clean_env()
    else:
        args, env = [], clean_env(SKIPBENCH_PLUGINS_DIR=str(dropin_dir))
    listing = run_cli("list", *args, env=env)
    assert listing.returncode == 0, listing.stderr
    (row,) = rows_of(listing.stdout, "scaled-quarter")
    assert row[:4] == ["scaled-quarter", "scaled-residual", "scaled", "scale=0.25"]
    assert row[-2:] == ["scaledplug", f"({dropin_dir / 'scaledplug.py'})"]

    out = tmp_path / "run"
    result = run_cli("run", "scaled-quarter", *args, "--profile", "quick", "-m", "params", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    rows = read_csv(out / "results.csv")
    assert {(r["variant"], r["builder"], r["status"]) for r in rows} == {("scaled-quarter", "scaled-residual", "ok")}
    widths = {r["value"] for r in rows if r["metric"] == "out_width"}
    assert {int(float(w)) for w in widths} == {int(rows[0]["width"])}


def test_run_only_some_experiments_of_a_profile(run_cli, tmp_path):
    proc = run_cli("run", "--profile", "seed", "--experiment", "variants-dense", "--experiment", "dense-features",
                   "--seeds", "2", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "2 experiment(s)" in proc.stderr
    published = proc.stdout.split("== published values")[1]
    assert "variants-dense" in published and "seed-dense-block" in published
    assert "gradient-flow" not in published and "seed-highway" not in published  # other experiments' values
    assert sorted(p.name for p in (tmp_path / "run").glob("*.png")) == ["fig3-dense-features.png"]
    _, table = results.load(tmp_path / "run")
    assert set(table["experiment"].to_pylist()) == {"variants-dense", "dense-features"}


def test_unknown_experiment_is_a_usage_error(run_cli):
    assert_usage_error(run_cli("run", "--profile", "seed", "--experiment", "exp-9"), "--experiment 'exp-9'", "'gradient-flow'")
