"""Hostile plugins, all in one real `skipbench run` (drop-in files loaded with --plugins-dir).

Each fault fails only its own cells, or, where it strikes while plugins load, only its plugin; it
is recorded with its reason (a failed record's error, or the plugin's status in results.json);
the run still completes; the end-of-run summary lists it on one line; and the run exits 1.

NaN is the exception: a diverging network is a measured result, not a fault of the harness. Its
values are recorded with status ``nonfinite`` and their reason, and the summary lists the cells
that have them, but NaN alone does not make the exit status 1 (checked on the run's own table).

Hanging blocks and blocks whose worker is killed (as the out-of-memory killer does) are safe to
run only because ``--cell-timeout`` puts every task in a worker process (two here, so that the two
hanging cells wait at the same time): run in-process they would take the whole run with them.
"""

from __future__ import annotations

import json
import textwrap

import pyarrow.compute as pc
import pytest

from skipbench import cli, results
from skipbench.registry import load_registry
from test_harness import FAULTY_PLUGIN, cli as run_skipbench

CELL_TIMEOUT = 5  # seconds from when a ready worker takes the cell: each healthy one takes well under one

# Builders and blocks that misbehave once a cell builds or runs its network.
HOSTILE_PLUGIN = '''\
"""Drop-in test plugin: builders that return no module, blocks that break their contract."""
import os
import signal
import time

import torch
from torch import nn

import skipbench


class Linear(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)


class WrongShape(Linear):
    def forward(self, x):
        return self.fc(x).unsqueeze(1)


class Hang(Linear):
    def forward(self, x):
        time.sleep(3600)


class Greedy(Linear):
    def forward(self, x):  # 1 PiB: the allocation itself fails
        return self.fc(x) + torch.empty(2 ** 50, dtype=torch.uint8).sum()


class Killed(Linear):
    def forward(self, x):  # what the out-of-memory killer does to the process
        os.kill(os.getpid(), signal.SIGKILL)


BUILDS = {
    "returns-none": lambda dim: None,
    "returns-tensor": lambda dim: torch.zeros(dim, dim),
    "returns-function": lambda dim: (lambda x: x),
    "wrong-shape": WrongShape,
    "hang": Hang,
    "greedy": Greedy,
    "killed": Killed,
}


@skipbench.hookimpl
def skipbench_register_builders():
    return [skipbench.BlockBuilder(name, build) for name, build in BUILDS.items()]


@skipbench.hookimpl
def skipbench_register_variants():
    return [skipbench.Variant(name, name) for name in BUILDS]
'''

# variant -> what each of its failed records' error holds (the width is 8)
CELL_FAULTS = {
    "boom": "BlockFault: block 'boom' raised on a (2, 8) input: RuntimeError: kaboom from the boom block",
    "returns-none": "BlockFault: builder 'returns-none' returned NoneType, not a torch.nn.Module",
    "returns-tensor": "BlockFault: builder 'returns-tensor' returned Tensor, not a torch.nn.Module",
    "returns-function": "BlockFault: builder 'returns-function' returned function, not a torch.nn.Module",
    "wrong-shape": "BlockFault: block 'wrong-shape' must map (batch, 8) to (batch, width); it returned (2, 1, 8)",
    "greedy": "BlockFault: block 'greedy' raised on a (2, 8) input: RuntimeError: ",
    "hang": "CellTimeout:",
    "killed": "WorkerDied:",
}
# what else the error says, where its start is not enough
CELL_REASONS = {"greedy": "can't allocate memory", "hang": "--cell-timeout", "killed": "SIGKILL"}

