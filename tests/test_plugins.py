"""Plugin discovery, failure isolation, duplicates, blocking and provider stamps (in-process)."""

from __future__ import annotations

import pkgutil
import textwrap

import pytest
import torch

import skipbench
import skipbench_plugins
from skipbench import network
from skipbench.plugins import PluginError, discover
from skipbench.registry import load_registry
from skipbench.specs import SpecError, UsageError

# every module of the built-in plugin package (other work adds families there)
BUILTIN_MODULES = {m.name for m in pkgutil.iter_modules(skipbench_plugins.__path__) if not m.name.startswith("_")}
assert {"dense", "highway", "measurements", "plain", "residual"} <= BUILTIN_MODULES


def write_plugin(directory, name: str, source: str):
    """Write `source` as the drop-in plugin file DIRECTORY/NAME.py and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def builder_plugin(builder: str, variant: str | None = None, replace: bool = False) -> str:
    """Source of a plugin with one plain-Linear builder (and optionally a variant of it)."""
    source = f"""
        import skipbench
        from torch import nn

        @skipbench.hookimpl
        def skipbench_register_builders():
            return [skipbench.BlockBuilder({builder!r}, lambda d: nn.Linear(d, d), replace={replace})]
    """
    if variant:
        source += f"""
        @skipbench.hookimpl
        def skipbench_register_variants():
            return [skipbench.Variant({variant!r}, {builder!r}, replace={replace})]
    """
    return source


def load(*dirs, **kwargs):
    """A registry with autoload off: built-ins plus the given drop-in directories."""
    return load_registry(entrypoints=False, env=False, pyproject=None, plugin_dirs=[str(d) for d in dirs], **kwargs)


def info_of(registry, name):
    (info,) = [i for i in registry.plugins.infos if i.name == name]
    return info


# -- drop-ins that work -----------------------------------------------------------------------
def test_dropin_plugin_builds_and_runs(dropin_dir):
    """A drop-in file's builder and variant are registered and build a network that runs."""
    reg = load(dropin_dir)
    assert reg.builders["scaled-residual"].skip_kind == "scaled"
    variant = reg.variants["scaled-quarter"]
    assert reg.params_of(variant) == {"scale": 0.25}

    torch.manual_seed(0)
    net = network.build(reg, variant, depth=3, width=8)
    assert len(net.blocks) == 3
    x = torch.randn(5, 8)
    out = net(x)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    block = net.blocks[0]
    assert block.scale == 0.25
    torch.testing.assert_close(block(x), x + 0.25 * torch.relu(block.fc(x)))

    info = info_of(reg, "scaledplug")
    assert (info.source, info.status, info.module) == ("dropin", "ok", "skipbench_dropin_scaledplug")
    assert info.distribution == str(dropin_dir / "scaledplug.py")
    assert info.contributes == {"builders": ["scaled-residual"], "variants": ["scaled-quarter"]}


def test_every_collected_item_is_stamped_with_its_provider(dropin_dir):
    reg = load(dropin_dir)
    for spec in [*reg.builders.values(), *reg.measurements.values()]:
        assert spec.provider is not None
        if spec.name == "scaled-residual":
            assert spec.provider.plugin == "scaledplug"
            assert spec.provider.distribution == str(dropin_dir / "scaledplug.py")
        else:
            assert spec.provider.plugin in BUILTIN_MODULES
            assert (spec.provider.distribution, spec.provider.version) == ("skipbench", skipbench.__version__)
    assert reg.builders["highway"].provider.plugin == "highway"
    assert reg.measurements["gradient-flow"].provider.plugin == "measurements"
    assert reg.variants["scaled-quarter"].provider.plugin == "scaledplug"
    assert all(v.provider is not None for v in reg.variants.values())


def test_underscore_files_are_not_plugins(tmp_path):
    write_plugin(tmp_path, "_helpers", "raise RuntimeError('must not be imported')")
    reg = load(tmp_path)
    assert {i.name for i in reg.plugins.infos} == BUILTIN_MODULES


def test_missing_plugin_dir_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="plugin directory .*nowhere.* does not exist"):
        load(tmp_path / "nowhere")


