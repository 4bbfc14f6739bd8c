"""The asv suite (benchmarks/) and asv.conf.json: the timing history over commits.

The main test clones the project into a temporary git repository with two commits (the second
adds a built-in variant), runs the suite on both with `asv run --quick`, publishes, and checks
the published data itself (asv publish exits 0 even with no results): both revisions, every
benchmark, and points for every variant at the commits that have it, none for a commit that
does not. torch is installed once into an asv environment kept under .asv/ (ignored by git),
so later runs reuse it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from itertools import product
from pathlib import Path

import pytest

from conftest import ROOT, clean_env, packaged_variants

asv = pytest.importorskip("asv", reason="asv is not installed (pip install -e '.[test]' installs it)")

BUILTINS = packaged_variants()
STUDY = ["plain", "residual"]  # the first built-ins: the history follows these (and the test's own variants)
BENCHMARKS = ["benchmarks.TimeForward.time_forward", "benchmarks.TimeForwardBackward.time_forward_backward",
              "benchmarks.PeakMem.peakmem_forward_backward", "benchmarks.Track.track_grad_ratio",
              "benchmarks.Track.track_mse_init", "benchmarks.Track.track_mse_trained", "benchmarks.Track.track_params"]
PROJECT_FILES = ["skipbench", "plugins", "benchmarks", "pyproject.toml", "README.md", "asv.conf.json"]
EXTRA_TOML = textwrap.dedent("""\
    [variants.residual-toml]
    builder = "residual"
    params = { branch_scale = 0.5 }
    network = { head = "linear" }
    """)
LATE_VARIANT = textwrap.dedent("""
    [variants.residual-late]
    builder = "residual"
    params = { zero_init_last = true }
    network = { head = "linear" }
    description = "added by the second commit"
    """)


def _pip_cache() -> str | None:
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    proc = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment with its own HOME (asv's machine file), pip's cache kept."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    cache = _pip_cache()
    env = clean_env(HOME=str(home), **extra)
    if cache:
        env["PIP_CACHE_DIR"] = cache
    env.pop("PYTHONPATH", None)
    return env


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _asv(repo: Path, env: dict, *args: str, timeout: float = 900) -> str:
    proc = subprocess.run([sys.executable, "-m", "asv", *args, "--config", "asv.test.json"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"asv {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _suite_variants(env: dict) -> list[str]:
    """The variant parameter of the suite as asv discovers it (a subprocess: the suite pins threads)."""
    code = "import json, benchmarks.benchmarks as b; print(json.dumps(b.TimeForward.params[0]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_suite_parameters_follow_the_registry(tmp_path, dropin_dir):
    """A TOML-only variant (SKIPBENCH_VARIANTS) and a drop-in plugin's variant are parameters."""
    extra = tmp_path / "extra.toml"
    extra.write_text(EXTRA_TOML)
    names = _suite_variants(clean_env(SKIPBENCH_VARIANTS=str(extra), SKIPBENCH_PLUGINS_DIR=str(dropin_dir)))
    assert names[:len(BUILTINS)] == BUILTINS
    assert {"residual-toml", "scaled-quarter"} <= set(names)
    assert _suite_variants(clean_env()) == BUILTINS
    # SKIPBENCH_ASV_VARIANTS follows some of them, by name or wildcard, in registry order
    assert _suite_variants(clean_env(SKIPBENCH_ASV_VARIANTS="highway, res*")) == [
        n for n in BUILTINS if n == "highway" or n.startswith("res")]


def test_unknown_variant_is_not_applicable():
    """setup raises NotImplementedError (asv: n/a) for a variant the installed commit lacks, and
    for a depth below one block; never another variant's numbers."""
    code = textwrap.dedent("""\
        import benchmarks.benchmarks as b
        for args in (("no-such-variant", 4), ("residual", 1)):
            try:
                b.TimeForward().setup(*args)
            except NotImplementedError as exc:
                print("n/a", exc)
            else:
                raise SystemExit(f"no NotImplementedError for {args}")
        t = b.Track(); t.setup("residual", 4)
        assert t.track_params("residual", 4) > 0
        """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.count("n/a") == 2


def _clone(tmp_path: Path) -> tuple[Path, str, str]:
    """A git repository with the project at two commits; the second adds the variant residual-late."""
    repo = tmp_path / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=ignore)
        else:
            shutil.copy2(src, repo / name)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    first = _git(repo, "rev-parse", "HEAD")
    with open(repo / "plugins" / "variants.toml", "a") as fh:
        fh.write(LATE_VARIANT)
    _git(repo, "commit", "-q", "-am", "second: a new built-in variant")
    second = _git(repo, "rev-parse", "HEAD")
    config = json.loads("\n".join(line for line in (ROOT / "asv.conf.json").read_text().splitlines()
                                  if not line.lstrip().startswith("//")))
    # the environment (torch) outlives the test: it is installed once, not on every test run
    config.update(env_dir=str(ROOT / ".asv" / "test-env"), results_dir="results", html_dir="html")
    (repo / "asv.test.json").write_text(json.dumps(config, indent=2))
    return repo, first, second