# plugin file -> (its source, the error its plugin is recorded with)
LOAD_FAULTS = {
    "import_error": ("import skipbench\nimport no_such_module_xyz\n",
                     "import failed: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    "import_raises": ("raise RuntimeError('import-time boom\\n  on two lines')\n",
                      "import failed: RuntimeError: import-time boom on two lines"),
    "raising_builders": ("""
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builders():
            raise ValueError("no builders today")
        """, "skipbench_register_builders raised ValueError: no builders today"),
    "raising_variants": ("""
        import skipbench
        from torch import nn

        @skipbench.hookimpl
        def skipbench_register_builders():
            return [skipbench.BlockBuilder("orphaned", lambda dim: nn.Linear(dim, dim))]

        @skipbench.hookimpl
        def skipbench_register_variants():
            yield skipbench.Variant("orphaned", "orphaned")
            raise KeyError("half-way")
        """, "skipbench_register_variants raised KeyError: 'half-way'"),
    "wrong_type": ("""
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builders():
            return {"name": "not-a-builder"}
        """, "skipbench_register_builders returned a dict, not an iterable of BlockBuilder "
             "(return a list, or yield them)"),
    "wrong_item": ("""
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_variants():
            return [skipbench.Variant("fine", "plain"), "not-a-variant"]
        """, "skipbench_register_variants returned a str, not a Variant"),
}

HEALTHY, DIVERGING = "plain", "nan-block"
# the faults that kill or hang the process first, then the healthy variant: a fresh worker runs it
VARIANTS = ["hang", "killed", *[v for v in CELL_FAULTS if v not in ("hang", "killed")], DIVERGING, HEALTHY]
MEASUREMENTS, DEPTHS = ("gradient-flow", "params"), (2,)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """(process, run directory) of one run of every hostile plugin, the faulty test plugin of
    test_harness (boom, nan-block) and the healthy built-in plain."""
    base = tmp_path_factory.mktemp("faults")
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "faultyplug.py").write_text(FAULTY_PLUGIN)
    (plugins / "hostile.py").write_text(HOSTILE_PLUGIN)
    for name, (source, _) in LOAD_FAULTS.items():
        (plugins / f"{name}.py").write_text(textwrap.dedent(source))
    measurements = [arg for m in MEASUREMENTS for arg in ("-m", m)]
    proc = run_skipbench("run", *VARIANTS, *measurements, "--depths", *map(str, DEPTHS), "--width", "8",
                         "--batch", "4", "--seeds", "2", "--cell-timeout", str(CELL_TIMEOUT), "--jobs", "2",
                         "--plugins-dir", str(plugins), "--no-figures", "--out", "D", cwd=base)
    return proc, base / "D"


@pytest.fixture(scope="module")
def records(hostile_run):
    """The run's records, as dicts."""
    return results.load(hostile_run[1])[1].to_pylist()


