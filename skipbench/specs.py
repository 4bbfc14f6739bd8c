"""The frozen dataclasses that plugin hooks return, and the errors the core raises.

Hooks return values (conda style), never side effects. Every value is validated when it is made
and stamped with its provider when the plugin manager collects it. This module imports nothing
heavy: `skipbench --help` must not pay for torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .expressions import SETTING_NAMES, ExpressionError, evaluate_expression, parse_expression

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
PARAM_TYPES = {"bool": bool, "int": int, "float": float, "str": str}
SKIP_KINDS = ("none", "additive", "concatenative", "gated", "scaled", "other")
# what a position-aware builder's build() receives from the network (never from a variant)
POSITION_ARGS = ("block_index", "n_blocks")


class UsageError(Exception):
    """A user error: the CLI prints its message on one line and exits with status 2."""


class SpecError(UsageError):
    """A plugin or data file declared something invalid."""


def article(word: str) -> str:
    """`word` with its indefinite article: "an int", "a float", "a dict"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def check_name(kind: str, name: Any) -> str:
    """Return `name` if it is a valid registry name, else raise SpecError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SpecError(
            f"invalid {kind} name {name!r}: use letters, digits and _ . + - (starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Provider:
    """Who supplied a builder, variant or measurement."""

    plugin: str
    distribution: str = ""
    version: str = ""

    def __str__(self) -> str:
        if self.distribution:
            return f"{self.plugin} ({self.distribution} {self.version})".replace(" )", ")")
        return self.plugin


@dataclass(frozen=True)
class Param:
    """One declared parameter of a builder or a measurement: name, type, default, choices."""

    name: str
    type: str
    default: Any
    choices: tuple = ()
    help: str = ""
    minimum: float | None = None

    def __post_init__(self):
        check_name("parameter", self.name)
        if self.type not in PARAM_TYPES:
            raise SpecError(f"parameter {self.name!r}: type {self.type!r} is not one of {', '.join(PARAM_TYPES)}")
        object.__setattr__(self, "choices", tuple(self.choices))
        for choice in self.choices:
            self.coerce(choice, where=f"choice of parameter {self.name!r}")
        # stored coerced, so that an int default of a float parameter is a float
        object.__setattr__(self, "default", self.coerce(self.default, where=f"default of parameter {self.name!r}"))

    def coerce(self, value: Any, where: str = "") -> Any:
        """Return `value` as this parameter's type, or raise SpecError saying what is allowed."""
        where = f"{where}: " if where else ""
        expected = PARAM_TYPES[self.type]
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if self.type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise SpecError(f"{where}{self.name} must be {article(self.type)}, got {value!r} ({type(value).__name__})")
        if self.minimum is not None and self.type in ("int", "float") and value < self.minimum:
            raise SpecError(f"{where}{self.name}={value!r} is too small; it must be >= {self.minimum}")
        if self.choices and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise SpecError(f"{where}{self.name}={value!r} is not allowed; choose one of {allowed}")
        return value

    def describe(self) -> str:
        """A short `name=default` form used in listings."""
        text = f"{self.name}={self.default!r}"
        if self.choices:
            text += " (" + "|".join(str(c) for c in self.choices) + ")"
        return text


