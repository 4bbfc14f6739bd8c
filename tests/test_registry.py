"""The declarative registry: TOML variants, their validation errors, duplicates and selection."""

from __future__ import annotations

import pkgutil
import textwrap

import pytest
import torch

import skipbench_plugins
from skipbench import network
from skipbench.registry import load_registry
from skipbench.specs import SpecError, UsageError

BUILTIN_BUILDERS = ["dense", "highway", "plain", "residual"]
BUILTIN_VARIANTS = ["dense", "dense-efficient", "highway", "plain", "residual", "residual-linear"]
HIGHWAY_PARAMS = "activation, bias, gate_bias, gate_init, init"

HIGHWAY_CLOSED = """
[variants.highway-closed]
builder = "highway"
params = { gate_bias = -3.0 }
network = { head = "linear" }
tags = ["gated", "closed"]
description = "highway, gates mostly closed at init"
"""


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


# the expectations below are about the four original families: the later built-in families are
# blocked, so that adding one does not move them
ORIGINAL_MODULES = {"dense", "highway", "measurements", "plain", "residual"}
LATER_MODULES = sorted({m.name for m in pkgutil.iter_modules(skipbench_plugins.__path__)
                        if not m.name.startswith("_")} - ORIGINAL_MODULES)


def load(**kwargs):
    """The original built-ins plus the given TOML sources; no entry points, no environment."""
    kwargs.setdefault("pyproject", None)
    kwargs["disabled"] = [*kwargs.get("disabled", ()), *LATER_MODULES]
    return load_registry(entrypoints=False, env=False, **kwargs)


def gate_means(reg, variant_name: str, seed: int = 0) -> list[float]:
    """Per-block mean highway gate of a depth-3, width-16 network on one N(0, 1) batch."""
    torch.manual_seed(seed)
    net = network.build(reg, reg.variants[variant_name], depth=3, width=16)
    with torch.no_grad():
        net(torch.randn(64, 16, generator=torch.Generator().manual_seed(1)))
    return [block.skipbench_probes()["gate_mean"] for block in net.blocks]


# -- loading ----------------------------------------------------------------------------------
def test_registry_fixture_has_the_four_builtins(registry):
    assert set(BUILTIN_VARIANTS) <= set(registry.variants)
    assert sorted(load().variants) == BUILTIN_VARIANTS
    assert {n: registry.builders[n].skip_kind for n in BUILTIN_BUILDERS} == {
        "dense": "concatenative", "highway": "gated", "plain": "none", "residual": "additive"}


def test_variants_file_adds_a_variant_that_builds(tmp_path):
    file = write(tmp_path / "mine.toml", HIGHWAY_CLOSED)
    reg = load(variant_files=[str(file)])
    variant = reg.variants["highway-closed"]
    assert variant.builder == "highway" and variant.tags == ("gated", "closed")
    assert variant.provider.plugin == str(file)
    assert reg.params_of(variant)["gate_bias"] == -3.0
    assert reg.params_of(variant)["gate_init"] == "xavier-seed"  # defaults filled in

    torch.manual_seed(0)
    net = network.build(reg, variant, depth=3, width=16)
    assert len(net.blocks) == 3 and isinstance(net.head, torch.nn.Linear)
    assert all(torch.all(block.gate.bias == -3.0) for block in net.blocks)
    closed, default = gate_means(reg, "highway-closed"), gate_means(reg, "highway")
    assert all(c < d for c, d in zip(closed, default))


def test_int_value_for_a_float_param_is_accepted(tmp_path):
    file = write(tmp_path / "v.toml", '[variants.hw3]\nbuilder = "highway"\nparams = { gate_bias = -3 }\n')
    reg = load(variant_files=[file])
    value = reg.params_of(reg.variants["hw3"])["gate_bias"]
    assert value == -3.0 and type(value) is float


