"""Property-based fuzz of the TOML documents users write, variants files (``--variants FILE``)
and profiles (``--profile FILE``), against the bad-input policy: a document either loads and
plans a run with tasks, or is refused with a UsageError whose message is one line. Any other
exception, a message of several lines or a loaded document that plans nothing fails the test,
and hypothesis reports the document.

Each kind is generated in three families: valid (built from the registry's real schema: builder
and parameter names, values in range, network options, measurements and their options, metrics,
prediction expressions, experiments, published values and figures), almost valid (a valid
document with one or two mutations: a key dropped, renamed or unknown, a wrong type, an edge
number, an empty value, a wildcard that matches nothing, a duplicate, a bad expression) and
nonsense (arbitrary TOML values under real and random keys, arbitrary text and bytes, truncated
and undecodable documents, deep nesting). Every document goes through the entry points the CLI
uses, with a fresh registry of the built-ins, and a few go through the real CLI. Deterministic:
derandomized, without an example database.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from skipbench import grid
from skipbench.engine.cell import MODES
from skipbench.expressions import EXPRESSION_FUNCTIONS, SETTING_NAMES
from skipbench.registry import VARIANT_KEYS, load_registry
from skipbench.specs import NETWORK_PARAMS, PREDICTION_KEYS, Provider, UsageError
from conftest import clean_env

# documents per kind and family: at least 2,000 in all
EXAMPLES = {("variants", "valid"): 300, ("variants", "almost valid"): 400, ("variants", "nonsense"): 300,
            ("profile", "valid"): 300, ("profile", "almost valid"): 400, ("profile", "nonsense"): 300}
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def fresh_registry(**kwargs):
    """A registry of the built-ins only (as the conftest fixture), new for every document so that
    the variants one registers cannot leak into the next."""
    return load_registry(entrypoints=False, env=False, pyproject=None, **kwargs)


SCHEMA = fresh_registry()  # the real schema the valid documents follow
BUILDERS = sorted(SCHEMA.builders.values(), key=lambda b: b.name)
BUILTIN_VARIANTS = sorted(SCHEMA.variants)
BUILTIN_TAGS = sorted({t for v in SCHEMA.variants.values() for t in v.tags})
MEASUREMENTS = sorted(SCHEMA.measurements)
METRICS = sorted((m.name, metric) for m in SCHEMA.measurements.values() for metric in m.metrics)
FIGURE_KINDS = next(p.choices for p in grid.FIGURE_PARAMS if p.name == "kind")


# -- TOML text ----------------------------------------------------------------------------------
def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's; TOML also wants DEL escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value) -> str:
    """`value` as an inline TOML value (tables inline, keys quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_bytes(document: dict) -> bytes:
    """A TOML file holding `document`, one top-level key a line."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in document.items()).encode()


# -- valid documents: the real schema -----------------------------------------------------------
# free text from a few characters of each kind (sampling them is much cheaper than all of Unicode)
TEXT = st.text(st.sampled_from("aZ09 -_.,:/*?[]{}#='\"\\\n\r\t\x00\x1b\x7f\x85é€\u2028😀"), max_size=12)
LOWER = "abcdefghijklmnopqrstuvwxyz"
FRESH_NAMES = st.text(LOWER + "0123456789-", max_size=8).map(lambda s: f"fz-{s}")
TAGS = st.sampled_from(BUILTIN_TAGS) | st.text(LOWER, min_size=1, max_size=8)
UNARY_FUNCTIONS = sorted(set(EXPRESSION_FUNCTIONS) - {"min", "max"})


def accepted(param) -> st.SearchStrategy:
    """A value the declared parameter (specs.Param) accepts."""
    if param.choices:
        return st.sampled_from(param.choices)
    if param.type == "bool":
        return st.booleans()
    if param.type == "str":
        return TEXT
    low = -4 if param.minimum is None else param.minimum
    return st.integers(int(low), int(low) + 64) if param.type == "int" else st.floats(low, low + 8)


def tables(schema) -> st.SearchStrategy[dict]:
    """Tables setting some of the parameters of `schema` to accepted values."""
    return st.fixed_dictionaries({}, optional={p.name: accepted(p) for p in schema})


def expressions(names: list[str]) -> st.SearchStrategy[str]:
    """Arithmetic expressions of `names`, numbers, the operators and the allowed functions."""
    leaves = st.sampled_from(names) | st.integers(0, 9).map(str) | st.floats(0.125, 8).map(lambda x: f"{x:.3g}")

    def extend(inner):
        operators = st.sampled_from(["+", "-", "*", "/", "**"])
        return (st.tuples(inner, operators, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
                | st.tuples(st.sampled_from(UNARY_FUNCTIONS), inner).map(lambda t: f"{t[0]}({t[1]})")
                | st.tuples(st.sampled_from(["min", "max"]), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})")
                | inner.map(lambda e: f"-{e}"))

    return st.recursive(leaves, extend, max_leaves=5)


def predictions(builder) -> st.SearchStrategy[dict]:
    """A [[variants.NAME.predictions]] table of a metric a measurement records."""
    names = [*SETTING_NAMES, *(p.name for p in builder.params if p.type != "str")]
    rest = st.fixed_dictionaries({"expression": expressions(names)}, optional={
        "moment": st.sampled_from([1, 2]), "index": st.integers(0, 8), "formula": TEXT, "source": TEXT})
    return st.tuples(st.sampled_from(METRICS), st.booleans(), rest).map(
        lambda t: {"metric": t[0][1], **({"measurement": t[0][0]} if t[1] else {}), **t[2]})


def variant_entries(builder) -> st.SearchStrategy[dict]:
    """A [variants.NAME] table of `builder` with every optional key of the format."""
    return st.fixed_dictionaries({"builder": st.just(builder.name)}, optional={
        "params": tables(builder.params), "last_block": tables(builder.params), "network": tables(NETWORK_PARAMS),
        "tags": st.lists(TAGS, max_size=3), "description": TEXT, "replace": st.booleans(),
        "predictions": st.lists(predictions(builder), max_size=2)})


ENTRIES = st.one_of([variant_entries(b) for b in BUILDERS])  # built once: strategies are costly to make


@st.composite
def variant_tables(draw) -> dict:
    """A `variants` table: new names, or a built-in variant's name with replace = true."""
    names = draw(st.lists(FRESH_NAMES | st.sampled_from(BUILTIN_VARIANTS), min_size=1, max_size=3, unique=True))
    table = {}
    for name in names:
        entry = draw(ENTRIES)
        table[name] = {**entry, "replace": True} if name in SCHEMA.variants else entry
    return table


GRID = {
    # a measurement that applies to every builder, so that every selection has tasks
    "measurements": st.lists(st.sampled_from(MEASUREMENTS), min_size=1, max_size=3, unique=True).map(
        lambda names: names if set(names) != {"probes"} else [*names, "params"]),
    "depths": st.lists(st.integers(2, 12), min_size=1, max_size=3),
    "width": st.integers(1, 64),
    "batch": st.integers(1, 64),
    "options": st.fixed_dictionaries({}, optional={m.name: tables(m.options) for m in SCHEMA.measurements.values()}),
    "mode": st.sampled_from(MODES),
    "widths": st.lists(st.integers(1, 64), min_size=1, max_size=2),  # a table gives width or widths
}


def one_width_key(table: dict) -> dict:
    """`table` with `width` or `widths`, not both (widths wins)."""
    return {k: v for k, v in table.items() if k != "width" or "widths" not in table}


# the strategies below are made once (making one costs more than drawing from it); what refers to
# names known only while drawing (variants, experiments, tags) draws PICK, an index into them
PICK = st.integers(0, 99)
METRIC_NAMES = st.sampled_from(sorted({m for _, m in METRICS}))
PATTERN = st.tuples(PICK, st.integers(0, 2))  # a variant, as its name or a wildcard that matches it
EXPERIMENT = st.fixed_dictionaries({}, optional={**GRID, "description": TEXT, "network": tables(NETWORK_PARAMS)})
SELECTION = st.one_of(st.fixed_dictionaries({"variants": st.lists(PATTERN, min_size=1, max_size=3)}),
                      st.fixed_dictionaries({"tags": st.lists(PICK, min_size=1, max_size=1)}))
PUBLISHED = st.fixed_dictionaries(
    {"variant": PICK, "metric": METRIC_NAMES, "value": st.floats(allow_nan=False, allow_infinity=False)},
    optional={"experiment": PICK, "depth": st.integers(0, 16), "label": TEXT,
              "also": st.lists(METRIC_NAMES, max_size=2)})
FIGURE = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(FIGURE_KINDS), "name": FRESH_NAMES, "title": TEXT, "metric": METRIC_NAMES,
    "depths": st.lists(st.integers(1, 16), max_size=3), "experiment": PICK, "experiments": st.lists(PICK, max_size=2)})
