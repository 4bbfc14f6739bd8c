"""The registry: builders and measurements (code, from plugins) and variants (mostly data, TOML).

Variants come, in this order, from the TOML files packaged with the built-in plugins, plugins'
``skipbench_register_variants`` (in discovery order), ``[tool.skipbench]`` in ``./pyproject.toml``
and files given with ``--variants``. Every TOML entry is validated when loaded; errors name the file, the entry
and the key, and list what is allowed. Duplicate names are errors naming every provider unless
the later one says ``replace = true``.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .plugins import BUILTIN_PACKAGE, PluginSet, discover
from .specs import BlockBuilder, Measurement, Provider, SpecError, UsageError, Variant, resolve_params

VARIANT_KEYS = ("builder", "params", "network", "last_block", "tags", "description", "replace")


@dataclass
class Registry:
    """Everything registered: builders, variants and measurements by name, and the plugins."""

    builders: dict[str, BlockBuilder] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    measurements: dict[str, Measurement] = field(default_factory=dict)
    plugins: PluginSet | None = None
    notes: list[str] = field(default_factory=list)

    # -- adding -----------------------------------------------------------------------------
    def _add(self, table: dict, kind: str, spec) -> None:
        old = table.get(spec.name)
        if old is not None and not spec.replace:
            raise SpecError(
                f"duplicate {kind} name {spec.name!r}: provided by {old.provider} and by {spec.provider}; "
                f"rename one, or set replace = true on the one that should win")
        table[spec.name] = spec

    def add_builder(self, builder: BlockBuilder) -> None:
        self._add(self.builders, "builder", builder)

    def add_measurement(self, measurement: Measurement) -> None:
        self._add(self.measurements, "measurement", measurement)

    def check_variant(self, variant: Variant, where: str) -> None:
        """SpecError unless the variant's builder exists and takes its parameters."""
        builder = self.builders.get(variant.builder)
        if builder is None:
            raise SpecError(f"{where}: unknown builder {variant.builder!r}; available: {', '.join(sorted(self.builders)) or 'none'}")
        resolve_params(builder.params, variant.params, where)
        resolve_params(builder.params, variant.last_block, f"{where} [last_block]")

    def add_variant(self, variant: Variant, where: str | None = None) -> None:
        """Validate a variant against its builder's schema and add it."""
        self.check_variant(variant, where or f"variant {variant.name!r} ({variant.provider})")
        self._add(self.variants, "variant", variant)

    # -- lookup -----------------------------------------------------------------------------
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
            raise UsageError(f"no variant has tag(s) {', '.join(tags)}; known tags: {', '.join(known)}")
        return selected

    def measurement(self, name: str) -> Measurement:
        """The measurement named `name`, or a UsageError listing the known ones."""
        if name not in self.measurements:
            raise UsageError(f"unknown measurement {name!r}; available: {', '.join(sorted(self.measurements))}")
        return self.measurements[name]


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
                raise SpecError(f"{where}: key {key!r} must be a {kind.__name__}, got {entry[key]!r}")
        try:
            variant = Variant(name=name, builder=entry["builder"], params=entry.get("params", {}),
                              network=entry.get("network", {}), tags=tuple(entry.get("tags", ())),
                              description=entry.get("description", ""), provider=provider,
                              replace=entry.get("replace", False), last_block=entry.get("last_block", {}))
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        out.append((variant, where))
    return out


def read_toml(path: Path) -> dict:
    """Parse a TOML file, turning any error into a UsageError that names the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"variants file {str(path)!r} does not exist") from None
    except OSError as exc:  # a directory, no permission, ...
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: malformed TOML: {exc}") from None


def _packaged_variant_files() -> list[tuple[str, dict]]:
    try:
        root = importlib.resources.files(BUILTIN_PACKAGE)
    except ModuleNotFoundError:
        return []
    files = sorted((f for f in root.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return [(f"{BUILTIN_PACKAGE}/{f.name}", tomllib.loads(f.read_text())) for f in files]


def _add_plugin_variant(reg: Registry, plugins: PluginSet, variant: Variant) -> None:
    """Add a plugin's variant; one that names a missing builder or bad parameters fails its plugin
    (a duplicate name stays an error for the whole registry)."""
    try:
        reg.check_variant(variant, f"variant {variant.name!r}")
    except SpecError as exc:
        info = next(i for i in plugins.infos if i.provider == variant.provider)
        plugins.fail(info, str(exc))
        return
    reg.add_variant(variant)


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
    for builder in collected["skipbench_register_builders"]:
        if builder.provider not in failed:
            reg.add_builder(builder)
    for measurement in collected["skipbench_register_measurements"]:
        if measurement.provider not in failed:
            reg.add_measurement(measurement)
    # the packaged variants belong to the built-ins, so they come first: a plugin may replace one
    if builtins:
        for source, data in _packaged_variant_files():
            for variant, where in variants_from_toml(data, source, Provider(source, "skipbench")):
                if variant.builder not in reg.builders:  # its plugin was blocked or failed
                    reg.notes.append(f"{where}: skipped, builder {variant.builder!r} is not available")
                    continue
                reg.add_variant(variant, where)
    for variant in collected["skipbench_register_variants"]:
        if variant.provider not in failed:
            _add_plugin_variant(reg, plugins, variant)
    if pyproject is not None and Path(pyproject).is_file():
        tool = read_toml(Path(pyproject)).get("tool", {})
        data = tool.get("skipbench", {}) if isinstance(tool, dict) else {}
        for variant, where in variants_from_toml(data, f"{pyproject} [tool.skipbench]", Provider(f"{pyproject}")):
            reg.add_variant(variant, where)
    for file in variant_files:
        for variant, where in variants_from_toml(read_toml(Path(file)), str(file), Provider(str(file))):
            reg.add_variant(variant, where)
    return reg

