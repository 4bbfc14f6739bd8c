"""The registry: builders and measurements (code, from plugins) and variants (mostly data, TOML).

Variants come, in this order, from the TOML files packaged with the built-in plugins, plugins'
``skipbench_register_variants`` (in discovery order), ``[tool.skipbench]`` in ``./pyproject.toml``
and files given with ``--variants``. Every TOML entry is validated when loaded; errors name the file, the entry
and the key, and list what is allowed.

A name is unique across providers: when a later provider (in that order, after the builders and
measurements of the plugins in discovery order) registers a name already taken, the first keeps
it and the later one is set aside with a warning naming both: a plugin fails as a whole (all its
contributions dropped), a TOML entry is skipped; strict plugins make it fatal. A later entry
with ``replace = true`` deliberately takes the name instead.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .plugins import BUILTIN_PACKAGE, PluginSet, discover
from .specs import (PREDICTION_KEYS, BlockBuilder, Measurement, Prediction, Provider, SpecError, UsageError, Variant,
                    article, resolve_params)

VARIANT_KEYS = ("builder", "params", "network", "last_block", "tags", "description", "replace", "predictions")


@dataclass
class Registry:
    """Everything registered: builders, variants and measurements by name, and the plugins."""

    builders: dict[str, BlockBuilder] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    measurements: dict[str, Measurement] = field(default_factory=dict)
    plugins: PluginSet | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # TOML entries set aside (name clashes)
    # (kind, name) -> every spec that held the name, the current one last (a dropped one's
    # predecessor takes the name back)
    _holders: dict[tuple[str, str], list] = field(default_factory=dict, repr=False)

    # -- adding -----------------------------------------------------------------------------
    def _table(self, kind: str) -> dict:
        return {"builder": self.builders, "variant": self.variants, "measurement": self.measurements}[kind]

    def clash(self, kind: str, spec) -> str:
        """Why `spec` cannot take its name ("" when it can: the name is free or spec replaces)."""
        old = self._table(kind).get(spec.name)
        if old is None or spec.replace:
            return ""
        return f"duplicate {kind} name {spec.name!r}: provided by {old.provider} and by {spec.provider}"

    def _add(self, kind: str, spec) -> None:
        why = self.clash(kind, spec)
        if why:
            raise SpecError(f"{why}; rename one, or set replace = true on the one that should win")
        self._table(kind)[spec.name] = spec
        self._holders.setdefault((kind, spec.name), []).append(spec)

    def discard(self, kind: str, spec) -> None:
        """Remove one registered spec; a name it had replaced goes back to its previous holder."""
        holders = self._holders.get((kind, spec.name), [])
        holders[:] = [h for h in holders if h is not spec]
        table = self._table(kind)
        if holders:
            table[spec.name] = holders[-1]
        else:
            table.pop(spec.name, None)

    def drop(self, provider: Provider) -> None:
        """Remove everything `provider` registered."""
        for (kind, _), holders in list(self._holders.items()):
            for spec in [h for h in holders if h.provider == provider]:
                self.discard(kind, spec)

    def add_builder(self, builder: BlockBuilder) -> None:
        self._add("builder", builder)

    def add_measurement(self, measurement: Measurement) -> None:
        self._add("measurement", measurement)

    def check_variant(self, variant: Variant, where: str) -> None:
        """SpecError unless the variant's builder exists and takes its parameters."""
        builder = self.builders.get(variant.builder)
        if builder is None:
            raise SpecError(f"{where}: unknown builder {variant.builder!r}; available: {', '.join(sorted(self.builders)) or 'none'}")
        resolve_params(builder.params, variant.params, where)
        resolve_params(builder.params, variant.last_block, f"{where} [last_block]")
        for prediction in variant.predictions:
            prediction.check_names(builder.params, where)

    def add_variant(self, variant: Variant, where: str | None = None) -> None:
        """Validate a variant against its builder's schema and add it."""
        self.check_variant(variant, where or f"variant {variant.name!r} ({variant.provider})")
        self._add("variant", variant)

    # -- lookup -----------------------------------------------------------------------------
    def definition(self, variant: Variant) -> dict:
        """Everything needed to interpret a variant's results without its code: its builder,
        parameters with defaults filled in (and those of the final block), network options,
        provider, and its builder's declarations and provider (JSON-ready). A variant or builder
        that declares predictions (specs.Prediction) has them under ``predictions``; one that
        declares none has no such key."""
        builder = self.builders[variant.builder]
        out = {
            "name": variant.name, "builder": variant.builder, "params": self.params_of(variant),
            "last_block": dict(variant.last_block),
            "last_block_params": self.params_of(variant, last_block=True) if variant.last_block else None,
            "network": dict(variant.network), "tags": list(variant.tags), "description": variant.description,
            "replace": variant.replace, "provider": _provider_dict(variant.provider),
            "builder_definition": {
                "name": builder.name, "provider": _provider_dict(builder.provider),
                "layers_per_block": builder.layers_per_block, "skip_kind": builder.skip_kind,
                "seed_batched": builder.seed_batched, "position": builder.position,
                "probes": list(builder.probes), "description": builder.description,
                "params": [{"name": p.name, "type": p.type, "default": p.default, "choices": list(p.choices),
                            "minimum": p.minimum, "help": p.help} for p in builder.params],
            },
        }
        if variant.predictions:
            out["predictions"] = [p.as_dict() for p in variant.predictions]
        if builder.predictions:
            out["builder_definition"]["predictions"] = [p.as_dict() for p in builder.predictions]
        return out

    def params_of(self, variant: Variant, last_block: bool = False) -> dict:
        """The variant's full builder parameters, defaults filled in (those of its final block
        with `last_block`)."""
        values = {**variant.params, **variant.last_block} if last_block else variant.params
        return resolve_params(self.builders[variant.builder].params, values, f"variant {variant.name!r}")

    def select(self, patterns: Iterable[str] = (), tags: Iterable[str] = ()) -> list[Variant]:
        """Variants matching any name pattern (wildcards allowed; none means all) and all tags."""
        patterns, tags = list(patterns), list(tags)
        chosen = list(self.variants) if not patterns else []
        for pattern in patterns:
            hits = fnmatch.filter(self.variants, pattern)
            if not hits:
                raise UsageError(f"unknown variant {pattern!r}; available: {', '.join(sorted(self.variants))}")
            chosen += [h for h in sorted(hits) if h not in chosen]
        selected = [self.variants[n] for n in chosen if all(t in self.variants[n].tags for t in tags)]
        if not self.variants:
            raise UsageError("no variants are registered (are their plugins blocked or failing? see `skipbench plugins`)")
        if not selected:
            known = sorted({t for v in self.variants.values() for t in v.tags})
            raise UsageError(f"no variant has tag(s) {_listed(tags)}; known tags: {_listed(known)}")
        return selected

    def measurement(self, name: str) -> Measurement:
        """The measurement named `name`, or a UsageError listing the known ones."""
        if name not in self.measurements:
            raise UsageError(f"unknown measurement {name!r}; available: {', '.join(sorted(self.measurements))}")
        return self.measurements[name]