# -- failures are isolated --------------------------------------------------------------------
def test_import_failure_is_reported_and_others_carry_on(tmp_path, dropin_dir):
    write_plugin(dropin_dir, "broken", "import skipbench\nimport no_such_module_xyz\n")
    reg = load(dropin_dir)
    info = info_of(reg, "broken")
    assert info.status == "failed"
    assert "import failed: ModuleNotFoundError" in info.error and "no_such_module_xyz" in info.error
    assert reg.plugins.failures() == [info]
    assert "scaled-quarter" in reg.variants and {"plain", "residual", "dense", "highway"} <= set(reg.variants)


def test_raising_hook_fails_plugin_and_drops_all_its_contributions(tmp_path):
    write_plugin(tmp_path, "halfway", builder_plugin("halfway-block") + """
        @skipbench.hookimpl
        def skipbench_register_variants():
            raise RuntimeError("variants table exploded")
    """)
    reg = load(tmp_path)
    info = info_of(reg, "halfway")
    assert info.status == "failed"
    assert info.error == "skipbench_register_variants raised RuntimeError: variants table exploded"
    assert "halfway-block" not in reg.builders  # its builder hook worked, but the plugin failed
    assert info.contributes == {}
    assert "highway" in reg.builders


def test_misspelled_hook_fails_loudly(tmp_path):
    write_plugin(tmp_path, "typo", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builder():
            return []
    """)
    plugins = discover(plugin_dirs=[tmp_path], entrypoints=False, env=False)
    (info,) = [i for i in plugins.infos if i.name == "typo"]
    assert info.status == "failed"
    assert "unknown hook(s) skipbench_register_builder (misspelled?)" in info.error
    assert "skipbench_register_builders" in info.error  # lists the known hooks
    assert plugins.pm.get_plugin("typo") is None  # unregistered again


def test_hook_with_unknown_argument_fails_registration(tmp_path):
    write_plugin(tmp_path, "argy", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builders(device):
            return []
    """)
    info = info_of(load(tmp_path), "argy")
    assert info.status == "failed" and info.error.startswith("registration failed:") and "device" in info.error


@pytest.mark.parametrize("returned, type_name", [
    ('["plain"]', "a str"),
    ('[skipbench.Variant("v", "plain")]', "a Variant"),
    ('[{"name": "x"}]', "a dict"),
    ('[1]', "an int"),
])
def test_hook_returning_the_wrong_type_fails(tmp_path, returned, type_name):
    """skipbench's own type check is reported as what it is, not as the hook raising."""
    write_plugin(tmp_path, "wrongtype", f"""
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builders():
            return {returned}
    """)
    reg = load(tmp_path)
    info = info_of(reg, "wrongtype")
    assert info.status == "failed"
    assert info.error == f"skipbench_register_builders returned {type_name}, not a BlockBuilder"
    assert set(reg.builders) == set(load().builders)


