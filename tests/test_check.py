"""`skipbench check` and skipbench.testing: every built-in variant passes, and a real plugin file
that breaks each rule of the contract fails that rule (and only that rule), with its reason."""

from __future__ import annotations

import textwrap

import pytest

import skipbench.testing
from skipbench import checks
from skipbench.registry import load_registry

BUILTIN_VARIANTS = sorted(load_registry(entrypoints=False, env=False, pyproject=None).variants)

HEADER = """\
import numpy as np
import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param, Variant
from skipbench.layers import Linear
"""

# A conforming block: x + alpha * W2 relu(W1 x), alpha = 0 at initialization (ReZero), stacked
# seeds through skipbench.layers; each broken plugin below changes one thing of it.
GOOD = HEADER + '''
class Block(nn.Module):
    def __init__(self, dim, alpha):
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, dim), Linear(dim, dim)
        self.alpha = nn.Parameter(torch.full((1,), alpha))

    def forward(self, x):
        # alpha is (1,), or (seeds, 1) when seeds run stacked: (.., 1, 1) broadcasts over rows
        return x + self.alpha.unsqueeze(-2) * self.fc2(torch.relu(self.fc1(x)))


@skipbench.hookimpl
def skipbench_register_builders():
    yield BlockBuilder("NAME", Block, (Param("alpha", "float", 0.0),), layers_per_block=2,
                       skip_kind="scaled", seed_batched=True)


@skipbench.hookimpl
def skipbench_register_variants():
    yield Variant("NAME-v", "NAME", params={"alpha": 0.1})
'''

# rule -> (what the broken plugin changes in GOOD, a phrase of the failure's reason)
BROKEN = {
    "shapes": ([("return x + self.alpha", "return (x + self.alpha"), ("relu(self.fc1(x)))", "relu(self.fc1(x)))).sum(-1)")],
               "it must map (batch, in) to (batch, out)"),
    "seeds": ([("self.alpha = nn.Parameter(torch.full((1,), alpha))",
                "self.alpha = nn.Parameter(torch.full((1,), alpha))\n"
                "        self.fc1.weight.data = torch.from_numpy(np.random.randn(dim, dim).astype('float32'))")],
              "the same seed built different fc1.weight"),
    "gradients": ([("self.fc2(torch.relu(self.fc1(x)))", "self.fc2(torch.relu(self.fc1(x).detach()))")],
                  "fc1.bias, fc1.weight not in the autograd graph"),
    "params": ([('(Param("alpha", "float", 0.0),)', '(Param("alpha", "float", 0.0), Param("act", "str", "relu", ("relu", "tanh")))'),
                ("def __init__(self, dim, alpha):", "def __init__(self, dim, alpha, act):\n        assert act == 'relu'")],
               "act='tanh' is declared but the block fails with it"),
    "layers_per_block": ([("layers_per_block=2,", "")], "layers_per_block = 1 but the block has 2 weight matrices"),
    "depth-64": ([("return x + self.alpha", "return 100 * x + self.alpha")], "output non-finite values at initialization"),
    "vectorized": ([("from skipbench.layers import Linear", "from torch.nn import Linear")],
                   "declared seed_batched, but the engine runs it vmap"),
    "probes": ([("seed_batched=True)", "seed_batched=True, probes=('alpha',))"),
                ("    def forward(self, x):", "    def skipbench_probes(self):\n        return {'alpha': 0.5}\n\n    def forward(self, x):")],
               "probe(s) alpha (float) are not tensors"),
    "pickle": ([("self.alpha = nn.Parameter(torch.full((1,), alpha))",
                 "self.alpha = nn.Parameter(torch.full((1,), alpha))\n        self.scale = lambda h: h")],
               "does not pickle"),
}
CLI_RULES = ("shapes", "seeds", "gradients", "layers_per_block")  # run through the real command
# a block of the wrong shape cannot be stacked into a network either
# and a probe that is not a tensor cannot be stacked over seeds
ALSO_FAILS = {"shapes": {"depth-64", "vectorized"}, "probes": {"vectorized"}}


def plugin_source(name: str, edits=()) -> str:
    """GOOD with builder `name` (variant `name`-v) and each (old, new) edit applied."""
    text = GOOD.replace("NAME", name)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


def write_plugin(directory, name: str, edits=()):
    directory.mkdir(exist_ok=True)
    path = directory / f"{name.replace('-', '_')}.py"
    path.write_text(plugin_source(name, edits))
    return path


def results_by_check(output: str) -> dict[str, tuple[str, str]]:
    """{check: (PASS|FAIL, reason)} from `skipbench check` output of one target."""
    found = {}
    for line in output.splitlines():
        mark, _, rest = line.strip().partition("  ")
        if mark in ("PASS", "FAIL"):
            check, _, reason = rest.partition(": ")
            found[check] = (mark, reason)
    return found


# -- built-in variants ------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_VARIANTS)
def test_every_builtin_variant_passes_every_check(registry, name):
    failed = [f"{r.check}: {r.reason}" for r in checks.run_all(registry.variants[name], registry) if not r.ok]
    assert failed == []


def test_check_a_builtin_variant_through_the_command(run_cli):
    result = run_cli("check", "highway")
    assert result.returncode == 0, result.stdout + result.stderr
    found = results_by_check(result.stdout)
    assert set(found) == {c.name for c in checks.CHECKS}
    assert {mark for mark, _ in found.values()} == {"PASS"}
    assert "off the main path: gate.weight" in found["layers_per_block"][1]
    assert "gate_mean, gate: tensors" in found["probes"][1]
    assert result.stdout.strip().splitlines()[-1] == "1 target(s), 9 checks, 0 failed"