def summary(stderr: str) -> dict[str, list[str]]:
    """The end-of-run summary: each heading (without its colon) with its indented lines."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in stderr.splitlines():
        if current is not None and line.startswith("  "):
            sections[current].append(line.strip())
        elif line.endswith(":") and not line.startswith(("warning:", "[")):
            current = line[:-1]
            sections[current] = []
        else:
            current = None
    return sections


def section(stderr: str, heading_part: str) -> list[str]:
    """The lines of the one summary section whose heading contains `heading_part`."""
    (lines,) = [lines for heading, lines in summary(stderr).items() if heading_part in heading]
    return lines


def test_the_run_completes_and_exits_1(hostile_run, records):
    proc, run_dir = hostile_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("results.parquet", "results.csv", "results.json", "report.html"):
        assert (run_dir / name).is_file(), name
    cells = {(r["variant"], r["measurement"], r["depth"]) for r in records}
    assert cells == {(v, m, d) for v in VARIANTS for m in MEASUREMENTS for d in DEPTHS}
    fragments = list(results.read_fragments(run_dir / results.FRAGMENTS))
    assert len(fragments) == len(cells)  # one finished task each, the faulty ones included


@pytest.mark.parametrize("variant", CELL_FAULTS)
def test_a_cell_fault_fails_its_own_cells_with_its_reason(records, variant):
    mine = [r for r in records if r["variant"] == variant]
    assert len(mine) == len(MEASUREMENTS) * len(DEPTHS)  # one failure record per cell
    for r in mine:
        assert r["status"] == "failed" and r["error"].startswith(CELL_FAULTS[variant]), r["error"]
        assert CELL_REASONS.get(variant, "") in r["error"]


def test_the_healthy_variant_is_measured_in_full(records):
    mine = [r for r in records if r["variant"] == HEALTHY]
    assert {r["status"] for r in mine} == {"ok"}
    assert {"grad_ratio", "grad_norm", "params", "flops"} <= {r["metric"] for r in mine}
    assert {r["seed"] for r in mine if r["metric"] == "grad_ratio"} == {0, 1}


def test_nan_is_recorded_as_nonfinite_with_its_reason_not_as_a_failure(records):
    mine = [r for r in records if r["variant"] == DIVERGING]
    assert not [r for r in mine if r["status"] == "failed"]
    nonfinite = [r for r in mine if r["status"] == "nonfinite"]
    assert {r["metric"] for r in nonfinite} >= {"grad_ratio", "grad_norm", "act_norm"}
    assert {r["error"] for r in nonfinite} == {"value is nan"}
    assert {r["status"] for r in mine if r["measurement"] == "params"} == {"ok"}


@pytest.mark.parametrize("plugin", LOAD_FAULTS)
def test_a_load_fault_fails_only_its_plugin_with_its_reason(hostile_run, plugin):
    proc, run_dir = hostile_run
    infos = {p["name"]: p for p in json.loads((run_dir / "results.json").read_text())["meta"]["plugins"]}
    assert (infos[plugin]["status"], infos[plugin]["error"]) == ("failed", LOAD_FAULTS[plugin][1])
    assert infos[plugin]["contributes"] == {}
    failed = {name for name, info in infos.items() if info["status"] != "ok"}
    assert failed == set(LOAD_FAULTS)  # every other plugin loaded, those whose cells fail included
    assert f"warning: plugin {plugin!r} (dropin) failed: {LOAD_FAULTS[plugin][1]}\n" in proc.stderr


def test_the_summary_lists_each_fault_on_one_line(hostile_run):
    stderr = hostile_run[0].stderr
    cells = "; ".join(f"{m} at depth {DEPTHS[0]}" for m in MEASUREMENTS)
    failed = section(stderr, "cell(s) failed")
    assert len(failed) == len(CELL_FAULTS)  # a variant's cells share their error: one line
    for variant, error in CELL_FAULTS.items():
        (line,) = [line for line in failed if line.startswith(f"{variant} (")]
        assert line.startswith(f"{variant} ({cells}): {error}") and CELL_REASONS.get(variant, "") in line
    assert f"{len(CELL_FAULTS) * len(MEASUREMENTS) * len(DEPTHS)} cell(s) failed:" in stderr
    plugins = section(stderr, "plugin(s) failed to load")
    assert sorted(plugins) == sorted(f"plugin {name!r} (dropin) failed: {error}" for name, (_, error) in LOAD_FAULTS.items())
    (nan_line,) = section(stderr, "NaN or inf")
    assert nan_line.startswith(f"{DIVERGING} (gradient-flow at depth {DEPTHS[0]}): ")
    assert "NaN or inf, in " in nan_line and "grad_ratio" in nan_line


def test_exit_status_counts_failed_cells_and_plugins_not_nan(hostile_run, registry, capsys):
    """On the run's own table: NaN alone exits 0; a failed cell, or a plugin that failed to load
    with every cell fine, exits 1."""
    table = results.load(hostile_run[1])[1]
    measured = table.filter(pc.invert(pc.equal(table["status"], "failed")))
    assert cli.end_of_run_summary(registry, measured) == cli.EXIT_OK
    assert "NaN or inf" in capsys.readouterr().err
    assert cli.end_of_run_summary(registry, table) == cli.EXIT_FAILED_CELLS
    with_failed_plugin = load_registry(plugin_dirs=[str(hostile_run[1].parent / "plugins")], entrypoints=False,
                                       env=False, pyproject=None)
    assert cli.end_of_run_summary(with_failed_plugin, measured) == cli.EXIT_FAILED_CELLS
    assert "plugin 'import_error' (dropin) failed" in capsys.readouterr().err