def test_hook_returning_a_single_spec_instead_of_an_iterable_fails(tmp_path):
    write_plugin(tmp_path, "single", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builders():
            return skipbench.BlockBuilder("single", print)
    """)
    info = info_of(load(tmp_path), "single")
    assert info.status == "failed"
    assert info.error == ("skipbench_register_builders returned a BlockBuilder, not an iterable of BlockBuilder "
                          "(return a list, or yield them)")


def test_generator_hook_raising_typeerror_is_reported_as_raised(tmp_path):
    """A TypeError the plugin's own code raises is still its own: "raised TypeError"."""
    write_plugin(tmp_path, "gen", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_builders():
            yield skipbench.BlockBuilder("gen-block", print)
            raise TypeError("bad operand")
    """)
    info = info_of(load(tmp_path), "gen")
    assert info.error == "skipbench_register_builders raised TypeError: bad operand"


def test_dropin_named_like_a_builtin_fails_without_hurting_the_builtin(tmp_path):
    write_plugin(tmp_path, "plain", builder_plugin("imposter"))
    reg = load(tmp_path)
    failed = [i for i in reg.plugins.infos if i.status == "failed"]
    assert [(i.name, i.source) for i in failed] == [("plain", "dropin")]
    assert "already taken" in failed[0].error
    assert reg.builders["plain"].provider.distribution == "skipbench"
    assert "plain" in reg.variants and "imposter" not in reg.builders and not reg.notes


@pytest.mark.parametrize("source", [
    "raise RuntimeError('import-time boom')",
    builder_plugin("x") + """
        @skipbench.hookimpl
        def skipbench_register_variants():
            raise ValueError("hook boom")
    """,
])
def test_strict_makes_any_failure_raise(tmp_path, source):
    write_plugin(tmp_path, "fragile", source)
    with pytest.raises(PluginError, match="plugin 'fragile' \\(dropin\\) failed: .*boom"):
        load(tmp_path, strict=True)
    assert info_of(load(tmp_path), "fragile").status == "failed"  # not strict: reported only


# -- duplicates and replace -------------------------------------------------------------------
def test_duplicate_builder_sets_the_later_plugin_aside_naming_both(tmp_path):
    """The first loaded keeps the name; the later plugin fails as a whole, naming both files."""
    write_plugin(tmp_path, "first", builder_plugin("twin", variant="twin-a"))
    write_plugin(tmp_path, "second", builder_plugin("twin", variant="twin-b") + """
        @skipbench.hookimpl
        def skipbench_register_measurements():
            return [skipbench.Measurement("second-only", lambda cell: [])]
    """)
    reg = load(tmp_path)
    assert reg.builders["twin"].provider.plugin == "first" and "twin-a" in reg.variants
    second = info_of(reg, "second")
    assert second.status == "failed" and second.contributes == {}
    assert "twin-b" not in reg.variants and "second-only" not in reg.measurements
    assert second.error == (f"duplicate builder name 'twin': provided by first ({tmp_path / 'first.py'}) and by "
                            f"second ({tmp_path / 'second.py'}); the first loaded keeps it, this plugin is set aside "
                            f"(rename one, or set replace = true on the one that should win)")
    assert info_of(reg, "first").status == "ok"


def test_duplicate_of_a_builtin_builder_sets_the_plugin_aside(tmp_path):
    write_plugin(tmp_path, "mine", builder_plugin("highway"))
    reg = load(tmp_path)
    assert reg.builders["highway"].provider.plugin == "highway"
    assert info_of(reg, "mine").error.startswith(
        f"duplicate builder name 'highway': provided by highway (skipbench {skipbench.__version__}) and by mine (")


def test_duplicate_variant_sets_the_later_plugin_aside_with_its_builder(tmp_path):
    """A clash found at the variant stage drops the plugin's builders too."""
    write_plugin(tmp_path, "one", builder_plugin("b-one", variant="same"))
    write_plugin(tmp_path, "two", builder_plugin("b-two", variant="same"))
    reg = load(tmp_path)
    assert reg.variants["same"].provider.plugin == "one" and reg.variants["same"].builder == "b-one"
    two = info_of(reg, "two")
    assert two.status == "failed" and "b-two" not in reg.builders
    assert two.error.startswith("duplicate variant name 'same': provided by one (") and " and by two (" in two.error


def test_duplicate_measurement_sets_the_later_plugin_aside(tmp_path):
    write_plugin(tmp_path, "extra", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_measurements():
            return [skipbench.Measurement("identity", lambda cell: [])]
    """)
    reg = load(tmp_path)
    assert reg.measurements["identity"].provider.plugin == "measurements"
    assert info_of(reg, "extra").error.startswith("duplicate measurement name 'identity': provided by measurements (")


def test_duplicate_is_fatal_with_strict_plugins(tmp_path):
    write_plugin(tmp_path, "first", builder_plugin("twin"))
    write_plugin(tmp_path, "second", builder_plugin("twin"))
    with pytest.raises(PluginError, match=r"^plugin 'second' \(dropin\) failed: duplicate builder name 'twin'"):
        load(tmp_path, strict=True)


def test_set_aside_replacer_gives_the_name_back(tmp_path):
    """A plugin that replaced a built-in builder and is then set aside (its variant clashes)
    leaves the built-in builder in place."""
    write_plugin(tmp_path, "override", builder_plugin("plain", variant="highway", replace=False).replace(
        "replace=False)]\n", "replace=True)]\n", 1))
    reg = load(tmp_path)
    assert info_of(reg, "override").status == "failed"
    assert reg.builders["plain"].provider.plugin == "plain"
    assert reg.variants["highway"].provider.plugin.endswith("variants.toml")


def test_replace_true_overrides_a_builtin_builder(tmp_path):
    write_plugin(tmp_path, "override", builder_plugin("plain", replace=True))
    reg = load(tmp_path)
    builder = reg.builders["plain"]
    assert builder.provider.plugin == "override" and builder.replace
    torch.manual_seed(0)
    net = network.build(reg, reg.variants["plain"], depth=2, width=4)
    assert all(type(block) is torch.nn.Linear for block in net.blocks)  # the override's block, not Linear+ReLU


# -- blocking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["highway", "skipbench_plugins.highway"])
def test_block_builtin_by_plugin_or_module_name(name):
    reg = load(disabled=[name])
    assert info_of(reg, "highway").status == "blocked"
    assert "highway" not in reg.builders and "highway" not in reg.variants
    assert any("variant 'highway': skipped, builder 'highway' is not available" in n for n in reg.notes)
    assert {"plain", "residual", "dense"} <= set(reg.variants)


def test_block_builtins_by_distribution_name():
    reg = load(disabled=["skipbench"])
    assert {i.status for i in reg.plugins.infos} == {"blocked"}
    assert not reg.builders and not reg.variants and not reg.measurements
    with pytest.raises(UsageError, match="no variants are registered"):
        reg.select()


@pytest.mark.parametrize("how", ["plugin", "module", "distribution"])
def test_block_dropin_by_each_name(dropin_dir, how):
    name = {"plugin": "scaledplug", "module": "skipbench_dropin_scaledplug",
            "distribution": str(dropin_dir / "scaledplug.py")}[how]
    reg = load(dropin_dir, disabled=[name])
    assert info_of(reg, "scaledplug").status == "blocked"
    assert "scaled-residual" not in reg.builders and "scaled-quarter" not in reg.variants


def test_blocked_plugin_is_never_imported(tmp_path):
    write_plugin(tmp_path, "landmine", "raise RuntimeError('imported although blocked')")
    reg = load(tmp_path, disabled=["landmine"])
    assert info_of(reg, "landmine").status == "blocked" and not reg.plugins.failures()


def test_env_var_blocks_plugins(monkeypatch, dropin_dir):
    monkeypatch.setenv("SKIPBENCH_DISABLE_PLUGINS", "dense, scaledplug")
    monkeypatch.delenv("SKIPBENCH_PLUGINS_DIR", raising=False)
    reg = load_registry(entrypoints=False, env=True, pyproject=None, plugin_dirs=[str(dropin_dir)])
    assert info_of(reg, "dense").status == "blocked" and info_of(reg, "scaledplug").status == "blocked"
    assert "dense" not in reg.builders and "scaled-residual" not in reg.builders
    assert "highway" in reg.builders
    # env=False ignores the variable
    assert "dense" in load(dropin_dir).builders


def test_env_var_adds_plugin_dirs(monkeypatch, dropin_dir):
    monkeypatch.delenv("SKIPBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("SKIPBENCH_PLUGINS_DIR", str(dropin_dir))
    reg = load_registry(entrypoints=False, env=True, pyproject=None)
    assert "scaled-quarter" in reg.variants


def test_plugin_variant_with_an_unknown_builder_fails_only_its_plugin(tmp_path):
    """A plugin's variant naming a builder nobody provides fails that plugin; the rest load."""
    write_plugin(tmp_path, "orphan", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_variants():
            return [skipbench.Variant("orphan-variant", "no-such-builder")]
    """)
    reg = load(tmp_path)
    info = info_of(reg, "orphan")
    assert info.status == "failed" and "no-such-builder" in info.error
    assert "orphan-variant" not in reg.variants and {"plain", "residual", "dense", "highway"} <= set(reg.variants)


def test_plugin_variant_with_a_bad_last_block_fails_only_its_plugin(tmp_path):
    write_plugin(tmp_path, "badlast", """
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_variants():
            return [skipbench.Variant("bad-last", "plain", last_block={"activation": "softmax"})]
    """)
    reg = load(tmp_path)
    info = info_of(reg, "badlast")
    assert info.status == "failed" and "[last_block]" in info.error and "softmax" in info.error
    assert "bad-last" not in reg.variants and "plain" in reg.variants
