"""Runs that survive SIGKILL and a full disk, refuse to resume another run, and never mix two
runs' records: real `skipbench run` processes (cli.main in this process where a failure is
injected), real signals, real files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import as_rows, clean_env
from skipbench import cli, grid, identity, results
from skipbench.registry import load_registry

# identity first: its tasks take tenths of a second each, so that a kill aimed just after a
# fragment lands well before the next one (params takes milliseconds)
PROFILE = """\
measurements = ["identity", "params"]
depths = [2, 4]
width = 8
batch = 4
seeds = 3

[options.identity]
steps = 300
eval_every = 50
eval_batch = 8
"""
RUN = ["run", "--profile", "crash.toml", "--jobs", "1", "--threads", "1", "--no-figures"]
VARIANTS = ["plain", "residual"]
TASKS = 8  # per variant: identity at depths 2 and 4, then params at depths 2 and 4


def _cwd(path: Path) -> Path:
    """`path`, made, holding the profile every run here uses."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "crash.toml").write_text(PROFILE)
    return path


class Proc:
    """A `skipbench run` process in `cwd`, its stderr in a file (a pipe nobody reads could fill)."""

    def __init__(self, args: list[str], cwd: Path, name: str, launcher: tuple[str, ...] = ("-m", "skipbench")):
        self.stderr_path = cwd / f"{name}.stderr"
        with open(cwd / f"{name}.stdout", "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, *launcher, *args], cwd=cwd, env=clean_env(),
                                         stdout=out, stderr=err)

    def finish(self, timeout: float = 240) -> tuple[int, list[str]]:
        """Its exit status and stderr lines, once it ended."""
        return self.proc.wait(timeout=timeout), self.stderr_path.read_text().splitlines()


def _sorted_rows(table) -> list[dict]:
    """A table's rows (NaN-safe), in one order whatever order its tasks ran in."""
    return _sorted_rows_of(as_rows(table))