def _graph(html: Path, name: str) -> list:
    paths = [p for p in html.glob(f"graphs/**/{name}.json") if "summary" not in p.parts]
    assert len(paths) == 1, f"expected one graph of {name}, found {paths}"
    return json.loads(paths[0].read_text())


def test_history_of_two_commits(tmp_path, dropin_dir):
    repo, first, second = _clone(tmp_path)
    extra = tmp_path / "extra.toml"
    extra.write_text(EXTRA_TOML)
    # two built-ins and the variants this test adds: every built-in would only multiply the time
    env = _env(tmp_path, SKIPBENCH_ASV_DEPTHS="4", SKIPBENCH_VARIANTS=str(extra), SKIPBENCH_PLUGINS_DIR=str(dropin_dir),
               SKIPBENCH_ASV_VARIANTS=",".join(STUDY + ["residual-toml", "scaled-quarter", "residual-late"]))
    (tmp_path / "hashes.txt").write_text(f"{first}\n{second}\n")
    _asv(repo, env, "machine", "--yes", "--machine", "test")
    # the two benchmarks the history is checked on (a timing and a tracked count); every benchmark is
    # discovered and listed all the same, and `asv check` (below) imports and validates them all
    _asv(repo, env, "run", "--quick", "--machine", "test", "--show-stderr", "--bench",
         "TimeForward.time_forward|Track.track_params", f"HASHFILE:{tmp_path / 'hashes.txt'}")
    _asv(repo, env, "publish")
    html = repo / "html"
    index = json.loads((html / "index.json").read_text())
    assert {first[:8], second[:8]} <= {h[:8] for h in index["revision_to_hash"].values()}
    assert set(BENCHMARKS) <= set(index["benchmarks"])
    variants = index["benchmarks"]["benchmarks.TimeForward.time_forward"]["params"][0]
    variants = [v.strip("'") for v in variants]
    assert variants[:len(STUDY)] == STUDY
    # a TOML-only variant, a drop-in plugin's and the second commit's built-in are parameters
    assert {"residual-toml", "scaled-quarter", "residual-late"} <= set(variants)
    assert index["benchmarks"]["benchmarks.Track.track_params"]["unit"] == "count"
    rev = {h[:8]: int(r) for r, h in index["revision_to_hash"].items()}
    for name in ("benchmarks.TimeForward.time_forward", "benchmarks.Track.track_params"):
        params = index["benchmarks"][name]["params"]
        combos = [(v.strip("'"), d) for v, d in product(*params)]
        points = {r: values for r, values in _graph(html, name)}
        for commit in (first, second):
            assert rev[commit[:8]] in points, f"{name}: no point at {commit[:8]}"
            values = dict(zip(combos, points[rev[commit[:8]]]))
            for variant in STUDY + ["residual-toml", "scaled-quarter"]:
                value = values[(variant, "4")]
                assert value is not None and not math.isnan(value) and value > 0, f"{name} {variant} at {commit[:8]}: {value}"
        # the variant the first commit lacks: no number there (n/a), never another variant's
        late_first = dict(zip(combos, points[rev[first[:8]]]))[("residual-late", "4")]
        late_second = dict(zip(combos, points[rev[second[:8]]]))[("residual-late", "4")]
        assert late_first is None or math.isnan(late_first), f"{name}: residual-late has {late_first} at the first commit"
        assert late_second is not None and late_second > 0
        if name.endswith("track_params"):  # same builder, same size
            assert late_second == dict(zip(combos, points[rev[second[:8]]]))[("residual", "4")]


def test_asv_check(tmp_path):
    """`asv check` imports the suite in the asv environment and validates every benchmark."""
    repo, _, _ = _clone(tmp_path)
    env = _env(tmp_path)
    _asv(repo, env, "machine", "--yes", "--machine", "test")
    out = _asv(repo, env, "check")
    assert "No problems found" in out
