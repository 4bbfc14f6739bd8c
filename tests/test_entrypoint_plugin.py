"""A real installed package with a `skipbench` entry point, seen through the real CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import clean_env, scaled_plugin
from skipbench.registry import load_registry

DIST, VERSION, EP = "skipbench-myplug", "0.3.1", "myplug"

MYPLUG = scaled_plugin("myvariant", {})


def install(tmp_path_factory, dist: str, version: str, ep: str, module_source: str):
    """Write a one-module project with a `skipbench` entry point and pip-install it into a target
    directory (no network, no build isolation); return that directory."""
    root = tmp_path_factory.mktemp(dist)
    project, site = root / "project", root / "site"
    project.mkdir()
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "{version}"

        [project.entry-points.skipbench]
        {ep} = "{ep}"

        [tool.setuptools]
        py-modules = ["{ep}"]
    """))
    (project / f"{ep}.py").write_text(module_source)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                             "--quiet", "--target", str(site), str(project)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (site / f"{ep}.py").is_file()
    return site


@pytest.fixture(scope="module")
def myplug_site(tmp_path_factory):
    return install(tmp_path_factory, DIST, VERSION, EP, MYPLUG)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    return install(tmp_path_factory, "skipbench-brokenplug", "1.0", "brokenplug",
                   'raise ImportError("brokenplug needs libfoo, which is missing")\n')


def env_with(site) -> dict:
    return clean_env(PYTHONPATH=str(site))


def rows_of(listing: str, name: str) -> list[str]:
    return [line for line in listing.splitlines() if line.split()[:1] == [name]]


def test_list_shows_the_variant_with_its_distribution(run_cli, myplug_site):
    result = run_cli("list", env=env_with(myplug_site))
    assert result.returncode == 0, result.stderr
    (row,) = rows_of(result.stdout, "myvariant")
    assert row.split()[:3] == ["myvariant", "scaled-residual", "scaled"]
    assert row.rstrip().endswith(f"{EP} ({DIST} {VERSION})")
    assert all(rows_of(result.stdout, name) for name in ("plain", "residual", "dense", "highway"))


def test_plugins_json_reports_distribution_and_version(run_cli, myplug_site):
    result = run_cli("plugins", "--json", env=env_with(myplug_site))
    assert result.returncode == 0, result.stderr
    infos = {info["name"]: info for info in json.loads(result.stdout)}
    assert infos[EP] == {
        "name": EP, "source": "entrypoint", "module": EP, "distribution": DIST, "version": VERSION,
        "status": "ok", "error": "", "contributes": {"builders": ["scaled-residual"], "variants": ["myvariant"]},
    }
    assert {infos[n]["source"] for n in ("plain", "residual", "dense", "highway", "measurements")} == {"builtin"}


def test_run_measures_the_entrypoint_variant(run_cli, myplug_site, tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "myvariant", "--profile", "quick", "-m", "params", "-m", "gradient-flow",
                     "--no-figures", "--out", str(out), env=env_with(myplug_site))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["variant"] for r in rows} == {"myvariant"}
    assert {r["builder"] for r in rows} == {"scaled-residual"}
    assert {r["measurement"] for r in rows} == {"params", "gradient-flow"}
    assert {r["status"] for r in rows} == {"ok"}
    width = int(rows[0]["width"])
    per_block = sum(p.numel() for p in torch.nn.Linear(width, width).parameters())
    params = {int(r["depth"]): int(float(r["value"])) for r in rows if r["metric"] == "params"}
    assert params == {depth: depth * per_block for depth in (2, 4)}  # one Linear per block, no head
    meta = json.loads((out / "results.json").read_text())["meta"]
    (info,) = [p for p in meta["plugins"] if p["name"] == EP]
    assert (info["distribution"], info["version"], info["status"]) == (DIST, VERSION, "ok")


@pytest.mark.parametrize("name", [EP, DIST, "Skipbench_MyPlug"])
def test_disable_plugin_removes_it(run_cli, myplug_site, name):
    result = run_cli("list", "--disable-plugin", name, env=env_with(myplug_site))
    assert result.returncode == 0, result.stderr
    assert not rows_of(result.stdout, "myvariant")
    assert rows_of(result.stdout, "highway")