def test_pyproject_tool_table_adds_variants(tmp_path):
    pyproject = write(tmp_path / "pyproject.toml", """
        [project]
        name = "my-study"

        [tool.skipbench.variants.residual-identity]
        builder = "residual"
        params = { activation = "identity", order = "branch-only" }
        tags = ["theory"]
    """)
    reg = load(pyproject=pyproject)
    variant = reg.variants["residual-identity"]
    assert reg.params_of(variant)["activation"] == "identity"
    assert variant.provider.plugin == str(pyproject)
    torch.manual_seed(0)
    net = network.build(reg, variant, depth=4, width=8)
    x = torch.randn(3, 8)
    # no activation anywhere: the network is linear in its input
    torch.testing.assert_close(net(2 * x) - net(torch.zeros_like(x)), 2 * (net(x) - net(torch.zeros_like(x))))


def test_pyproject_without_tool_table_adds_nothing(tmp_path):
    pyproject = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert sorted(load(pyproject=pyproject).variants) == BUILTIN_VARIANTS


def test_missing_pyproject_is_ignored(tmp_path):
    assert sorted(load(pyproject=tmp_path / "pyproject.toml").variants) == BUILTIN_VARIANTS


# -- validation errors ------------------------------------------------------------------------
BAD_ENTRIES = {
    "unknown builder": ('builder = "highwy"',
                        ["unknown builder 'highwy'", "available: dense, highway, plain, residual"]),
    "unknown param": ('builder = "highway"\nparams = { gate_bais = -3.0 }',
                      ["unknown parameter 'gate_bais'", f"allowed: {HIGHWAY_PARAMS}"]),
    "mistyped param": ('builder = "highway"\nparams = { gate_bias = "-3" }',
                       ["gate_bias must be a float", "got '-3' (str)"]),
    "bool param given an int": ('builder = "highway"\nparams = { bias = 1 }', ["bias must be a bool", "got 1 (int)"]),
    "bad choice": ('builder = "highway"\nparams = { activation = "swish" }',
                   ["activation='swish' is not allowed", "'relu', 'gelu', 'tanh', 'identity'"]),
    "unknown entry key": ('builder = "highway"\nparamz = { gate_bias = -3.0 }',
                          ["unknown key 'paramz'", "allowed: builder, params, network, last_block, tags, description, replace"]),
    "bad network option": ('builder = "highway"\nnetwork = { head = "conv" }',
                           ["[network]", "head='conv' is not allowed", "'auto', 'none', 'linear'"]),
    "unknown network key": ('builder = "highway"\nnetwork = { tail = "linear" }',
                            ["[network]", "unknown parameter 'tail'", "allowed: dtype, head, head_init, stem, stem_init"]),
    "tags not a list": ('builder = "highway"\ntags = "gated"', ["key 'tags' must be a list"]),
    "params not a table": ('builder = "highway"\nparams = 3', ["key 'params' must be a dict"]),
    "missing builder": ('params = {}', ["missing key 'builder'"]),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_invalid_variant_names_file_entry_key_and_allowed(tmp_path, case):
    body, fragments = BAD_ENTRIES[case]
    file = write(tmp_path / "bad.toml", f"[variants.oops]\n{body}\n")
    with pytest.raises(SpecError) as info:
        load(variant_files=[str(file)])
    message = str(info.value)
    assert message.startswith(f"{file}: variant 'oops': ")
    for fragment in fragments:
        assert fragment in message


def test_invalid_pyproject_variant_names_the_pyproject(tmp_path):
    pyproject = write(tmp_path / "pyproject.toml", '[tool.skipbench.variants.oops]\nbuilder = "nope"\n')
    with pytest.raises(SpecError, match=r"pyproject\.toml \[tool\.skipbench\]: variant 'oops': unknown builder 'nope'"):
        load(pyproject=pyproject)


@pytest.mark.parametrize("text, fragment", [
    ('[variant.oops]\nbuilder = "plain"\n', "unknown table 'variant'; allowed: variants"),
    ('variants = 3\n', "'variants' must be a table"),
    ('[variants]\noops = "plain"\n', "variant 'oops': must be a table"),
    ('[variants."bad name"]\nbuilder = "plain"\n', "invalid variant name 'bad name'"),
])
def test_malformed_variants_tables(tmp_path, text, fragment):
    file = write(tmp_path / "v.toml", text)
    with pytest.raises(SpecError) as info:
        load(variant_files=[file])
    assert str(file) in str(info.value) and fragment in str(info.value)


def test_malformed_toml_names_the_file_and_line(tmp_path):
    file = write(tmp_path / "broken.toml", '[variants.x]\nbuilder = "plain\n')
    with pytest.raises(UsageError) as info:
        load(variant_files=[file])
    assert str(file) in str(info.value) and "malformed TOML" in str(info.value) and "line 2" in str(info.value)


def test_undecodable_toml_is_a_usage_error(tmp_path):
    file = tmp_path / "latin1.toml"
    file.write_bytes(b'[variants.x]\ndescription = "caf\xe9"\n')
    with pytest.raises(UsageError, match="malformed TOML"):
        load(variant_files=[file])


def test_missing_variants_file(tmp_path):
    with pytest.raises(UsageError, match=r"variants file '.*nothere\.toml' does not exist"):
        load(variant_files=[tmp_path / "nothere.toml"])


def test_directory_as_variants_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        load(variant_files=[tmp_path])


# -- duplicates -------------------------------------------------------------------------------
def test_duplicate_of_packaged_variant_is_set_aside_with_a_warning_naming_both(tmp_path):
    """The packaged variant keeps the name; the file's clashing entry is skipped, its others load."""
    file = write(tmp_path / "dup.toml", '[variants.highway]\nbuilder = "highway"\nparams = { gate_bias = -1.0 }\n'
                 + HIGHWAY_CLOSED)
    reg = load(variant_files=[file])
    assert reg.variants["highway"].provider.plugin == "skipbench_plugins/variants.toml"
    assert "highway-closed" in reg.variants
    assert reg.warnings == [
        f"{file}: variant 'highway': duplicate variant name 'highway': provided by skipbench_plugins/variants.toml "
        f"(skipbench) and by {file}; the first loaded keeps it, this entry is set aside (rename one, or set "
        f"replace = true on the one that should win)"]


def test_duplicate_in_a_variants_file_is_fatal_with_strict_plugins(tmp_path):
    file = write(tmp_path / "dup.toml", '[variants.highway]\nbuilder = "highway"\n')
    with pytest.raises(SpecError, match=r"variant 'highway': duplicate variant name 'highway': provided by "
                                        r"skipbench_plugins/variants.toml \(skipbench\) and by .*dup.toml"):
        load(variant_files=[file], strict=True)


def test_replace_true_overrides_packaged_variant(tmp_path):
    file = write(tmp_path / "dup.toml",
                 '[variants.highway]\nbuilder = "highway"\nparams = { gate_bias = -1.0 }\nreplace = true\n')
    reg = load(variant_files=[file])
    assert reg.params_of(reg.variants["highway"])["gate_bias"] == -1.0
    assert reg.variants["highway"].provider.plugin == str(file)
    assert sorted(reg.variants) == BUILTIN_VARIANTS


def test_duplicate_between_pyproject_and_variants_file(tmp_path):
    pyproject = write(tmp_path / "pyproject.toml", HIGHWAY_CLOSED.replace("[variants.", "[tool.skipbench.variants."))
    file = write(tmp_path / "more.toml", HIGHWAY_CLOSED)
    reg = load(pyproject=pyproject, variant_files=[file])
    assert reg.variants["highway-closed"].provider.plugin == str(pyproject)  # pyproject is read first
    (warning,) = reg.warnings
    assert f"provided by {pyproject} and by {file}" in warning


def test_plugin_variant_may_replace_a_packaged_one(tmp_path):
    (tmp_path / "plugs").mkdir()
    source = textwrap.dedent("""
        import skipbench

        @skipbench.hookimpl
        def skipbench_register_variants():
            return [skipbench.Variant("plain", "plain", params={"activation": "tanh"}, replace=REPLACE)]
    """)
    write(tmp_path / "plugs" / "tanhplain.py", source.replace("REPLACE", "True"))
    reg = load(plugin_dirs=[tmp_path / "plugs"])
    assert reg.params_of(reg.variants["plain"])["activation"] == "tanh"
    write(tmp_path / "plugs" / "tanhplain.py", source.replace("REPLACE", "False"))
    reg = load(plugin_dirs=[tmp_path / "plugs"])
    assert reg.params_of(reg.variants["plain"])["activation"] == "relu"
    (info,) = [i for i in reg.plugins.infos if i.name == "tanhplain"]
    assert info.status == "failed"
    assert info.error.startswith("duplicate variant name 'plain': provided by skipbench_plugins/variants.toml "
                                 "(skipbench) and by tanhplain (")


# -- blocked builders -------------------------------------------------------------------------
def test_packaged_variants_of_blocked_builders_are_skipped_with_a_note():
    reg = load(disabled=["skipbench_plugins.residual", "dense"])
    assert sorted(reg.variants) == ["highway", "plain"]
    # (the later families, blocked by load(), are skipped the same way)
    assert sorted(n for n in reg.notes if "builder 'dense'" in n or "builder 'residual'" in n) == [
        "skipbench_plugins/variants.toml: variant 'dense': skipped, builder 'dense' is not available",
        "skipbench_plugins/variants.toml: variant 'dense-efficient': skipped, builder 'dense' is not available",
        "skipbench_plugins/variants.toml: variant 'residual': skipped, builder 'residual' is not available",
        "skipbench_plugins/variants.toml: variant 'residual-linear': skipped, builder 'residual' is not available",
    ]


def test_user_variant_of_a_blocked_builder_is_an_error(tmp_path):
    file = write(tmp_path / "mine.toml", HIGHWAY_CLOSED)
    with pytest.raises(SpecError, match="variant 'highway-closed': unknown builder 'highway'; available: dense, plain, residual"):
        load(disabled=["highway"], variant_files=[file])


# -- selection --------------------------------------------------------------------------------
@pytest.fixture
def with_closed(tmp_path):
    return load(variant_files=[write(tmp_path / "mine.toml", HIGHWAY_CLOSED)])


def test_select_all_when_nothing_given(with_closed):
    assert [v.name for v in with_closed.select()] == list(with_closed.variants)


def test_select_wildcard(with_closed):
    assert [v.name for v in with_closed.select(["h*"])] == ["highway", "highway-closed"]
    assert [v.name for v in with_closed.select(["*-*", "?lain"])] == ["dense-efficient", "highway-closed", "residual-linear", "plain"]


def test_select_is_deduplicated_in_pattern_order(with_closed):
    assert [v.name for v in with_closed.select(["plain", "h*", "highway"])] == ["plain", "highway", "highway-closed"]


def test_select_by_tags(with_closed):
    assert [v.name for v in with_closed.select(tags=["gated"])] == ["highway", "highway-closed"]
    assert [v.name for v in with_closed.select(tags=["gated", "closed"])] == ["highway-closed"]
    assert [v.name for v in with_closed.select(["h*", "plain"], tags=["baseline"])] == ["plain"]


def test_select_unknown_name_lists_available(with_closed):
    with pytest.raises(UsageError) as info:
        with_closed.select(["plain", "higway"])
    assert str(info.value) == ("unknown variant 'higway'; available: "
                               "dense, dense-efficient, highway, highway-closed, plain, residual, residual-linear")


def test_select_unknown_tag_lists_known_tags(with_closed):
    with pytest.raises(UsageError) as info:
        with_closed.select(tags=["skippy"])
    assert "no variant has tag(s) skippy" in str(info.value)
    assert "known tags: additive, baseline, closed, concatenative, gated" in str(info.value)


def test_unknown_measurement_lists_available(registry):
    assert registry.measurement("params").name == "params"
    with pytest.raises(UsageError, match="unknown measurement 'nope'; available: gradient-flow, identity, params"):
        registry.measurement("nope")
