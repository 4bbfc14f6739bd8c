"""The frozen specs plugins return: Param coercion, validation errors, immutability."""

from __future__ import annotations

import dataclasses

import pytest

from skipbench.specs import (
    NETWORK_PARAMS,
    BlockBuilder,
    Measurement,
    Param,
    Provider,
    SpecError,
    UsageError,
    Variant,
    resolve_params,
    stamped,
)


def _build(in_dim, **params):
    return None


def _run(cell):
    return []


# -- Param ------------------------------------------------------------------------------------
@pytest.mark.parametrize("type_, value", [("int", 3), ("float", 2.5), ("str", "x"), ("bool", False)])
def test_param_accepts_its_own_type(type_, value):
    param = Param("p", type_, value)
    assert param.coerce(value) == value
    assert type(param.coerce(value)) is type(value)


@pytest.mark.parametrize("type_, default, bad", [
    ("int", 1, "3"), ("int", 1, 2.0), ("float", 1.0, "1.5"), ("str", "a", 1), ("bool", True, 1), ("bool", True, "yes"),
])
def test_param_rejects_wrong_type_naming_param_type_and_value(type_, default, bad):
    with pytest.raises(SpecError) as info:
        Param("depth_scale", type_, default).coerce(bad, where="file.toml: variant 'v'")
    message = str(info.value)
    assert message.startswith("file.toml: variant 'v': ")
    expected = {"int": "must be an int", "float": "must be a float", "str": "must be a str", "bool": "must be a bool"}[type_]
    assert "depth_scale" in message and expected in message and repr(bad) in message


@pytest.mark.parametrize("type_", ["int", "float"])
def test_bool_is_not_a_number(type_):
    param = Param("n", type_, 1)
    for value in (True, False):
        with pytest.raises(SpecError, match="got (True|False) \\(bool\\)"):
            param.coerce(value)


def test_int_is_accepted_for_float_and_becomes_float():
    param = Param("gate_bias", "float", -2.0)
    value = param.coerce(-3)
    assert value == -3.0 and type(value) is float


def test_int_default_of_float_param_is_stored_as_float():
    param = Param("scale", "float", 1)
    assert type(param.default) is float and param.default == 1.0
    assert type(resolve_params((param,), {}, "here")["scale"]) is float


def test_choices_are_enforced_and_listed():
    param = Param("order", "str", "pre", ("pre", "post", "branch-only"))
    assert param.coerce("post") == "post"
    with pytest.raises(SpecError) as info:
        param.coerce("middle")
    message = str(info.value)
    assert "'middle'" in message
    for choice in ("'pre'", "'post'", "'branch-only'"):
        assert choice in message


def test_float_choices_accept_equal_int():
    param = Param("s", "float", 0.5, (0.5, 1.0))
    assert param.coerce(1) == 1.0
    with pytest.raises(SpecError, match="not allowed"):
        param.coerce(2)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="bad name", type="int", default=1), "invalid parameter name"),
    (dict(name="_hidden", type="int", default=1), "invalid parameter name"),
    (dict(name="p", type="complex", default=1), "is not one of bool, int, float, str"),
    (dict(name="p", type="int", default="one"), "default of parameter 'p'"),
    (dict(name="p", type="str", default="c", choices=("a", "b")), "default of parameter 'p'"),
    (dict(name="p", type="str", default="a", choices=("a", 2)), "choice of parameter 'p'"),
])
def test_param_declaration_errors(kwargs, fragment):
    with pytest.raises(SpecError, match=fragment):
        Param(**kwargs)


def test_param_choices_list_becomes_tuple_and_describe_shows_them():
    param = Param("act", "str", "relu", ["relu", "tanh"])
    assert param.choices == ("relu", "tanh")
    assert param.describe() == "act='relu' (relu|tanh)"


def test_spec_error_is_a_usage_error():
    assert issubclass(SpecError, UsageError)


# -- resolve_params ---------------------------------------------------------------------------
SCHEMA = (Param("alpha", "float", 1.0), Param("mode", "str", "a", ("a", "b")), Param("n", "int", 2))


def test_resolve_params_fills_defaults_and_coerces():
    assert resolve_params(SCHEMA, {"alpha": 3, "n": 5}, "x") == {"alpha": 3.0, "mode": "a", "n": 5}


def test_resolve_params_unknown_key_lists_allowed():
    with pytest.raises(SpecError) as info:
        resolve_params(SCHEMA, {"alpah": 2.0}, "vars.toml: variant 'v'")
    message = str(info.value)
    assert message.startswith("vars.toml: variant 'v': unknown parameter 'alpah'")
    assert "allowed: alpha, mode, n" in message


def test_resolve_params_with_empty_schema_says_none_allowed():
    with pytest.raises(SpecError, match="allowed: none"):
        resolve_params((), {"x": 1}, "here")