def test_env_var_disables_by_distribution(run_cli, myplug_site):
    env = env_with(myplug_site) | {"SKIPBENCH_DISABLE_PLUGINS": DIST}
    infos = {i["name"]: i for i in json.loads(run_cli("plugins", "--json", env=env).stdout)}
    assert infos[EP]["status"] == "blocked" and infos[EP]["contributes"] == {}


def test_entrypoint_in_process(monkeypatch, myplug_site):
    """load_registry finds the entry point on sys.path and stamps the distribution."""
    monkeypatch.syspath_prepend(str(myplug_site))
    reg = load_registry(env=False, pyproject=None)
    builder = reg.builders["scaled-residual"]
    assert (builder.provider.plugin, builder.provider.distribution, builder.provider.version) == (EP, DIST, VERSION)
    assert reg.variants["myvariant"].provider == builder.provider
    assert "myvariant" not in load_registry(env=False, pyproject=None, entrypoints=False).variants


def test_broken_entrypoint_is_reported_and_builtins_work(run_cli, broken_site):
    env = env_with(broken_site)
    plugins = run_cli("plugins", env=env)
    assert plugins.returncode == 0, plugins.stderr
    (row,) = rows_of(plugins.stdout, "brokenplug")
    assert "entrypoint" in row and "skipbench-brokenplug" in row
    assert "failed: import failed: ImportError: brokenplug needs libfoo, which is missing" in row

    listing = run_cli("list", env=env)
    assert listing.returncode == 0
    assert all(rows_of(listing.stdout, name) for name in ("plain", "residual", "dense", "highway"))
    assert "warning: plugin 'brokenplug' (entrypoint) failed: import failed: ImportError" in listing.stderr


def test_strict_plugins_makes_a_broken_entrypoint_fatal(run_cli, broken_site):
    result = run_cli("list", "--strict-plugins", env=env_with(broken_site))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("skipbench: error: plugin 'brokenplug' (entrypoint) failed: import failed: ImportError")


def test_results_json_defines_every_variant(run_cli, myplug_site, tmp_path):
    """results.json alone says what each variant was: builder, resolved parameters, last block,
    network, provider and version, and the builder's declarations and provider."""
    mine = tmp_path / "mine.toml"
    mine.write_text('[variants.myvariant-last]\nbuilder = "scaled-residual"\nparams = { scale = 0.25 }\n'
                    'last_block = { scale = 0.0 }\nnetwork = { head = "linear" }\ntags = ["mine"]\n'
                    'description = "quarter scale, last block off"\n')
    out = tmp_path / "run"
    result = run_cli("run", "myvariant*", "--variants", str(mine), "--profile", "quick", "-m", "params",
                     "--no-figures", "--out", str(out), env=env_with(myplug_site))
    assert result.returncode == 0, result.stderr
    definitions = json.loads((out / "results.json").read_text())["meta"]["variant_definitions"]
    assert sorted(definitions) == ["myvariant", "myvariant-last"]
    builder = {"name": "scaled-residual", "provider": {"plugin": EP, "distribution": DIST, "version": VERSION},
               "layers_per_block": 1, "skip_kind": "scaled", "seed_batched": False, "position": False,
               "probes": [], "description": "y = x + s relu(W x + b)",
               "params": [{"name": "scale", "type": "float", "default": 0.5, "choices": [], "minimum": None,
                           "help": ""}]}
    network = {"stem": "none", "stem_init": "he-normal", "head": "auto", "head_init": "xavier-seed", "dtype": "float32"}
    assert definitions["myvariant"] == {
        "name": "myvariant", "builder": "scaled-residual", "params": {"scale": 0.5},  # the default, filled in
        "last_block": {}, "last_block_params": None, "network": network, "tags": ["scaled"], "description": "",
        "replace": False, "provider": {"plugin": EP, "distribution": DIST, "version": VERSION},
        "builder_definition": builder}
    last = definitions["myvariant-last"]
    assert (last["params"], last["last_block"], last["last_block_params"]) == ({"scale": 0.25}, {"scale": 0.0},
                                                                             {"scale": 0.0})
    assert last["network"] == {**network, "head": "linear"}
    assert last["provider"] == {"plugin": str(mine), "distribution": "", "version": ""}
    assert last["builder_definition"] == builder  # the builder's provider: the installed package
    assert (last["tags"], last["description"]) == (["mine"], "quarter scale, last block off")