PROFILE = st.fixed_dictionaries({}, optional={**GRID, "description": TEXT, "seeds": st.integers(1, 4),
                                              "seed_start": st.integers(0, 10**6)})


def picked(entry: dict, names: dict[str, list[str]]) -> dict:
    """`entry` with the PICKed indices under each key of `names` turned into those names (a
    PATTERN into a name or a wildcard); a key whose names are none is dropped."""
    def name(key, pick):
        if key != "variants":
            return names[key][pick % len(names[key])]
        full = names[key][pick[0] % len(names[key])]
        return [full, f"{full}*", f"{full[:max(1, len(full) // 2)]}*"][pick[1]]

    out = {k: v for k, v in entry.items() if k not in names}
    for key in set(entry) & set(names):
        if names[key]:
            out[key] = [name(key, p) for p in entry[key]] if isinstance(entry[key], list) else name(key, entry[key])
    return out


@st.composite
def experiment_lists(draw, variants: list[str], tags: list[str]) -> list[dict]:
    """[[experiments]] with distinct names (one alone may have none), grid keys, network options,
    each selecting its variants by name patterns or by a tag."""
    names = draw(st.lists(st.text(min_size=1, max_size=10), max_size=3, unique=True))
    out = [{"name": name, **one_width_key(draw(EXPERIMENT)),
            **picked(draw(SELECTION), {"variants": variants, "tags": tags})} for name in names]
    if len(out) == 1 and draw(st.booleans()):
        del out[0]["name"]
    return out