def _listed(names: Iterable[str]) -> str:
    """Names joined for a one-line message: a tag is any string, so one that is not printable
    (a line break) is shown quoted and escaped."""
    return ", ".join(n if n.isprintable() else repr(n) for n in names)


def _provider_dict(provider: Provider | None) -> dict | None:
    if provider is None:
        return None
    return {"plugin": provider.plugin, "distribution": provider.distribution, "version": provider.version}


# -- TOML variants ----------------------------------------------------------------------------
def variants_from_toml(data: dict, source: str, provider: Provider) -> list[tuple[Variant, str]]:
    """Parse a ``variants`` table (name -> entry) into validated Variants with their locations."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: must be a table with a 'variants' table of named entries, got {data!r}")
    for key in data:
        if key != "variants":  # a misspelled [variant.x] must not be silently ignored
            raise SpecError(f"{source}: unknown table {key!r}; allowed: variants")
    table = data.get("variants", {})
    if not isinstance(table, dict):
        raise SpecError(f"{source}: 'variants' must be a table of named entries")
    out = []
    for name, entry in table.items():
        where = f"{source}: variant {name!r}"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: must be a table with keys {', '.join(VARIANT_KEYS)}")
        for key in entry:
            if key not in VARIANT_KEYS:
                raise SpecError(f"{where}: unknown key {key!r}; allowed: {', '.join(VARIANT_KEYS)}")
        if "builder" not in entry:
            raise SpecError(f"{where}: missing key 'builder'")
        for key, kind in (("params", dict), ("network", dict), ("last_block", dict), ("tags", list), ("description", str), ("replace", bool)):
            if key in entry and not isinstance(entry[key], kind):
                raise SpecError(f"{where}: key {key!r} must be {article(kind.__name__)}, got {entry[key]!r}")
        try:
            predictions = predictions_from_toml(entry.get("predictions", []))
            variant = Variant(name=name, builder=entry["builder"], params=entry.get("params", {}),
                              network=entry.get("network", {}), tags=tuple(entry.get("tags", ())),
                              description=entry.get("description", ""), provider=provider,
                              replace=entry.get("replace", False), last_block=entry.get("last_block", {}),
                              predictions=predictions)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        out.append((variant, where))
    return out


def predictions_from_toml(entries: object) -> tuple[Prediction, ...]:
    """A variant's ``[[variants.NAME.predictions]]`` tables as Predictions: keys metric and
    expression (required), moment (1 or 2), index (a block), measurement, formula, source. The
    expression's syntax is checked here, its names against the builder when the variant is
    registered (Registry.check_variant)."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SpecError("predictions must be an array of tables [[variants.NAME.predictions]] with keys "
                        + ", ".join(PREDICTION_KEYS))
    out = []
    for i, entry in enumerate(entries):
        where = f"predictions[{i}]"
        for key in entry:
            if key not in PREDICTION_KEYS:
                raise SpecError(f"{where}: unknown key {key!r}; allowed: {', '.join(PREDICTION_KEYS)}")
        missing = [k for k in ("metric", "expression") if k not in entry]
        if missing:
            raise SpecError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")
        for key in ("metric", "expression", "measurement", "formula", "source"):
            if key in entry and not isinstance(entry[key], str):
                raise SpecError(f"{where}: key {key!r} must be a string, got {entry[key]!r}")
        try:
            out.append(Prediction(entry["metric"], entry["expression"], entry.get("moment", 1), entry.get("index"),
                                  entry.get("measurement", ""), entry.get("formula", ""), entry.get("source", "")))
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
    return tuple(out)