# -- a plugin that keeps the contract -------------------------------------------------------------
def test_conforming_plugin_file_passes_with_zero_gradients_by_design(run_cli, tmp_path):
    path = write_plugin(tmp_path / "good", "rezeroish")
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "builder rezeroish" in result.stdout and "variant rezeroish-v (builder rezeroish)" in result.stdout
    assert result.stdout.count("PASS") == 18
    # alpha = 0: the branch's weights get exactly zero gradient at initialization, by design
    gradients = [line for line in result.stdout.splitlines() if "gradients:" in line][0]
    assert "fc1.weight, fc2.bias, fc2.weight exactly zero at initialization (by design)" in gradients


def test_an_installed_plugin_by_name_checks_all_it_provides(run_cli, dropin_dir):
    result = run_cli("check", "scaledplug", "--plugins-dir", str(dropin_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "builder scaled-residual, from scaledplug" in result.stdout
    assert "variant scaled-quarter (builder scaled-residual), from scaledplug" in result.stdout
    # nn.Linear, undeclared seed_batched: vectorized under vmap, with the hint to run stacked
    assert "PASS  vectorized: under torch.func.vmap (declare seed_batched=True" in result.stdout


# -- a plugin that breaks each rule ---------------------------------------------------------------
@pytest.mark.parametrize("rule", CLI_RULES)
def test_command_fails_a_plugin_breaking_the_rule(run_cli, tmp_path, rule):
    edits, reason = BROKEN[rule]
    path = write_plugin(tmp_path / "broken", f"broken-{rule.replace('_', '-')}", edits)
    result = run_cli("check", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    found = results_by_check(result.stdout)
    assert found[rule][0] == "FAIL" and reason in found[rule][1], found[rule]
    failing = {check for check, (mark, _) in found.items() if mark == "FAIL"}
    assert failing == {rule} | ALSO_FAILS.get(rule, set())


@pytest.fixture(scope="module")
def broken_registry(tmp_path_factory):
    """One real plugin file per rule checked through skipbench.testing, loaded as drop-ins."""
    directory = tmp_path_factory.mktemp("broken")
    for rule in set(BROKEN) - set(CLI_RULES):
        write_plugin(directory, f"testing-{rule.replace('_', '-')}", BROKEN[rule][0])
    write_plugin(directory, "testing-good")
    return load_registry(plugin_dirs=[str(directory)], builtins=False, entrypoints=False, env=False, pyproject=None)


@pytest.mark.parametrize("rule", sorted(set(BROKEN) - set(CLI_RULES)))
def test_testing_checks_fail_a_plugin_breaking_the_rule(broken_registry, rule):
    builder = broken_registry.builders[f"testing-{rule.replace('_', '-')}"]
    check = next(c for c in skipbench.testing.CHECKS if c.__name__ == rule)
    with pytest.raises(skipbench.testing.CheckFailed, match=BROKEN[rule][1].replace("(", r"\(").replace(")", r"\)")):
        check(builder)
    # every other check still holds: each broken plugin breaks one rule only
    for other in skipbench.testing.CHECKS:
        if other is not check and other.__name__ not in ALSO_FAILS.get(rule, ()):
            other(builder)


@pytest.mark.parametrize("check", skipbench.testing.CHECKS)
def test_testing_checks_are_parametrizable_and_pass_a_conforming_plugin(broken_registry, check):
    check(broken_registry.builders["testing-good"])
    check(broken_registry.variants["testing-good-v"], broken_registry)


def test_a_block_that_only_runs_seed_by_seed_fails_vectorized(broken_registry, tmp_path):
    path = write_plugin(tmp_path / "loop", "loop-only", [
        ("from skipbench.layers import Linear", "from torch.nn import Linear"),
        ("seed_batched=True", "seed_batched=False"),
        ("return x + self.alpha", "return x + float(self.alpha.item() >= 0) * self.alpha")])
    registry = load_registry(plugin_dirs=[str(path.parent)], builtins=False, entrypoints=False, env=False, pyproject=None)
    result = checks.Check("vectorized", checks.check_vectorized).result(registry.builders["loop-only"])
    assert not result.ok and result.reason.startswith("runs seed by seed, not vectorized: vmap:"), result.reason


# -- bad targets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["no-such-variant", "missing.py", "sub/dir/missing.py"])
def test_unknown_target_is_a_usage_error(run_cli, target):
    result = run_cli("check", target)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skipbench: error: ") and target in lines[0]


def test_a_plugin_file_that_does_not_import_fails_with_the_reason(run_cli, tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(textwrap.dedent("""\
        import skipbench
        raise RuntimeError("forgot to finish this plugin")
    """))
    result = run_cli("check", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert "FAIL  plugin 'typo' failed to load: import failed: RuntimeError: forgot to finish this plugin" in result.stdout


def test_check_help_is_instant(tmp_path):
    """`skipbench check --help` imports neither torch nor the checks."""
    import json
    import subprocess
    import sys

    from conftest import clean_env

    code = ("import json, sys\nfrom skipbench.cli import main\n"
            "try:\n    main(['check', '--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'skipbench.checks')]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: skipbench check" in result.stdout and "TARGET" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, []]