# -- BlockBuilder -----------------------------------------------------------------------------
def test_block_builder_normalizes_sequences():
    builder = BlockBuilder("b", _build, [Param("k", "int", 1)], probes=["gate"])
    assert builder.params == (Param("k", "int", 1),) and builder.probes == ("gate",)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="has space"), "invalid builder name"),
    (dict(build="not callable"), "build must be callable"),
    (dict(params=({"name": "k"},)), "params must be Param instances"),
    (dict(layers_per_block=0), "layers_per_block must be a positive int"),
    (dict(layers_per_block=1.0), "layers_per_block must be a positive int"),
    (dict(layers_per_block=True), "layers_per_block must be a positive int"),
    (dict(skip_kind="sideways"), "skip_kind 'sideways' is not one of none, additive"),
    (dict(probes="gate_mean"), "probes must be a tuple of names"),
])
def test_block_builder_validation(kwargs, fragment):
    args = dict(name="b", build=_build) | kwargs
    with pytest.raises(SpecError, match=fragment):
        BlockBuilder(**args)


# -- Variant ----------------------------------------------------------------------------------
def test_variant_network_options_get_defaults():
    variant = Variant("v", "plain", network={"head": "linear"})
    assert dict(variant.network) == {p.name: p.default for p in NETWORK_PARAMS} | {"head": "linear"}


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="no/slash"), "invalid variant name"),
    (dict(builder=""), "invalid builder name"),
    (dict(tags="gated"), "tags must be a list of strings"),
    (dict(tags=("ok", 3)), "tags must be a list of strings"),
    (dict(network={"head": "conv"}), r"variant 'v' \[network\]: head='conv' is not allowed"),
    (dict(network={"tail": "linear"}), r"unknown parameter 'tail'; allowed: dtype, head, head_init, stem, stem_init"),
])
def test_variant_validation(kwargs, fragment):
    args = dict(name="v", builder="plain") | kwargs
    with pytest.raises(SpecError, match=fragment):
        Variant(**args)


def test_variant_params_are_a_read_only_copy():
    source = {"gate_bias": -3.0}
    variant = Variant("v", "highway", params=source)
    source["gate_bias"] = 5.0
    assert variant.params["gate_bias"] == -3.0
    with pytest.raises(TypeError):
        variant.params["gate_bias"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        variant.network["head"] = "none"  # type: ignore[index]


def test_variant_is_hashable():
    assert len({Variant("v", "plain"), Variant("v", "plain")}) == 1


# -- Measurement ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name=""), "invalid measurement name"),
    (dict(run=42), "run must be callable"),
    (dict(options=("rows",)), "options must be Param instances"),
    (dict(applies=True), "applies must be callable"),
])
def test_measurement_validation(kwargs, fragment):
    args = dict(name="m", run=_run) | kwargs
    with pytest.raises(SpecError, match=fragment):
        Measurement(**args)


def test_measurement_applies_to():
    gated = BlockBuilder("g", _build, probes=("gate_mean",))
    plain = BlockBuilder("p", _build)
    everywhere = Measurement("all", _run)
    probes_only = Measurement("probes", _run, applies=lambda b: bool(b.probes))
    assert everywhere.applies_to(plain) and everywhere.applies_to(gated)
    assert probes_only.applies_to(gated) and not probes_only.applies_to(plain)


# -- frozen-ness and stamping -----------------------------------------------------------------
@pytest.mark.parametrize("spec, field_name", [
    (Param("p", "int", 1), "default"),
    (BlockBuilder("b", _build), "layers_per_block"),
    (Variant("v", "plain"), "builder"),
    (Measurement("m", _run), "seeded"),
    (Provider("x"), "version"),
])
def test_specs_are_frozen(spec, field_name):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(spec, field_name, 2)


def test_stamped_returns_a_copy_with_provider():
    builder = BlockBuilder("b", _build)
    provider = Provider("myplug", "skipbench-myplug", "0.3")
    copy = stamped(builder, provider)
    assert copy.provider == provider and builder.provider is None
    assert str(provider) == "myplug (skipbench-myplug 0.3)"
    assert str(Provider("dropin")) == "dropin"


def test_variant_pickles_and_copies():
    """Worker processes receive variants by pickle; the read-only mappings must survive it."""
    import copy
    import pickle

    variant = Variant("hw", "highway", params={"gate_bias": -3.0}, network={"head": "linear"}, tags=("gated",),
                      provider=Provider("f.toml"), replace=True)
    for clone in (pickle.loads(pickle.dumps(variant)), copy.deepcopy(variant)):
        assert clone == variant and clone.provider == variant.provider and clone.replace
        with pytest.raises(TypeError):
            clone.params["gate_bias"] = 0.0  # type: ignore[index]