@st.composite
def valid_profiles(draw) -> tuple[dict, bool]:
    """(profile, select_all): a profile of every key, and whether its run needs --all (an
    experiment, or the whole profile, that selects no variants itself)."""
    doc = one_width_key(draw(PROFILE))
    own = draw(st.just({}) | variant_tables())
    variants = sorted(set(BUILTIN_VARIANTS) | set(own))
    tags = sorted({t for name, v in SCHEMA.variants.items() if name not in own for t in v.tags}
                  | {t for entry in own.values() for t in entry.get("tags", [])})
    experiments = draw(experiment_lists(variants, tags))
    names = {"variant": variants, "experiment": [e["name"] for e in experiments if "name" in e]}
    names["experiments"] = names["experiment"]
    extra = {"variants": own, "experiments": experiments,
             "published": [picked(e, names) for e in draw(st.lists(PUBLISHED, max_size=2))],
             "figures": [picked(e, names) for e in draw(st.lists(FIGURE, max_size=2))]}
    doc.update({k: v for k, v in extra.items() if v})
    select_all = not experiments or not all("variants" in e or "tags" in e for e in experiments)
    return doc, select_all


VALID = {"variants": st.tuples(variant_tables().map(lambda t: {"variants": t}), st.booleans()),
         "profile": valid_profiles()}


