"""The grid: a profile (TOML) plus command-line overrides, resolved and validated.

A profile sets measurements, depths, widths, batch, seeds and measurement options; it may define
its own variants, split the run into experiments, and declare published values and figures.
Width is a grid dimension beside depth: ``widths = [32, 64]`` (or ``--widths``) runs every depth
at every width, ``width = 64`` (or ``--width``) is a single width; one table (and the command
line) gives one or the other, an experiment's own wins over the top level's.
``mode = "train"`` or ``"eval"`` (at top level or per experiment; ``--mode`` overrides both)
forces that mode on every forward pass of every measurement; without it each measurement runs
the network in its own modes (see skipbench.measurements).
:func:`make_run` turns it into a :class:`Run`: one :class:`Plan` per experiment, each expanding
into (variant, measurement, depth, width) tasks that measure every seed.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from . import network
from .engine.cell import MODES
from .engine.streams import MAX_SEED
from .registry import Registry, parse_toml, variants_from_toml
from .specs import Param, Provider, UsageError, Variant, resolve_params

GRID_KEYS = ("measurements", "depths", "width", "widths", "batch", "options", "mode")
PROFILE_KEYS = ("description", "seeds", "seed_start", "variants", "experiments", "published", "figures") + GRID_KEYS
EXPERIMENT_KEYS = ("name", "description", "variants", "tags", "network") + GRID_KEYS
WIDTH = Param("width", "int", 64)
# seeds in one run: the plan lists every seed, and 10**8 of them would take gigabytes before any task
MAX_SEEDS = 2**20
PROFILE_SCALARS = (
    Param("description", "str", ""),
    WIDTH,
    Param("batch", "int", 128),
    Param("seeds", "int", 8),
    Param("seed_start", "int", 0),
)
PUBLISHED_PARAMS = (
    Param("experiment", "str", ""),
    Param("variant", "str", ""),
    Param("metric", "str", ""),
    Param("depth", "int", 0, help="0: any depth"),
    Param("value", "float", 0.0),
    Param("label", "str", "", help="what the published value is called in its source"),
)
DEFAULT_FIGURES = [
    {"kind": "profile", "metric": "grad_norm", "name": "gradient-flow-grad_norm", "title": "weight-gradient norm per block"},
    {"kind": "profile", "metric": "signal_norm", "name": "gradient-flow-signal_norm", "title": "dL/dx norm at each block's input"},
    {"kind": "curve", "metric": "loss_curve", "name": "identity-loss-curve", "title": "learning f(x) = x: evaluation MSE"},
    {"kind": "scaling", "metric": "peak_mem_bytes", "name": "throughput-peak-memory",
     "title": "peak memory of one forward+backward pass"},
]
# added to the default figures of an experiment with several widths: how the first/last gradient
# and backpropagated-signal ratios, the identity's trained MSE and peak memory change with width
BY_WIDTH_FIGURES = [
    {"kind": "by-width", "metric": metric, "name": f"by-width-{metric}", "title": f"{metric} against width"}
    for metric in ("grad_ratio", "signal_ratio", "mse_trained", "peak_mem_bytes")
]
FIGURE_PARAMS = (
    Param("kind", "str", "profile", ("profile", "curve", "histogram", "widths", "scaling", "by-width")),
    Param("name", "str", "figure"),
    Param("title", "str", ""),
    Param("experiment", "str", ""),
    Param("metric", "str", "grad_norm"),
)


@dataclass(frozen=True)
class Task:
    """One cell of the grid."""

    variant: str
    measurement: str
    depth: int
    width: int
    experiment: str = ""

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return task_key(self.__dict__)


def task_key(rec: dict) -> tuple[str, str, str, int, int]:
    """The task a record (or a Task's fields) belongs to: (experiment, variant, measurement,
    depth, width)."""
    return (rec.get("experiment") or "", rec["variant"], rec["measurement"], rec["depth"], rec["width"])


@dataclass(frozen=True)
class Settings:
    """What holds for the whole run, whatever the experiment: its seeds, device, the threads of
    its timing tasks, and its worker processes (0: automatic, see harness.resolve_jobs)."""

    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    threads: int = 1
    jobs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "device": self.device, "threads": self.threads, "jobs": self.jobs}


@dataclass
class Plan:
    """One experiment of a run, resolved and validated: its variants, measurements, grid and
    options; the run's settings (shared by every plan of the run, not copied)."""

    profile: str
    variants: list[Variant]
    measurements: list[str]
    depths: list[int]
    widths: list[int]
    batch: int
    settings: Settings = field(default_factory=Settings)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiment: str = ""
    mode: str | None = None  # forced on every measurement (engine.cell.MODES), or None: their own

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.settings.seeds

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def threads(self) -> int:
        return self.settings.threads

    @property
    def jobs(self) -> int:
        return self.settings.jobs

    def tasks(self, registry: Registry) -> list[Task]:
        """The grid (variants x measurements x depths x widths), skipping measurements that do
        not apply to a variant's builder and depths below one block of it."""
        out = []
        for variant in self.variants:
            builder = registry.builders[variant.builder]
            for name in self.measurements:
                if registry.measurements[name].applies_to(builder):
                    out += [Task(variant.name, name, depth, width, self.experiment) for depth in self.depths
                            if depth >= builder.layers_per_block for width in self.widths]
        return out

    def as_dict(self) -> dict[str, Any]:
        """The plan as results.json records it: `widths` always, and `width` too where there is
        only one (the key single-width runs have always had)."""
        single = {"width": self.widths[0]} if len(self.widths) == 1 else {}
        return {"profile": self.profile, "experiment": self.experiment, "variants": [v.name for v in self.variants],
                "measurements": self.measurements, "depths": self.depths, **single, "widths": self.widths,
                "batch": self.batch, "mode": self.mode, **self.settings.as_dict(), "options": self.options}