def resolve_params(schema: tuple[Param, ...], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate `values` against `schema`; return every parameter with defaults filled in."""
    known = {p.name: p for p in schema}
    for key in values:
        if key in POSITION_ARGS:
            raise SpecError(f"{where}: {key} is the block's position, which the network gives to position-aware "
                            f"builders; a variant cannot set it")
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise SpecError(f"{where}: unknown parameter {key!r}; allowed: {allowed}")
    return {name: p.coerce(values[name], where) if name in values else p.default for name, p in known.items()}


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


# -- predictions: closed-form theory of a metric, checked against the measurement ---------------
@dataclass(frozen=True)
class PredictionSetting:
    """What a prediction's value callable receives: one cell of a run (variant, depth, width) and the
    measurement that recorded the metric. `params` are the variant's builder parameters with
    defaults filled in, `last_params` those of its final block (the same unless `last_block`,
    the variant's overrides of the final block, is not empty); `network` its network options
    (with the experiment's overrides); `options` the measurement's resolved options; `mode` the
    mode the run forced ("train", "eval"), None where the measurement chose its own."""

    depth: int
    width: int
    batch: int
    n_blocks: int
    params: Mapping[str, Any] = field(default_factory=dict)
    last_block: Mapping[str, Any] = field(default_factory=dict)
    network: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    measurement: str = ""
    mode: str | None = None
    last_params: Mapping[str, Any] | None = None

    def __post_init__(self):
        for name in ("params", "last_block", "network", "options"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))
        last = self.params if self.last_params is None else {**self.last_params}
        object.__setattr__(self, "last_params", _freeze(last))

    def names(self) -> dict[str, float]:
        """The names an expression may use: depth, width, batch, n_blocks and the numeric (bool,
        int, float) parameters."""
        numeric = {k: float(v) for k, v in self.params.items()
                   if isinstance(v, (bool, int, float)) and k not in SETTING_NAMES}
        return {**numeric, "depth": float(self.depth), "width": float(self.width), "batch": float(self.batch),
                "n_blocks": float(self.n_blocks)}


PREDICTION_KEYS = ("metric", "expression", "moment", "index", "measurement", "formula", "source")


@dataclass(frozen=True)
class Prediction:
    """A closed-form prediction of a metric, declared by a builder (for every variant of it) or a
    variant: E[metric ** moment] over seeds as a function of the cell.

    `value` is a callable ``value(setting: PredictionSetting) -> float | None`` (None: no
    prediction for these parameters, say a nonlinearity the theory does not cover), or a string
    expression (see skipbench.expressions: numbers, + - * / **, the functions EXPRESSION_FUNCTIONS,
    the names depth, width, batch, n_blocks and the builder's bool, int and float parameters;
    a variant's predictions from TOML are of this kind). A variant's predictions must pickle
    (workers receive variants by pickle): a callable there must be a module-level function.
    `index` None predicts the metric's scalar rows (no index: the per-seed value, or a probe's
    mean over blocks); an int predicts the rows of that index (block 0 for a per-block metric).
    `measurement` "" means whichever measurement records the metric. `formula` (human-readable;
    an expression's text by default) and `source` (a citation) go into the table's footnote.
    """

    metric: str
    value: Callable[..., float | None] | str
    moment: int = 1
    index: int | None = None
    measurement: str = ""
    formula: str = ""
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.metric, str) or not NAME_PATTERN.match(self.metric):
            raise SpecError(f"prediction: metric must be a metric name, got {self.metric!r}")
        where = f"prediction of {self.metric}"
        if isinstance(self.value, str):
            try:
                parse_expression(self.value)
            except ExpressionError as exc:
                raise SpecError(f"{where}: {exc}") from None
            if not self.formula:
                object.__setattr__(self, "formula", self.value.strip())
        elif not callable(self.value):
            raise SpecError(f"{where}: value must be a callable value(setting) or an expression string, "
                            f"got {self.value!r}")
        if self.moment not in (1, 2) or isinstance(self.moment, bool):
            raise SpecError(f"{where}: moment must be 1 or 2 (E[metric] or E[metric**2]), got {self.moment!r}")
        if self.index is not None and (not isinstance(self.index, int) or isinstance(self.index, bool)
                                       or self.index < 0):
            raise SpecError(f"{where}: index must be a non-negative int or None, got {self.index!r}")
        if self.measurement:
            check_name("measurement", self.measurement)
        for key in ("measurement", "formula", "source"):
            if not isinstance(getattr(self, key), str):
                raise SpecError(f"{where}: {key} must be a string, got {getattr(self, key)!r}")

    @property
    def expression(self) -> str:
        """The expression ("" for a callable)."""
        return self.value if isinstance(self.value, str) else ""

    def check_names(self, params: tuple[Param, ...], where: str) -> None:
        """SpecError unless every name of an expression is a setting name or one of `params`'
        bool, int or float parameters (nothing to check for a callable)."""
        if not self.expression:
            return
        numeric = {p.name for p in params if p.type in ("bool", "int", "float")}
        unknown = sorted(parse_expression(self.expression)[1] - numeric - set(SETTING_NAMES))
        if unknown:
            allowed = ", ".join([*SETTING_NAMES, *sorted(numeric)])
            raise SpecError(f"{where}: prediction of {self.metric}: expression {self.expression!r}: unknown name(s) "
                            f"{', '.join(unknown)}; allowed names: {allowed}")

    def predict(self, setting: PredictionSetting) -> float | None:
        """The predicted E[metric ** moment] for this setting (None: no prediction). A callable's
        result that is not a real number is a SpecError; arithmetic errors propagate."""
        if self.expression:
            try:
                return evaluate_expression(self.expression, setting.names())
            except ExpressionError as exc:
                raise SpecError(f"prediction of {self.metric}: {exc}") from None
        out = self.value(setting)
        if out is None:
            return None
        if isinstance(out, bool) or not isinstance(out, (int, float)) and not hasattr(out, "__float__"):
            raise SpecError(f"prediction of {self.metric}: value() must return a number or None, got {out!r}")
        return float(out)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready declaration (the callable's name in place of an expression)."""
        value = self.expression or getattr(self.value, "__qualname__", type(self.value).__name__)
        return {"metric": self.metric, "moment": self.moment, "index": self.index, "measurement": self.measurement,
                "expression": self.expression, "value": value, "formula": self.formula, "source": self.source}


def _check_predictions(kind: str, name: str, predictions: Any) -> tuple[Prediction, ...]:
    if isinstance(predictions, (str, Prediction)) or not all(isinstance(p, Prediction) for p in predictions):
        raise SpecError(f"{kind} {name!r}: predictions must be a tuple of Prediction instances")
    return tuple(predictions)


@dataclass(frozen=True)
class BlockBuilder:
    """Builds one block of a skip variant: `build(in_dim, **params) -> torch.nn.Module`.

    `layers_per_block` is the number of weight layers on the block's main path; the network turns
    a depth in weight layers into `depth // layers_per_block` blocks. Weight matrices off the main
    path (a highway gate) are named by the block's class attribute ``skipbench_side_weights``
    (parameter names, e.g. ``("gate.weight",)``), which ``skipbench check`` reads to compare the
    rest with `layers_per_block`. `probes` names diagnostics the block reports through a
    `skipbench_probes()` method after each forward pass (save their values during forward: on
    the vmap and per-seed paths the method is called after the forward call returns).

    `seed_batched = True` declares that the blocks' forward also runs a stack of seeds: with
    every parameter and buffer given a leading seed dimension and inputs (seeds, rows,
    features), each seed's output (and probe) is what its own block computes. Blocks built from
    skipbench.layers (Linear), elementwise operations and concatenation along the last dimension
    do; the engine then runs many seeds at the cost of their batched matrix products (checked
    on a probe batch against torch.func.vmap, and run another way with the reason if they
    differ). Undeclared blocks run under vmap, or seed by seed.

    `predictions` are closed-form predictions of metrics (Prediction) for every variant of the
    builder: its value callables get the variant's parameters and return None where the theory
    does not apply (skipbench.theory compares them with the measurements).

    `position = True` declares that the block needs to know where it stands: build then also
    receives ``block_index`` (0-based, counted over the trunk) and ``n_blocks`` (the trunk's
    block count) as keyword arguments, for inits that depend on depth (Fixup's L^(-1/(2m-2)),
    DeepNorm's constants, stochastic depth's decay). They come from the network only: no
    variant may set them, and a build that requires them must declare `position`.
    """

    name: str
    build: Callable[..., Any]
    params: tuple[Param, ...] = ()
    layers_per_block: int = 1
    skip_kind: str = "none"
    description: str = ""
    probes: tuple[str, ...] = ()
    provider: Provider | None = None
    replace: bool = False
    seed_batched: bool = False
    position: bool = False
    predictions: tuple[Prediction, ...] = ()

    def __post_init__(self):
        check_name("builder", self.name)
        if not callable(self.build):
            raise SpecError(f"builder {self.name!r}: build must be callable")
        object.__setattr__(self, "params", tuple(self.params))
        if isinstance(self.probes, str):
            raise SpecError(f"builder {self.name!r}: probes must be a tuple of names, not a string")
        object.__setattr__(self, "probes", tuple(self.probes))
        if not all(isinstance(p, Param) for p in self.params):
            raise SpecError(f"builder {self.name!r}: params must be Param instances")
        if not isinstance(self.layers_per_block, int) or isinstance(self.layers_per_block, bool) or self.layers_per_block < 1:
            raise SpecError(f"builder {self.name!r}: layers_per_block must be a positive int")
        if self.skip_kind not in SKIP_KINDS:
            raise SpecError(f"builder {self.name!r}: skip_kind {self.skip_kind!r} is not one of {', '.join(SKIP_KINDS)}")
        _check_position(self)
        object.__setattr__(self, "predictions", _check_predictions("builder", self.name, self.predictions))
        for prediction in self.predictions:
            prediction.check_names(self.params, f"builder {self.name!r}")


def _check_position(builder: BlockBuilder) -> None:
    """The builder's build signature against its `position` declaration."""
    reserved = [p.name for p in builder.params if p.name in POSITION_ARGS]
    if reserved:
        raise SpecError(f"builder {builder.name!r}: {', '.join(reserved)} cannot be a declared parameter; "
                        f"declare position=True and build() receives it from the network")
    try:
        sig = inspect.signature(builder.build)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    kinds = {p.name: p for p in sig.parameters.values()}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in kinds.values())
    if builder.position:
        missing = [a for a in POSITION_ARGS if a not in kinds and not takes_any]
        if missing:
            raise SpecError(f"builder {builder.name!r} declares position=True but its build() does not accept "
                            f"{' and '.join(missing)}")
    else:
        needed = [a for a in POSITION_ARGS if a in kinds and kinds[a].default is inspect.Parameter.empty]
        if needed:
            raise SpecError(f"builder {builder.name!r}: build() requires {' and '.join(needed)}, which only a "
                            f"builder declaring position=True receives")


# Network-level options a variant may set (the stem and head around the trunk of blocks).
INITS = ("he-normal", "xavier-seed", "xavier-normal", "torch-default", "zeros", "orthogonal")
NETWORK_PARAMS = (
    Param("stem", "str", "none", ("none", "linear", "linear-relu"), "projection before the trunk"),
    Param("stem_init", "str", "he-normal", INITS, "initialization of the stem's weight"),
    Param("head", "str", "auto", ("auto", "none", "linear"), "projection after the trunk; auto: only if widths differ"),
    Param("head_init", "str", "xavier-seed", INITS, "initialization of the head's weight"),
    Param("dtype", "str", "float32", ("float32", "float64"), "floating-point type of weights and data"),
)


@dataclass(frozen=True)
class Variant:
    """A named configuration of a builder: parameter values, network options, tags.

    `last_block` overrides parameters of the trunk's final block only (a plain net whose last
    layer has no activation: ``last_block = {activation = "identity"}``). `predictions` are the
    variant's own closed-form predictions (Prediction; from TOML, ``[[variants.NAME.predictions]]``
    with an expression), besides its builder's.
    """

    name: str
    builder: str
    params: Mapping[str, Any] = field(default_factory=dict)
    network: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str = ""
    provider: Provider | None = None
    replace: bool = False
    last_block: Mapping[str, Any] = field(default_factory=dict)
    predictions: tuple[Prediction, ...] = ()

    def __post_init__(self):
        check_name("variant", self.name)
        object.__setattr__(self, "last_block", _freeze(self.last_block))
        check_name("builder", self.builder)
        object.__setattr__(self, "params", _freeze(self.params))
        object.__setattr__(self, "network", _freeze(resolve_params(NETWORK_PARAMS, self.network or {}, f"variant {self.name!r} [network]")))
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise SpecError(f"variant {self.name!r}: tags must be a list of strings")
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "predictions", _check_predictions("variant", self.name, self.predictions))

    def __hash__(self):
        return hash((self.name, self.builder))

    def __reduce__(self):
        # read-only mappings do not pickle: rebuild from plain dicts (worker processes need this)
        return (Variant, (self.name, self.builder, dict(self.params), dict(self.network), self.tags,
                          self.description, self.provider, self.replace, dict(self.last_block), self.predictions))


@dataclass(frozen=True)
class Measurement:
    """A measurement: `run(cell) -> iterable of partial records` (see skipbench.measurements).

    `seeded` says whether its records depend on the random seed; `exclusive` asks the harness to
    run it alone (timing must not share the machine's cores with other tasks). `applies(builder)`
    may restrict it to some builders (a probe measurement needs blocks that expose probes).
    `better` says which way a metric improves: metric -> "higher", "lower" or "one" (nearer to 1
    on a log scale, for ratios); `skipbench compare` marks a significant change of a metric
    with a direction improved or worse, of one without merely changed.
    """

    name: str
    run: Callable[..., Any]
    metrics: tuple[str, ...] = ()
    options: tuple[Param, ...] = ()
    seeded: bool = True
    exclusive: bool = False
    applies: Callable[[BlockBuilder], bool] | None = None
    description: str = ""
    provider: Provider | None = None
    replace: bool = False
    better: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        check_name("measurement", self.name)
        if not callable(self.run):
            raise SpecError(f"measurement {self.name!r}: run must be callable")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "options", tuple(self.options))
        if not all(isinstance(p, Param) for p in self.options):
            raise SpecError(f"measurement {self.name!r}: options must be Param instances")
        if self.applies is not None and not callable(self.applies):
            raise SpecError(f"measurement {self.name!r}: applies must be callable or None")
        if not isinstance(self.better, Mapping) or not all(
                isinstance(k, str) and v in ("higher", "lower", "one") for k, v in self.better.items()):
            raise SpecError(f"measurement {self.name!r}: better must map metric names to 'higher', 'lower' "
                            f"or 'one', got {dict(self.better) if isinstance(self.better, Mapping) else self.better!r}")
        object.__setattr__(self, "better", _freeze(self.better))

    def applies_to(self, builder: BlockBuilder) -> bool:
        """Whether this measurement makes sense for variants of `builder`."""
        return self.applies is None or bool(self.applies(builder))


def stamped(spec, provider: Provider):
    """Return a copy of a spec carrying its provider."""
    return dataclasses.replace(spec, provider=provider)