# -- almost valid: one or two mutations ---------------------------------------------------------
REAL_KEYS = sorted({*grid.PROFILE_KEYS, *grid.EXPERIMENT_KEYS, *VARIANT_KEYS, *PREDICTION_KEYS, *MEASUREMENTS,
                    *(p.name for b in BUILDERS for p in b.params), *(p.name for p in NETWORK_PARAMS)})
KEYS = st.sampled_from(REAL_KEYS) | TEXT
SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), TEXT,
                    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)), st.dates(), st.times())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=8)
EDGE_NUMBERS = [-1, 0, -2**63, 2**63 - 1, 2**31, 10**9, 10**8, 1e308, -1e308, math.inf, -math.inf, math.nan, -0.0,
                0.5, 5e-324]
BAD_EXPRESSIONS = st.one_of(
    st.sampled_from(["", " ", "depth +", "1 +* 2", "__import__('os')", "depth.real", "lambda: 1", "nope(1)", "sqrt()",
                     "depth if width else 1", "'a'", "[1, 2]", "1 < 2", "not depth", "f'{depth}'", "unknown * 2",
                     "1\x00", "max(*depth)", "sqrt(x=1)", "1j", "True", "depth ** ** 2", "depth\n+ 1", "'''\n'''"]),
    # nested deep: ---1, (((1))), sqrt(sqrt(1)), 1 + 1 + 1
    st.tuples(st.sampled_from(["-", "(", "sqrt(", "1 + "]), st.sampled_from([100, 1000, 5000])).map(
        lambda t: t[0] * t[1] + "1" + ")" * (t[1] if "(" in t[0] else 0)),
    TEXT)

# a name (of a variant, tag, measurement, experiment) that matches nothing: a wildcard, a line break
UNKNOWN_NAMES = st.sampled_from(["zz-*", "zz?", "[!a-z]*", "zz\nzz", "zz\rzz", "zz\u2028"]) | TEXT


def value_at(doc, path: tuple):
    """The value at `path` (keys and indices) in `doc`."""
    for key in path:
        doc = doc[key]
    return doc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _drop(draw, parent, key) -> None:
    del parent[key]


def _rename(draw, parent, key) -> None:
    parent[draw(st.sampled_from([f"{key}s", key.upper(), key[:-1], f"_{key}"]) | TEXT)] = parent.pop(key)


def _add_key(draw, parent, key) -> None:
    parent[key][draw(KEYS)] = draw(VALUES)


def _duplicate(draw, parent, key) -> None:
    twin = copy.deepcopy(parent[key])
    if isinstance(parent, list):
        parent.append(twin)
    else:  # under a taken name: a built-in variant's, a measurement's
        parent[draw(st.sampled_from(BUILTIN_VARIANTS + MEASUREMENTS))] = twin


def _replace(values: st.SearchStrategy):
    def replace(draw, parent, key) -> None:
        parent[key] = draw(values)
    return replace


# name -> (which locations it applies to: (path, value) -> bool, mutate(draw, parent, key))
MUTATIONS = {
    "drop a key": (lambda path, value: True, _drop),
    "rename a key": (lambda path, value: isinstance(path[-1], str), _rename),
    "unknown key": (lambda path, value: isinstance(value, dict), _add_key),
    "wrong type": (lambda path, value: True, _replace(VALUES)),
    "edge number": (lambda path, value: _is_number(value), _replace(st.sampled_from(EDGE_NUMBERS))),
    "empty": (lambda path, value: isinstance(value, (list, dict, str)), _replace(st.sampled_from([[], {}, ""]))),
    "name in a list matching nothing": (lambda path, value: isinstance(value, str) and isinstance(path[-1], int),
                                        _replace(UNKNOWN_NAMES)),
    "duplicate": (lambda path, value: isinstance(value, (dict, str)), _duplicate),
    "bad expression": (lambda path, value: path[-1] == "expression", _replace(BAD_EXPRESSIONS)),
    "other text": (lambda path, value: isinstance(value, str), _replace(st.text(max_size=20))),
}