def parse_toml(raw: bytes, where: str) -> dict:
    """Parse a TOML document's bytes; a UsageError naming `where` when they are not UTF-8 TOML
    (or nest deeper than the parser's stack)."""
    try:
        return tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: malformed TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and inline tables
        raise UsageError(f"{where}: malformed TOML: arrays or inline tables nested too deeply") from None


def read_toml(path: Path) -> dict:
    """Parse a TOML file, turning any error into a UsageError that names the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise UsageError(f"variants file {str(path)!r} does not exist") from None
    except OSError as exc:  # a directory, no permission, ...
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return parse_toml(raw, str(path))


def _packaged_variant_files() -> list[tuple[str, dict]]:
    try:
        root = importlib.resources.files(BUILTIN_PACKAGE)
    except Exception:  # the package does not import: load_builtins reports it as a failed plugin
        return []
    files = sorted((f for f in root.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return [(f"{BUILTIN_PACKAGE}/{f.name}", tomllib.loads(f.read_text())) for f in files]


SET_ASIDE = "the first loaded keeps it, {who} is set aside (rename one, or set replace = true on the one that should win)"


def _info(plugins: PluginSet, provider: Provider):
    return next(i for i in plugins.infos if i.provider == provider)


def _by_provider(specs: list) -> dict[Provider, list]:
    """Specs grouped by provider, in the order providers first appear (discovery order)."""
    groups: dict[Provider, list] = {}
    for spec in specs:
        groups.setdefault(spec.provider, []).append(spec)
    return groups


def _set_aside(reg: Registry, plugins: PluginSet, provider: Provider, why: str) -> None:
    """Fail a plugin (fatal when strict) and drop everything it registered."""
    reg.drop(provider)
    plugins.fail(_info(plugins, provider), why)


def _add_code(reg: Registry, plugins: PluginSet, builders: list, measurements: list) -> None:
    """Add each plugin's builders and measurements, all or none: a plugin whose name clashes
    with an earlier provider's is set aside."""
    for provider, specs in _by_provider([*builders, *measurements]).items():
        kinds = [(("builder" if isinstance(spec, BlockBuilder) else "measurement"), spec) for spec in specs]
        why = next((w for w in (reg.clash(k, spec) for k, spec in kinds) if w), "")
        names = [(kind, spec.name) for kind, spec in kinds]
        why = why or next((f"it registers {kind} {n!r} twice" for kind, n in names if names.count((kind, n)) > 1), "")
        if why:
            _set_aside(reg, plugins, provider, f"{why}; {SET_ASIDE.format(who='this plugin')}")
            continue
        for kind, spec in kinds:
            reg._add(kind, spec)