# -- profiles -----------------------------------------------------------------------------------
def profile_names() -> list[str]:
    """Names of the packaged profiles."""
    files = importlib.resources.files("skipbench") / "profiles"
    return sorted(f.name.removesuffix(".toml") for f in files.iterdir() if f.name.endswith(".toml"))


def load_profile(name_or_file: str) -> tuple[str, dict]:
    """(name, data) of a packaged profile by name, or of a TOML file by path."""
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.is_file():  # a directory named like a profile does not shadow it
        if not path.is_file():
            raise UsageError(f"profile file {name_or_file!r} does not exist")
        try:
            raw, name = path.read_bytes(), path.stem
        except OSError as exc:
            raise UsageError(f"profile file {name_or_file!r} cannot be read: {exc.strerror or exc}") from None
    else:
        if name_or_file not in profile_names():
            raise UsageError(f"unknown profile {name_or_file!r}; available: {', '.join(profile_names())} (or a .toml file)")
        raw = (importlib.resources.files("skipbench") / "profiles" / f"{name_or_file}.toml").read_bytes()
        name = name_or_file
    data = parse_toml(raw, f"profile {name_or_file}")
    for key in data:
        if key not in PROFILE_KEYS:
            raise UsageError(f"profile {name_or_file}: unknown key {key!r}; allowed: {', '.join(PROFILE_KEYS)}")
    return name, data


def _require_positive(**values: int | None) -> None:
    """UsageError for the first given value below 1 (None: not given)."""
    for label, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"{label} must be >= 1, got {value}")


def _int_list(values: Any, what: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"{what} must be a list of integers, got {values!r}")
    return values


def _widths(values: Any, what: str) -> list[int]:
    """`values` as widths: a non-empty list of positive integers, duplicates dropped (order kept)."""
    widths = _int_list(values, what)
    if not widths:
        raise UsageError(f"{what} must list at least one width, got []")
    _require_positive(**{what: min(widths)})
    return list(dict.fromkeys(widths))