def locations(node, path: tuple = ()) -> list[tuple]:
    """The path (keys and indices) of every value under `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        out += [path + (key,), *locations(value, path + (key,))]
    return out


@st.composite
def almost_valid(draw, valid: st.SearchStrategy) -> tuple[dict, bool]:
    """A valid (document, flag) with one or two mutations, each of those that apply somewhere
    in the document (an empty document gets an unknown key)."""
    doc, flag = draw(valid)
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 2))):
        where = {name: [p for p in locations(doc) if applies(p, value_at(doc, p))]
                 for name, (applies, _) in MUTATIONS.items()}
        names = [name for name, paths in where.items() if paths]
        if not names:
            doc[draw(KEYS)] = draw(VALUES)
            continue
        name = draw(st.sampled_from(names))
        path = draw(st.sampled_from(where[name]))
        note(f"mutation: {name} at {path}")
        MUTATIONS[name][1](draw, value_at(doc, path[:-1]), path[-1])
    return doc, flag


# -- nonsense -----------------------------------------------------------------------------------
def nested(key: str) -> st.SearchStrategy[bytes]:
    """`key` holding arrays or inline tables nested up to 3,000 deep (depths far from where
    tomllib runs out of stack, which depends on the caller's stack: pytest's or the CLI's)."""
    return st.tuples(st.sampled_from([1, 10, 100, 3000]), st.booleans()).map(
        lambda t: (f"{key} = " + ("[" * t[0] + "]" * t[0] if t[1] else "{a = " * t[0] + "1" + "}" * t[0])).encode())


def broken(valid: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """A valid document's bytes, truncated anywhere (also inside a character) or with an
    invalid UTF-8 sequence inserted."""
    text = valid.map(lambda pair: toml_bytes(pair[0]))
    truncated = text.flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i]))
    invalid = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    undecodable = text.flatmap(lambda b: st.tuples(st.integers(0, len(b)), invalid).map(
        lambda t: b[:t[0]] + t[1] + b[t[0]:]))
    return truncated | undecodable


def nonsense(kind: str) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(bytes, flag) of a document that is not one: arbitrary TOML values (under the format's
    keys and random ones), text, bytes, broken valid documents, deep nesting."""
    if kind == "variants":
        shaped = st.dictionaries(FRESH_NAMES | KEYS, st.dictionaries(KEYS, VALUES, max_size=4), max_size=3).map(
            lambda t: {"variants": t})
    else:
        shaped = st.dictionaries(st.sampled_from(grid.PROFILE_KEYS), VALUES, max_size=6)
    documents = st.one_of(st.dictionaries(KEYS, VALUES, max_size=6).map(toml_bytes), shaped.map(toml_bytes),
                          st.text().map(str.encode), st.binary(), broken(VALID[kind]),
                          nested("variants" if kind == "variants" else "experiments"))
    return st.tuples(documents, st.booleans())


def documents(kind: str, family: str) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(bytes, flag) documents of a kind ("variants", "profile") and family; the flag is
    --strict-plugins for a variants file, --all for a profile."""
    if family == "nonsense":
        return nonsense(kind)
    strategy = VALID[kind] if family == "valid" else almost_valid(VALID[kind])
    return strategy.map(lambda pair: (toml_bytes(pair[0]), pair[1]))


# -- the policy ---------------------------------------------------------------------------------
def refusal(exc: UsageError) -> str:
    """The message of a UsageError, checked to be one line."""
    message = str(exc)
    assert message and message.splitlines() == [message], f"a refusal of several lines: {message!r}"
    return message