def _add_plugin_variants(reg: Registry, plugins: PluginSet, variants: list) -> None:
    """Add each plugin's variants, all or none: one that names a missing builder, has bad
    parameters or takes a name already taken sets its plugin aside."""
    for provider, group in _by_provider(variants).items():
        why = ""
        for variant in group:
            try:
                reg.check_variant(variant, f"variant {variant.name!r}")
            except SpecError as exc:
                why = str(exc)
                break
            why = reg.clash("variant", variant)
            if why:
                why = f"{why}; {SET_ASIDE.format(who='this plugin')}"
                break
            reg.add_variant(variant)
        if why:
            _set_aside(reg, plugins, provider, why)
    _prune(reg, plugins)


def _prune(reg: Registry, plugins: PluginSet) -> None:
    """Variants whose builder went with a plugin set aside: a plugin's fail their plugin, the
    packaged ones are skipped with a note."""
    while orphans := [v for v in reg.variants.values() if v.builder not in reg.builders]:
        variant = orphans[0]
        info = next((i for i in plugins.infos if i.provider == variant.provider), None)
        if info is None:
            reg.discard("variant", variant)
            reg.notes.append(f"variant {variant.name!r} ({variant.provider}): skipped, builder {variant.builder!r} "
                             f"is not available")
        else:
            _set_aside(reg, plugins, variant.provider,
                       f"variant {variant.name!r}: builder {variant.builder!r} is not available (its plugin was set aside)")


def _add_toml_variant(reg: Registry, variant: Variant, where: str, strict: bool) -> None:
    """Add a TOML entry; one whose name is taken is skipped with a warning (fatal when strict)."""
    reg.check_variant(variant, where)
    why = reg.clash("variant", variant)
    if why:
        message = f"{where}: {why}; {SET_ASIDE.format(who='this entry')}"
        if strict:
            raise SpecError(message)
        reg.warnings.append(message)
        return
    reg.add_variant(variant, where)


def load_registry(disabled: Iterable[str] = (), plugin_dirs: Iterable[str] = (),
                  variant_files: Iterable[str] = (), strict: bool = False,
                  pyproject: str | Path | None = "pyproject.toml", builtins: bool = True,
                  entrypoints: bool = True, env: bool = True) -> Registry:
    """Discover plugins, collect their builders, measurements and variants, then load TOML variants."""
    plugins = discover(disabled, plugin_dirs, strict, builtins=builtins, entrypoints=entrypoints, env=env)
    collected = {hook: plugins.collect(hook) for hook in
                 ("skipbench_register_builders", "skipbench_register_measurements", "skipbench_register_variants")}
    failed = {info.provider for info in plugins.failures()}
    reg = Registry(plugins=plugins)
    _add_code(reg, plugins, [b for b in collected["skipbench_register_builders"] if b.provider not in failed],
              [m for m in collected["skipbench_register_measurements"] if m.provider not in failed])
    # the packaged variants belong to the built-ins, so they come first: a plugin may replace one
    if builtins:
        for source, data in _packaged_variant_files():
            for variant, where in variants_from_toml(data, source, Provider(source, "skipbench")):
                if variant.builder not in reg.builders:  # its plugin was blocked or failed
                    reg.notes.append(f"{where}: skipped, builder {variant.builder!r} is not available")
                    continue
                _add_toml_variant(reg, variant, where, strict)
    failed = {info.provider for info in plugins.failures()}
    _add_plugin_variants(reg, plugins, [v for v in collected["skipbench_register_variants"] if v.provider not in failed])
    if pyproject is not None and Path(pyproject).is_file():
        tool = read_toml(Path(pyproject)).get("tool", {})
        data = tool.get("skipbench", {}) if isinstance(tool, dict) else {}
        for variant, where in variants_from_toml(data, f"{pyproject} [tool.skipbench]", Provider(f"{pyproject}")):
            _add_toml_variant(reg, variant, where, strict)
    for file in variant_files:
        for variant, where in variants_from_toml(read_toml(Path(file)), str(file), Provider(str(file))):
            _add_toml_variant(reg, variant, where, strict)
    return reg