def _table_widths(table: dict, where: str) -> list[int] | None:
    """The widths one table of a profile (its top level or an experiment) sets: `widths = [...]`,
    or `width = N` as one width; None where it sets neither, a UsageError where it sets both."""
    if "width" in table and "widths" in table:
        raise UsageError(f"{where}: give width = N (one width) or widths = [N, ...], not both")
    if "widths" in table:
        return _widths(table["widths"], f"{where}: widths")
    if "width" in table:
        return _widths([WIDTH.coerce(table["width"], where)], f"{where}: width")
    return None


def _given_widths(width: int | None, widths: list[int]) -> list[int]:
    """The widths the command line gives: --width N as one width, or --widths N...; [] for neither."""
    if width is not None and widths:
        raise UsageError("give --width N (one width) or --widths N... (several), not both")
    if width is not None:
        return _widths([width], "width")
    return _widths(widths, "widths") if widths else []


@dataclass
class Run:
    """A resolved profile: one Plan per experiment, and what the report compares and draws."""

    profile: str
    description: str
    plans: list[Plan]
    published: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        """The run's settings (every plan holds the same)."""
        return self.plans[0].settings

    def tasks(self, registry: Registry) -> list[Task]:
        return [t for plan in self.plans for t in plan.tasks(registry)]


