"""The new-user check: a non-editable install into a fresh venv runs from outside the checkout.

The venv must see the packages of the environment that runs these tests (torch above all, and a
setuptools new enough for the PEP 639 `license = "MIT"` string: torch 2.13 requires >= 77.0.3)
whether pytest runs in a venv or in a plain interpreter. `--system-site-packages` cannot do that:
a venv made from a venv's python inherits the *base* interpreter's site-packages, not the outer
venv's. So the venv is made isolated and --without-pip, and a `.pth` file in its site-packages
lists the outer interpreter's own site directories (sysconfig's purelib and platlib, and the user
site if it is enabled). Lines of a .pth are appended to sys.path after the venv's own
site-packages, and the .pth files in those directories are not processed, so an editable install
of skipbench in the outer environment (a .pth or a finder hook) stays inactive there, and the
installed copy wins. `venv/bin/python -m pip` is then the outer pip, building with the outer
setuptools (--no-build-isolation) and nothing else (--no-deps --no-index): offline, and into the
venv, since pip installs into the running interpreter's prefix. The project is copied first so
that the build leaves no build/ or *.egg-info in the checkout.
"""

from __future__ import annotations

import csv
import json
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT, builtin_plugin_modules, clean_env, packaged_variants

BUILTINS = set(packaged_variants())
BUILTIN_PLUGINS = builtin_plugin_modules()  # one module per skip family, and the core measurements


def run(cmd, cwd, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def outer_site_dirs() -> list[str]:
    """The site directories of the interpreter running the tests, a venv's or a plain one's."""
    paths = sysconfig.get_paths()
    dirs = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []  # first, as in site.main()
    dirs += [paths["purelib"], paths["platlib"]]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(venv python, venv bin, venv site-packages, a work directory outside the repo)."""
    base = tmp_path_factory.mktemp("fresh")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".asv", ".benchmarks", ".pytest_cache",
        "skipbench-results"))
    proc = run([sys.executable, "-m", "venv", "--without-pip", base / "venv"], base)
    assert proc.returncode == 0, proc.stderr
    bin_dir = base / "venv" / "bin"
    python = bin_dir / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base)
    site_dir = Path(purelib.stdout.strip())
    (site_dir / "_outer_environment.pth").write_text("".join(f"{d}\n" for d in outer_site_dirs()))
    proc = run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-q", src], base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    work = base / "work"
    work.mkdir()
    return python, bin_dir, site_dir.resolve(), work


def test_installed_copy_wins_over_the_editable_checkout(venv):
    python, _, site, work = venv
    proc = run([python, "-c", "import json, skipbench, skipbench_plugins; "
                "print(json.dumps([skipbench.__file__, skipbench_plugins.__file__]))"], work)
    assert proc.returncode == 0, proc.stderr
    for file in json.loads(proc.stdout):
        path = Path(file).resolve()
        assert path.is_relative_to(site), path
        assert not path.is_relative_to(ROOT.resolve()), path
    assert (site / "skipbench" / "profiles" / "quick.toml").is_file()
    assert (site / "skipbench_plugins" / "variants.toml").is_file()


def test_installed_list_and_plugins(venv):
    python, bin_dir, site, work = venv
    proc = run([bin_dir / "skipbench", "list"], work)
    assert proc.returncode == 0, proc.stderr
    assert BUILTINS <= {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()}
    proc = run([bin_dir / "skipbench", "plugins", "--json"], work)
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    for name in BUILTIN_PLUGINS:
        assert infos[name]["source"] == "builtin" and infos[name]["status"] == "ok"
        assert infos[name]["module"] == f"skipbench_plugins.{name}"
        assert infos[name]["contributes"], name  # builders (one module per family) or the core measurements


def test_installed_quick_run(venv):
    python, bin_dir, site, work = venv
    proc = run([bin_dir / "skipbench", "run", "--all", "--profile", "quick", "--out", "D"], work)
    assert proc.returncode == 0, proc.stderr
    run_dir = work / "D"
    for name in ("results.parquet", "results.json", "results.csv", "gradient-flow-grad_norm.png"):
        assert (run_dir / name).stat().st_size > 0, name
    meta = json.loads((run_dir / "results.json").read_text())["meta"]
    assert meta["profile"] == "quick"
    with open(run_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["variant"] for r in rows} == BUILTINS
    assert {r["status"] for r in rows} <= {"ok", "undefined"}