def load_variants_file(path: Path, strict: bool) -> str:
    """Load a variants file as `--variants FILE` does, then plan a run of its variants: "" when
    it loads (the plan must have tasks), else the one-line message that refused it."""
    try:
        registry = fresh_registry(variant_files=[str(path)], strict=strict)
    except UsageError as exc:
        return refusal(exc)
    own = [v.name for v in registry.variants.values() if v.provider == Provider(str(path))]
    run = grid.make_run(registry, "quick", variants=own or ["*"])
    assert run.tasks(registry), "a loaded variants file plans a run without tasks"
    return ""


def load_profile(path: Path, select_all: bool) -> str:
    """Plan a profile's run as `skipbench run --profile FILE [--all]` does: "" when it plans (with
    tasks), else the one-line message that refused it."""
    registry = fresh_registry()
    try:
        run = grid.make_run(registry, str(path), select_all=select_all)
    except UsageError as exc:
        return refusal(exc)
    assert run.tasks(registry), "a loaded profile plans a run without tasks"
    return ""


LOAD = {"variants": load_variants_file, "profile": load_profile}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory for the documents of this module."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory):
    """Hypothesis's caches (Unicode tables, constants of the code) in a temporary directory, not
    in the checkout (there is no example database: FUZZ says database=None)."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


def fuzz(kind: str, family: str, path: Path, max_examples: int) -> list[tuple[bytes, bool, str]]:
    """Check `max_examples` generated documents of a kind and family, written to `path` in turn;
    (bytes, flag, outcome) of each (outcome as LOAD's)."""
    seen = []

    @settings(FUZZ, max_examples=max_examples)
    @given(document=documents(kind, family))
    def check(document):
        data, flag = document
        note(f"document ({'strict' if flag and kind == 'variants' else '--all' if flag else 'default'}):\n"
             f"{data.decode(errors='backslashreplace')}")
        path.write_bytes(data)
        seen.append((data, flag, LOAD[kind](path, flag)))

    check()
    return seen


def test_the_fuzz_covers_at_least_2000_documents():
    """The budget: each test below checks that its share of documents ran."""
    assert sum(EXAMPLES.values()) >= 2000
    assert all(n >= 300 for n in EXAMPLES.values())


@pytest.mark.parametrize("kind, family", list(EXAMPLES))
def test_every_document_loads_or_is_refused_in_one_line(kind, family, workdir):
    seen = fuzz(kind, family, workdir / f"{kind}.toml", EXAMPLES[kind, family])
    assert len(seen) >= EXAMPLES[kind, family]
    refused = sum(1 for *_, outcome in seen if outcome)
    if family == "valid":
        assert refused == 0
    else:  # a mutation may be harmless (an optional key dropped), but many must be caught
        assert refused >= len(seen) // 3, f"only {refused} of {len(seen)} refused"


def predicting(expression: str) -> bytes:
    """A variants file of one variant predicting act_growth as `expression`."""
    return toml_bytes({"variants": {"fz-predicting": {"builder": "residual", "predictions": [
        {"metric": "act_growth", "expression": expression}]}}})


# what the fuzz found: (kind, flag, document, a fragment of the refusal)
FOUND = {
    "variants nested too deep (tomllib's RecursionError)": (
        "variants", False, b"variants = " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested too deeply"),
    "profile nested too deep": ("profile", True, b"experiments = " + b"{a = " * 3000 + b"1" + b"}" * 3000 + b"\n",
                                "nested too deeply"),
    "profile not UTF-8 (UnicodeDecodeError)": ("profile", True, b'description = "\xff"\n', "malformed TOML"),
    "no depths (a run without tasks)": ("profile", True, b"depths = []\n", "at least one depth"),
    "experiment name a bool (TypeError)": ("profile", False, b'[[experiments]]\nname = true\nvariants = ["plain"]\n',
                                           "name must be a string"),
    "experiment name a list (TypeError)": ("profile", False, b'[[experiments]]\nname = []\nvariants = ["plain"]\n',
                                           "name must be a string"),
    "expression nested deep (MemoryError, RecursionError)": (
        "variants", False, predicting("-" * 5000 + "1"), "nested too deeply"),
    "long sum (RecursionError)": ("variants", False, predicting("1 + " * 1000 + "1"), "nested too deeply"),
    "unknown tag with a line break (two-line message)": (
        "profile", False, b'[[experiments]]\nname = "a"\ntags = ["x\\ny"]\n', r"no variant has tag(s) 'x\ny'"),
    "10**8 seeds (4 GB and seconds to plan)": ("profile", True, b"seeds = 100000000\n", "at most"),
}


@pytest.mark.parametrize("kind, flag, document, fragment", list(FOUND.values()), ids=list(FOUND))
def test_what_the_fuzz_found_is_refused_in_one_line(kind, flag, document, fragment, workdir):
    path = workdir / f"found-{kind}.toml"
    path.write_bytes(document)
    assert fragment in LOAD[kind](path, flag)


# -- the real CLI -------------------------------------------------------------------------------
def pick(kind: str, family: str, path: Path) -> tuple[bytes, bool, str]:
    """A generated document of a kind and family for the CLI, left in `path`: a valid one that
    loads, else one that is refused (the first when none is), without its flag where one is;
    (bytes, flag, outcome)."""
    seen = fuzz(kind, family, path, 10)
    wanted = [s for s in seen if bool(s[2]) == (family != "valid")] or seen
    data, flag, _ = min(wanted, key=lambda s: s[1])
    path.write_bytes(data)
    return data, flag, LOAD[kind](path, flag)  # the message names this path


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    """Start `python -m skipbench ARGS` without the user's plugin settings."""
    return subprocess.Popen([sys.executable, "-m", "skipbench", *args], cwd=cwd, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


def assert_policy(process: subprocess.Popen, document: bytes) -> tuple[int, str]:
    """Exit 0, or 2 with exactly one `skipbench: error:` line on stderr; no traceback. (exit, stderr)."""
    out, err = process.communicate(timeout=300)
    context = (f"{process.args}\n{document.decode(errors='backslashreplace')}\n"
               f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    assert "Traceback" not in out + err, context
    assert process.returncode in (0, 2), context
    if process.returncode == 2:
        assert len(err.splitlines()) == 1 and err.startswith("skipbench: error: "), context
    return process.returncode, err


def test_generated_documents_through_the_cli(workdir):
    """One document of each kind and family through `skipbench list`, and one valid profile
    through a tiny `skipbench run`, all at once: each exits 0, or 2 with one error line, as the
    in-process outcome says."""
    cwd = workdir / "cli"
    cwd.mkdir()
    started = []
    for kind, family in EXAMPLES:
        path = cwd / f"{kind}-{family.replace(' ', '-')}.toml"
        data, flag, outcome = pick(kind, family, path)
        option = "--variants" if kind == "variants" else "--profile"
        strict = ["--strict-plugins"] if flag and kind == "variants" else []
        started.append((kind, data, outcome, cli("list", option, str(path), *strict, cwd=cwd)))
        if kind == "profile" and family == "valid":
            run = ["run", "--profile", str(path), "-m", "params", "--depths", "2", "--out", str(cwd / "run"),
                   "--jobs", "1", *(["--all"] if flag else [])]
            tiny = (data, cli(*run, cwd=cwd))
    for kind, data, outcome, process in started:
        status, err = assert_policy(process, data)
        if kind == "variants":  # the same entry point: the same outcome and message
            assert (status, err) == ((2, f"skipbench: error: {outcome}\n") if outcome else (0, err)), (outcome, err)
        elif not outcome:  # `list` plans nothing: it refuses no profile that plans
            assert status == 0, err
    data, process = tiny
    assert assert_policy(process, data)[0] == 0
    assert (cwd / "run" / "results.csv").is_file()
