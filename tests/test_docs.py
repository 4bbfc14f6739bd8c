"""docs/plugins.md and the README's plugin section, executed: every plugin file passes
`skipbench check`, every variants file runs, the pyproject snippet installs a working plugin, the
pytest example passes, the scripts run, and every metric of the core measurements is defined."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT, clean_env
from skipbench.registry import load_registry

GUIDE = ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(path, language: str) -> list[str]:
    """The fenced code blocks of `language` in a Markdown file."""
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def files(path) -> dict[str, str]:
    """The blocks whose first line is `# file: NAME`, by NAME."""
    found = {}
    for lang in ("python", "toml"):
        for body in blocks(path, lang):
            first = body.splitlines()[0]
            if first.startswith("# file: "):
                found[first.removeprefix("# file: ").strip()] = body
    return found


GUIDE_FILES = files(GUIDE)
PLUGIN_FILES = sorted(n for n in GUIDE_FILES if n.endswith(".py") and not n.startswith("test_"))
VARIANT_FILES = sorted(n for n in GUIDE_FILES if n.endswith(".toml") and n != "pyproject.toml")
SCRIPTS = [b for b in blocks(GUIDE, "python") if not b.startswith("# file: ")]


@pytest.fixture
def guide_dir(tmp_path):
    """Every `# file:` block of the guide, written to one directory."""
    for name, body in GUIDE_FILES.items():
        (tmp_path / name).write_text(body)
    return tmp_path


def test_the_guide_has_what_it_promises():
    assert {"my_rezero.py", "depth_scaled.py", "test_my_rezero.py", "pyproject.toml", "my-variants.toml"} <= set(GUIDE_FILES)
    assert SCRIPTS, "the act_norm script"


@pytest.mark.parametrize("name", PLUGIN_FILES)
def test_plugin_files_pass_skipbench_check(run_cli, guide_dir, name):
    result = run_cli("check", str(guide_dir / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout and "FAIL" not in result.stdout


def test_plugin_files_register_their_variants(run_cli, guide_dir):
    plugins = guide_dir / "plugins"
    plugins.mkdir()
    for name in PLUGIN_FILES:
        (plugins / name).write_text(GUIDE_FILES[name])
    result = run_cli("list", "--plugins-dir", str(plugins))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert {"my-rezero", "my-rezero-warm", "depth-scaled"} <= names


@pytest.mark.parametrize("name", VARIANT_FILES)
def test_variant_files_load_and_run(run_cli, guide_dir, name):
    path = guide_dir / name
    variants = list(tomllib.loads(GUIDE_FILES[name])["variants"])
    listed = run_cli("list", "--variants", str(path))
    assert listed.returncode == 0, listed.stderr
    for variant in variants:
        assert any(line.split()[:1] == [variant] for line in listed.stdout.splitlines()), variant
    run = run_cli("run", *variants, "--variants", str(path), "--profile", "quick", "-m", "gradient-flow",
                  "-m", "identity", "--jobs", "1", "--no-figures", "--out", str(guide_dir / "run"))
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_pyproject_snippet_installs_a_plugin_that_passes_check(tmp_path, guide_dir):
    """pip-install the guide's pyproject.toml and my_rezero.py; the entry point's plugin name is
    then a `skipbench check` target."""
    project, site = guide_dir, tmp_path / "site"
    entry_points = tomllib.loads(GUIDE_FILES["pyproject.toml"])["project"]["entry-points"]["skipbench"]
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                             "--quiet", "--target", str(site), str(project)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    env = clean_env(PYTHONPATH=str(site))
    for plugin in entry_points:
        check = subprocess.run([sys.executable, "-m", "skipbench", "check", plugin], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "variant my-rezero (builder my-rezero), from my_rezero (skipbench-my-rezero 0.1.0)" in check.stdout


def test_the_pytest_example_passes(guide_dir):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_rezero.py"],
                            cwd=guide_dir, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout


@pytest.mark.parametrize("index", range(len(SCRIPTS)))
def test_scripts_run(tmp_path, index):
    result = subprocess.run([sys.executable, "-c", SCRIPTS[index]], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_of_the_core_measurements_is_defined():
    text = GUIDE.read_text()
    registry = load_registry(entrypoints=False, env=False, pyproject=None)
    missing = [m for meas in registry.measurements.values() for m in meas.metrics if f"`{m}`" not in text]
    assert missing == []


# -- the README's plugin section --------------------------------------------------------------------
README = ROOT / "README.md"


def test_readme_plugin_example_passes_check(run_cli, tmp_path):
    examples = [b for b in blocks(README, "python") if "hookimpl" in b]
    assert examples
    for i, body in enumerate(examples):
        path = tmp_path / f"readme_plugin_{i}.py"
        path.write_text(body)
        result = run_cli("check", str(path))
        assert result.returncode == 0, result.stdout + result.stderr


def test_readme_points_plugin_authors_to_the_guide_and_the_checks():
    text = README.read_text()
    section = text[text.index("## Adding a variant as a plugin"):]
    section = section[:section.index("\n## ", 1)]
    for needed in ("layers_per_block", "docs/plugins.md", "skipbench check"):
        assert needed in section, needed
    assert "RMS activation" not in text