def _sorted_rows_of(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def _fragments(run_dir: Path) -> list[str]:
    return [p.name for p in results.fragment_paths(run_dir / results.FRAGMENTS)]


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _fragment_tasks(run_dir: Path) -> list[tuple]:
    """The task (grid.task_key) of each fragment of a run, in fragment order; each fragment must
    be readable and hold exactly one task."""
    keys = []
    for path, table in results.read_fragments(run_dir / results.FRAGMENTS):
        assert table is not None, f"{path} cannot be read"
        [key] = {grid.task_key(row) for row in table.drop_columns(["value"]).to_pylist()}
        keys.append(key)
    return keys


def _assert_complete(run_dir: Path, reference: dict, variants: list[str] = VARIANTS,
                     measurements: tuple[str, ...] = ("identity", "params")) -> None:
    """The run holds the uninterrupted run's records of `variants` and `measurements`, each task
    in exactly one fragment, numbered without a gap, and nothing half written."""
    table = results.load(run_dir)[1]
    expected = [row for row in reference["rows"] if row["variant"] in variants and row["measurement"] in measurements]
    others = set(expected[0]) - set(table.column_names)  # extras of measurements this run has not
    assert all(row[k] is None for row in expected for k in others)
    expected = [{k: v for k, v in row.items() if k not in others} for row in expected]
    assert _sorted_rows(table) == _sorted_rows_of(expected)
    tasks = _fragment_tasks(run_dir)
    assert sorted(tasks) == sorted(k for k in reference["tasks"] if k[1] in variants and k[2] in measurements)
    assert _fragments(run_dir) == [f"{i:06d}.arrow" for i in range(1, len(tasks) + 1)]
    assert _hidden(run_dir / results.FRAGMENTS) == [] and _hidden(run_dir) == []
    assert json.loads((run_dir / "results.json").read_text())["meta"]["variants"] == variants


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of both variants, started now (beside the first test's own runs);
    calling the fixture waits for it: its sorted rows, its tasks and its fragments' bytes."""
    cwd = _cwd(tmp_path_factory.mktemp("reference"))
    proc, done = Proc([*RUN, *VARIANTS, "--out", "run"], cwd, "run"), {}

    def get() -> dict:
        if not done:
            rc, err = proc.finish()
            assert rc == 0, err
            run_dir = cwd / "run"
            done.update(rows=_sorted_rows(results.load(run_dir)[1]), tasks=_fragment_tasks(run_dir),
                        fragments=[p.read_bytes() for p in results.fragment_paths(run_dir / results.FRAGMENTS)])
        return done

    yield get
    proc.proc.kill()  # where a test failed before waiting for it
    proc.proc.wait()


@pytest.fixture
def skipbench_main(tmp_path, monkeypatch, capsys):
    """cli.main in this process, in tmp_path (holding the profile), without the user's plugin
    settings; returns (exit status, stderr lines)."""
    _cwd(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("SKIPBENCH_")]:
        monkeypatch.delenv(name)

    def main(*args: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        rc = cli.main(list(args))
        return rc, capsys.readouterr().err.splitlines()

    return main


# -- SIGKILL at every point of a run, then --resume ---------------------------------------------
# each kill point, and how many fragments the run has written there
KEPT = {"before the first fragment": 0, "after one fragment": 1, "after half": TASKS // 2,
        "while a fragment is written": TASKS // 2 + 1, "after the last fragment, before results.json": TASKS}


def _reached(point: str, run_dir: Path) -> bool:
    """Whether a run is at `point`: its identity written for the first, else its KEPT fragments."""
    if not KEPT[point]:
        return (run_dir / identity.FILE).is_file()
    return len(_fragments(run_dir)) >= KEPT[point]


def test_sigkill_at_any_point_then_resume_gives_the_uninterrupted_records(skipbench_main, reference, tmp_path):
    """A run killed with SIGKILL, then continued with the same command and --resume DIR, ends
    with the records of an uninterrupted run, each task in exactly one fragment, the fragments
    the killed run wrote untouched.

    Five runs start together and each is killed as soon as this test, polling every 2 ms, sees
    its point: run.json (the run's identity, written before the first task) but no fragment yet
    (the first task takes a second); 1, 4 (half) or 5 fragments, each followed by an identity
    task of tenths of a second, so that the kill lands before the next fragment; all 8.
    Two points last milliseconds, too short to hit by polling; they are built as a kill there
    leaves them:
    - while a fragment is written: its data go to a hidden temporary file, renamed once whole
      (results.replace_atomic; test_results.py kills a real writer there), so the run killed
      after 5 fragments gets the first half of the 6th fragment's bytes under such a name;
    - after the last fragment but before results.json (about 10 ms later): where the run got as
      far as results.json, results.json and report.html are removed again (each was renamed into
      place whole, results.json after results.parquet and results.csv, report.html after it)."""
    runs = {point: (tmp_path / f"kill{i}", Proc([*RUN, *VARIANTS, "--out", f"kill{i}"], tmp_path, f"kill{i}"))
            for i, point in enumerate(KEPT)}
    pending, deadline = dict(runs), time.monotonic() + 240
    while pending:
        assert time.monotonic() < deadline, f"never reached: {list(pending)}"
        for point, (run_dir, proc) in list(pending.items()):
            if run_dir.is_dir() and _reached(point, run_dir):
                os.kill(proc.proc.pid, signal.SIGKILL)
                assert proc.finish()[0] == -signal.SIGKILL
                del pending[point]
            elif proc.proc.poll() is not None:
                pytest.fail(f"{point}: the run ended before it was killed: {proc.finish()[1][-3:]}")
        time.sleep(0.002)

    kept = {}
    for point, (run_dir, _) in runs.items():
        records = run_dir / results.FRAGMENTS
        assert len(_fragments(run_dir)) == KEPT[point], point
        assert _hidden(records) == [], point  # a kill between two writes leaves no temporary file
        if point == "while a fragment is written":
            torn = reference()["fragments"][KEPT[point]]
            (records / f".{KEPT[point] + 1:06d}.arrow.k1ll3d0x.partial").write_bytes(torn[:len(torn) // 2])
        if point.startswith("after the last") and (run_dir / "results.json").exists():
            for name in ("results.json", "report.html"):
                (run_dir / name).unlink(missing_ok=True)
        assert not (run_dir / "results.json").exists()
        kept[point] = [p.read_bytes() for p in results.fragment_paths(records)]

    for point, (run_dir, _) in runs.items():
        rc, err = skipbench_main(*RUN, *VARIANTS, "--resume", run_dir.name)
        assert rc == 0, (point, err[-5:])
        _assert_complete(run_dir, reference())
        fragments = [p.read_bytes() for p in results.fragment_paths(run_dir / results.FRAGMENTS)]
        assert fragments[:KEPT[point]] == kept[point], point  # what the killed run finished is kept, not run again


# -- a full disk ---------------------------------------------------------------------------------
def _disk_full(path: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _fill_disk_at_fragment(monkeypatch, writes: int) -> None:
    """The fragment writer succeeds `writes` times; the next write gets half way, then ENOSPC."""
    write_ipc, done = results._write_ipc, []

    def filling(table, path):
        if len(done) == writes:
            write_ipc(table, path)
            with open(path, "r+b") as fh:  # what reached the disk before it was full
                fh.truncate(os.path.getsize(path) // 2)
            raise _disk_full(path)
        done.append(path)
        write_ipc(table, path)

    monkeypatch.setattr(results, "_write_ipc", filling)


def _fill_disk_at_rename(monkeypatch, name: str) -> None:
    """Renaming a temporary file onto `name` raises ENOSPC (as a full disk fails a write): what
    goes through results.replace_atomic fails there; a file written directly would not."""
    replace = os.replace

    def filling(src, dst):
        if Path(dst).name == name:
            raise _disk_full(str(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", filling)


@pytest.mark.parametrize("where", ["first fragment", "sixth fragment", "results.csv", "report.html"])
def test_a_full_disk_stops_the_run_resumably(skipbench_main, reference, tmp_path, monkeypatch, where):
    """A full disk stops the run with exit 3 and one line naming the file, the error, the tasks
    kept and how to continue; nothing is torn or lost, and --resume (with space again) ends with
    the records of an uninterrupted run."""
    with monkeypatch.context() as patch:
        if where.endswith("fragment"):
            writes = 0 if where.startswith("first") else 5
            _fill_disk_at_fragment(patch, writes)
            failed, kept = f"run/records/{writes + 1:06d}.arrow", writes
        else:
            _fill_disk_at_rename(patch, where)
            failed, kept = f"run/{where}", TASKS
        rc, err = skipbench_main(*RUN, *VARIANTS, "--out", "run")
    assert rc == cli.EXIT_WRITE == 3
    assert err[-1] == (f"skipbench: error: cannot write {failed}: No space left on device; {kept} of {TASKS} tasks are "
                       f"kept in run/records/; continue with the same command and --resume run once there is space")
    assert sum("error" in line for line in err) == 1
    run_dir = tmp_path / "run"
    assert len(_fragment_tasks(run_dir)) == kept  # every kept fragment reads back whole
    assert _hidden(run_dir / results.FRAGMENTS) == [] and _hidden(run_dir) == []  # the failed write left nothing
    assert (run_dir / "results.json").exists() == (where == "report.html")  # results.json is written last

    rc, err = skipbench_main(*RUN, *VARIANTS, "--resume", "run")
    assert rc == 0, err
    _assert_complete(run_dir, reference())


# -- a resume must be the same run ---------------------------------------------------------------
def test_resume_refuses_a_different_run_before_running_anything(skipbench_main, tmp_path):
    """--resume compares the command's run with RUN_DIR/run.json and refuses another one, naming
    what differs, before any task runs; a directory without run.json is refused too."""
    variants = tmp_path / "gates.toml"
    variants.write_text('[variants.hw]\nbuilder = "highway"\nparams = { gate_bias = -3.0 }\n')
    args = ["run", "hw", "-m", "params", "--depths", "2", "--width", "8", "--profile", "quick", "--jobs", "1",
            "--threads", "1", "--no-figures", "--variants", "gates.toml"]
    rc, err = skipbench_main(*args, "--seeds", "3", "--out", "run")
    assert rc == 0, err
    stored = json.loads((tmp_path / "run" / identity.FILE).read_text())
    assert stored["seeds"] == [0, 1, 2] and stored["threads"] == 1 and stored["profile"] == "quick"
    assert stored["experiments"][""]["variant_definitions"]["hw"]["params"]["gate_bias"] == -3.0
    assert not {"started", "git_commit", "jobs"} & (set(stored) | set(stored["experiments"][""]))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "records").iterdir()}

    variants.write_text('[variants.hw]\nbuilder = "highway"\nparams = { gate_bias = -1.0 }\n')
    rc, err = skipbench_main(*args, "--seeds", "2", "--resume", "run")
    assert rc == 2
    assert err == ["skipbench: error: --resume 'run': this command differs from the run there in seeds (0..2 there, "
                   "0..1 here) and variant 'hw' definition (params.gate_bias: -3.0 there, -1.0 here); resume it "
                   "with the command that started it"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "records").iterdir()} == before

    (tmp_path / "run" / identity.FILE).unlink()  # as a run of an older skipbench left it
    rc, err = skipbench_main(*args, "--seeds", "3", "--resume", "run")
    assert rc == 2 and len(err) == 1 and "no run.json there" in err[0] and "start a new run" in err[0]


def test_identity_differences_name_each_field(tmp_path):
    """What counts as the identity, and how its differences read: the grid, options, mode and
    experiments; not the jobs."""
    registry = load_registry(entrypoints=False, env=False, pyproject=None)
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    here = identity.describe(grid.make_run(registry, str(profile), ["plain"], jobs=1, threads=1), registry)
    assert identity.differences(here, here) == []
    same_but_jobs = identity.describe(grid.make_run(registry, str(profile), ["plain"], jobs=4, threads=1), registry)
    assert identity.differences(here, same_but_jobs) == []
    other = identity.describe(grid.make_run(registry, str(profile), ["plain", "residual"], depths=[2], mode="eval",
                                            threads=2, seeds=64), registry)
    assert identity.differences(here, other) == [
        "seeds (0..2 there, 0..63 here)", "timing threads (1 there, 2 here)",
        'variants (["plain"] there, ["plain", "residual"] here)', "depths ([2, 4] there, [2] here)",
        'mode (none there, "eval" here)']
    profile.write_text(PROFILE.replace("steps = 300", "steps = 30"))
    steps = identity.describe(grid.make_run(registry, str(profile), ["plain"], jobs=1, threads=1), registry)
    assert identity.differences(here, steps) == ["options.identity.steps (300 there, 30 here)"]


# -- two runs at once ----------------------------------------------------------------------------
# a `skipbench run` whose clock stands still: two of them started in the same directory take the
# same timestamp for their run directory, always, not only when they happen to start in one second
FROZEN_CLOCK = """\
import datetime, sys
import types
from skipbench import cli, harness

class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2031, 5, 6, 7, 8, 9, tzinfo=tz)

harness.datetime = types.SimpleNamespace(datetime=Frozen)  # the clock of the run directory's name
sys.exit(cli.main(sys.argv[1:]))
"""


def test_runs_started_at_once_never_share_a_directory(reference, tmp_path):
    """Four runs start at once in one directory, each measuring one variant (so that mixing would
    show). Two without --out, at the same timestamp: both finish, each into its own run directory
    with exactly its own tasks. Two with the same --out: one runs, the other is refused with one
    line (exit 2) and writes nothing there."""
    cwd = _cwd(tmp_path)
    timestamped = {v: Proc([*RUN, v, "-m", "params"], cwd, v, launcher=("-c", FROZEN_CLOCK)) for v in VARIANTS}
    shared = {v: Proc([*RUN, v, "-m", "params", "--out", "shared"], cwd, f"shared-{v}") for v in VARIANTS}

    for variant, proc in timestamped.items():
        rc, err = proc.finish()
        assert rc == 0, (variant, err[-5:])
    dirs = sorted((cwd / "skipbench-results").iterdir())
    assert [d.name for d in dirs] == ["20310506-070809", "20310506-070809-1"]  # they raced for one name
    by_variant = {json.loads((d / identity.FILE).read_text())["experiments"][""]["variants"][0]: d for d in dirs}
    assert sorted(by_variant) == VARIANTS
    for variant, run_dir in by_variant.items():
        _assert_complete(run_dir, reference(), [variant], ("params",))

    outcomes = {v: p.finish() for v, p in shared.items()}
    [winner] = [v for v, (rc, _) in outcomes.items() if rc == 0]
    [(rc, err)] = [o for v, o in outcomes.items() if v != winner]
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("skipbench: error: --out 'shared'") and "runs never overwrite each other" in err[0]
    _assert_complete(cwd / "shared", reference(), [winner], ("params",))
    assert json.loads((cwd / "shared" / identity.FILE).read_text())["experiments"][""]["variants"] == [winner]


def test_a_directory_is_written_by_one_run_at_a_time(skipbench_main, tmp_path):
    """While a run holds its directory (here this process, as a running `skipbench run` does),
    a `--resume` of it in another process is refused with one line and writes nothing."""
    args = ["run", "plain", "-m", "params", "--depths", "2", "--width", "8", "--profile", "quick", "--jobs", "1",
            "--no-figures"]
    rc, err = skipbench_main(*args, "--out", "run")
    assert rc == 0, err
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    with identity.hold(tmp_path / "run", "test"):
        proc = subprocess.run([sys.executable, "-m", "skipbench", *args, "--resume", "run"], cwd=tmp_path,
                              env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["skipbench: error: --resume 'run': another skipbench run is writing to "
                                        "'run' right now; wait for it to end"]
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before