def _table_list(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{where}: {key} must be an array of tables [[{key}]]")
    return value


def _str_list(value: Any, what: str, noun: str = "names") -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{what} must be a list of {noun}, got {value!r}")
    return value


def add_profile_variants(registry: Registry, data: dict, name: str) -> None:
    """Register the variants a profile defines itself (its [variants.NAME] tables)."""
    if "variants" not in data:
        return
    provider = Provider(f"profile {name}", "skipbench")
    for variant, where in variants_from_toml({"variants": data["variants"]}, f"profile {name}", provider):
        known = registry.variants.get(variant.name)
        if known is None or known.provider != provider:  # the same profile loaded twice adds nothing
            registry.add_variant(variant, where)


@dataclass(frozen=True)
class _Overrides:
    """What the command line says about every experiment of a profile."""

    select_all: bool
    variants: list[str]
    tags: list[str]
    measurements: list[str]
    depths: list[int]
    widths: list[int]  # [] where the command line gives none
    batch: int | None
    mode: str | None = None


def _plan_experiment(registry: Registry, name: str, exp: dict, top: dict, given: _Overrides,
                     settings: Settings) -> Plan:
    where = f"profile {name}" + (f" experiment {exp['name']!r}" if exp.get("name") else "")
    merged = {**{k: top[k] for k in GRID_KEYS if k in top}, **exp}
    listed = _str_list(merged.get("measurements", []), f"{where}: measurements", "measurement names")
    select_all, variants, tags, measurements, depths = (given.select_all, given.variants, given.tags,
                                                        given.measurements, given.depths)
    names = list(dict.fromkeys(measurements or listed or sorted(registry.measurements)))
    for m in names:
        registry.measurement(m)
    depth_list = list(dict.fromkeys(depths or _int_list(merged.get("depths", [8]), f"{where}: depths")))
    if not depth_list:  # no depth, no task: the run would silently measure nothing
        raise UsageError(f"{where}: depths must list at least one depth, got []")
    # both tables are checked, whichever wins: the command line, the experiment, the top level
    own_widths, top_widths = _table_widths(exp, where), _table_widths(top, f"profile {name}")
    widths = given.widths or own_widths or top_widths or [WIDTH.default]
    sizes = resolve_params([p for p in PROFILE_SCALARS if p.name == "batch"],
                           {k: merged[k] for k in ("batch",) if k in merged}, where)
    batch = sizes["batch"] if given.batch is None else given.batch
    _require_positive(batch=batch)
    mode = given.mode or merged.get("mode")
    if mode is not None and mode not in MODES:
        raise UsageError(f"{where}: mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if select_all or variants or tags:
        selected = registry.select(variants, tags)
    elif exp.get("variants") or exp.get("tags"):
        selected = registry.select(_str_list(exp.get("variants", []), f"{where}: variants"),
                                   _str_list(exp.get("tags", []), f"{where}: tags"))
    else:
        raise UsageError("name variants to run (wildcards allowed), or use --all")
    # depths asked for on the command line must suit every variant; a profile's depths that a
    # variant cannot reach (fewer layers than one block) are left out for that variant only
    network_overrides = exp.get("network", {})
    if not isinstance(network_overrides, dict):
        raise UsageError(f"{where}: network must be a table of network options")
    if network_overrides:  # the experiment's network options win over the variants' own
        selected = [dataclasses.replace(v, network={**v.network, **network_overrides}) for v in selected]
    for depth in depth_list:
        for v in (selected if depths else selected[:1]):
            network.block_count(registry.builders[v.builder].layers_per_block if depths else 1, depth, v.name)
    tables = {}
    for source in (top, exp):
        opts = source.get("options", {})
        if not isinstance(opts, dict) or not all(isinstance(t, dict) for t in opts.values()):
            raise UsageError(f"{where}: options must be tables [options.MEASUREMENT] of option = value")
        for key, table in opts.items():
            registry.measurement(key)
            tables[key] = {**tables.get(key, {}), **table}
    # every table is checked, also those of measurements this run leaves out
    options = {m: resolve_params(registry.measurements[m].options, tables.get(m, {}), f"{where}: [options.{m}]")
               for m in dict.fromkeys(names + list(tables))}
    return Plan(name, selected, names, depth_list, widths, batch, settings, options, exp.get("name", ""), mode)


def make_run(registry: Registry, profile: str = "default", variants: Iterable[str] = (), tags: Iterable[str] = (),
             measurements: Iterable[str] = (), depths: Iterable[int] = (), width: int | None = None,
             batch: int | None = None, seeds: int | None = None, device: str = "cpu",
             threads: int | None = None, jobs: int = 0, select_all: bool = False,
             only_experiments: Iterable[str] = (), mode: str | None = None, widths: Iterable[int] = ()) -> Run:
    """Resolve a profile and command-line overrides into a validated Run (UsageError on bad input).

    Variants: `select_all`, or the given names/tags, or else each experiment's own `variants`
    and `tags`. A profile's own [variants.NAME] tables are added to the registry first.
    `only_experiments` keeps those experiments of the profile, with their published values and
    figures. `mode` ("train" or "eval") overrides the profile's mode (see the module's docstring).
    `width` (one) or `widths` (several, not both) override the profile's widths.
    """
    name, data = load_profile(profile)
    where = f"profile {name}"
    add_profile_variants(registry, data, name)
    scalars = resolve_params(PROFILE_SCALARS, {k: v for k, v in data.items() if k in {p.name for p in PROFILE_SCALARS}},
                             where)
    n_seeds = scalars["seeds"] if seeds is None else seeds
    _require_positive(seeds=n_seeds, threads=threads)
    if n_seeds > MAX_SEEDS:
        raise UsageError(f"seeds must be at most {MAX_SEEDS} in one run, got {n_seeds}")
    if jobs < 0:
        raise UsageError(f"jobs must be >= 0 (0: automatic), got {jobs}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    experiments = _table_list(data, "experiments", where) or [{}]
    for exp in experiments:
        for key in exp:
            if key not in EXPERIMENT_KEYS:
                raise UsageError(f"{where}: experiment {exp.get('name', '?')!r}: unknown key {key!r}; "
                                 f"allowed: {', '.join(EXPERIMENT_KEYS)}")
        if not isinstance(exp.get("name", ""), str):  # names key records and name figures
            raise UsageError(f"{where}: an experiment's name must be a string, got {exp['name']!r}")
    if len({e.get("name", "") for e in experiments}) != len(experiments):
        raise UsageError(f"{where}: every experiment needs its own name")
    names = [x.get("name", "") for x in experiments]
    only = list(dict.fromkeys(only_experiments))
    unknown = [e for e in only if e not in names]
    if unknown:
        raise UsageError(f"--experiment {unknown[0]!r}: profile {name!r} has the experiments "
                         f"{', '.join(repr(n) for n in names)}")
    kept = [x for x in experiments if not only or x.get("name", "") in only]
    if scalars["seed_start"] < 0 or scalars["seed_start"] + n_seeds > MAX_SEED:
        raise UsageError(f"seeds must lie in [0, {MAX_SEED}) (one random stream key each, see engine/streams.py); "
                         f"got {scalars['seed_start']} to {scalars['seed_start'] + n_seeds - 1}")
    seed_list = tuple(range(scalars["seed_start"], scalars["seed_start"] + n_seeds))
    given = _Overrides(select_all, list(variants), list(tags), list(measurements), list(depths),
                       _given_widths(width, list(widths)), batch, mode)
    settings = Settings(seed_list, device, threads or torch.get_num_threads(), jobs)
    plans = [_plan_experiment(registry, name, exp, data, given, settings) for exp in kept]
    selected = {plan.experiment for plan in plans}

    def check_experiments(listed: list[str], what: str) -> None:
        # a misspelled experiment would leave a published value "not measured", a figure empty
        for experiment in listed:
            if experiment and experiment not in names:
                raise UsageError(f"{what}: unknown experiment {experiment!r}; the profile's experiments: "
                                 f"{', '.join(repr(n) for n in names)}")

    published = []
    for entry in _table_list(data, "published", where):
        also = _str_list(entry.get("also", []), f"{where}: published also")
        values = resolve_params(PUBLISHED_PARAMS, {k: v for k, v in entry.items() if k != "also"}, f"{where}: [[published]]")
        missing = [k for k in ("variant", "metric", "value") if k not in entry]
        if missing:
            raise UsageError(f"{where}: [[published]] entry {entry!r} is missing {', '.join(missing)}")
        check_experiments([values["experiment"]], f"{where}: [[published]] {values['variant']} {values['metric']}")
        if not values["experiment"] or values["experiment"] in selected:
            published.append({**values, "also": also})
    figures = []
    for entry in _table_list(data, "figures", where) or _default_figures(plans):
        lists = {"depths": _int_list(entry.get("depths", []), f"{where}: figure depths"),
                 "experiments": _str_list(entry.get("experiments", []), f"{where}: figure experiments")}
        scalars_ = {k: v for k, v in entry.items() if k not in lists}
        figure = {**resolve_params(FIGURE_PARAMS, scalars_, f"{where}: [[figures]]"), **lists}
        check_experiments([figure["experiment"]] + figure["experiments"], f"{where}: figure {figure['name']!r}")
        if all(e in selected for e in [figure["experiment"]] + figure["experiments"] if e):
            figures.append(figure)
    return Run(name, scalars["description"], plans, published, figures)


def _plan_default_figures(plan: Plan) -> list[dict]:
    """DEFAULT_FIGURES, and BY_WIDTH_FIGURES where the plan has several widths."""
    return DEFAULT_FIGURES + (BY_WIDTH_FIGURES if len(plan.widths) > 1 else [])


def _default_figures(plans: list[Plan]) -> list[dict]:
    """The figures of a profile that declares none (_plan_default_figures), drawn once per
    experiment when there are several (one figure must not mix the records of different
    experiments)."""
    if len(plans) < 2:
        return _plan_default_figures(plans[0])
    slugs = [re.sub(r"[^A-Za-z0-9]+", "-", p.experiment).strip("-") for p in plans]
    if len(set(slugs)) < len(slugs):  # names that differ only in punctuation
        slugs = [f"{slug}-{i}" for i, slug in enumerate(slugs, start=1)]
    return [{**f, "experiment": p.experiment, "name": f"{f['name']}-{slug}", "title": f"{f['title']} ({p.experiment})"}
            for p, slug in zip(plans, slugs) for f in _plan_default_figures(p)]


def make_plan(registry: Registry, profile: str = "default", variants: Iterable[str] = (), tags: Iterable[str] = (),
              **overrides: Any) -> Plan:
    """The single Plan of a one-experiment profile (all variants unless names or tags are given)."""
    variants, tags = list(variants), list(tags)
    run = make_run(registry, profile, variants, tags, select_all=not variants and not tags, **overrides)
    if len(run.plans) != 1:
        raise UsageError(f"profile {profile!r} has {len(run.plans)} experiments; use make_run")
    return run.plans[0]
