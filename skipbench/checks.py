"""The conformance kit: what a builder or variant must satisfy before a plugin is published.

Each check runs on a :class:`Subject` (a builder with a variant's parameters, and a registry
holding both) and returns a :class:`Result`: whether it holds and why, in one line.
``skipbench check TARGET`` prints them; :mod:`skipbench.testing` offers them to pytest.
Blocks are built in training mode (the mode of gradient flow, identity and training) unless a
check says otherwise, at small widths, so that the whole kit takes seconds.
"""

from __future__ import annotations

import inspect
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import network
from .engine import streams
from .registry import Registry, load_registry
from .specs import PARAM_TYPES, POSITION_ARGS, BlockBuilder, UsageError, Variant

WIDTHS = (5, 16, 64)  # odd and even, smaller and larger than the width of the other checks
WIDTH, ROWS = 16, 7
DEEP = 64  # weight layers of the finiteness check
SIDE_WEIGHTS = "skipbench_side_weights"  # a block attribute: its weight matrices off the main path


class CheckFailed(AssertionError):
    """A conformance check does not hold; the message says why."""


@dataclass(frozen=True)
class Result:
    """One check's outcome on one subject."""

    check: str
    ok: bool
    reason: str


@dataclass
class Subject:
    """A builder with the parameters of one variant, and a registry that holds both."""

    builder: BlockBuilder
    variant: Variant
    registry: Registry
    kind: str = "variant"  # variant | builder: what the user named

    @property
    def label(self) -> str:
        """`variant NAME (builder B)` or `builder NAME`, for reports."""
        if self.kind == "builder":
            return f"builder {self.builder.name}"
        return f"variant {self.variant.name} (builder {self.builder.name})"

    def params(self, last: bool = False) -> dict[str, Any]:
        """The variant's builder parameters, defaults filled in (its final block's with `last`)."""
        return self.registry.params_of(self.variant, last_block=last)

    def block(self, width: int = WIDTH, index: int = 0, n_blocks: int = 4, seed: int = 0,
              params: dict | None = None) -> nn.Module:
        """One block as the network builds it (block `index` of `n_blocks`), weights from `seed`,
        in training mode and the variant's dtype."""
        streams.seed_weights(seed)
        values = params if params is not None else self.params(last=index == n_blocks - 1)
        try:
            block = network.build_block(self.builder, width, values, index, n_blocks)
        except network.BlockFault as exc:
            raise CheckFailed(str(exc)) from None
        return block.to(self.dtype).train()

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.variant.network["dtype"])

    def inputs(self, width: int = WIDTH, rows: int = ROWS, seed: int = 0) -> torch.Tensor:
        """(rows, width) N(0, 1) inputs from a generator of their own."""
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randn(rows, width, generator=gen).to(self.dtype)


def subject_of(target: BlockBuilder | Variant | Subject | str, registry: Registry | None = None) -> Subject:
    """The subject of a builder (checked with its defaults), a variant (its builder looked up in
    `registry`, by default the installed plugins'), or a variant or builder name."""
    if isinstance(target, Subject):
        return target
    if isinstance(target, BlockBuilder):
        reg = Registry()
        reg.add_builder(target)
        variant = Variant(target.name, target.name)
        reg.add_variant(variant)
        return Subject(target, variant, reg, "builder")
    reg = registry if registry is not None else _installed()
    if isinstance(target, str):
        if target in reg.variants:
            target = reg.variants[target]
        elif target in reg.builders:
            return subject_of(reg.builders[target])
        else:
            raise UsageError(f"no variant or builder named {target!r}")
    if isinstance(target, Variant):
        if target.builder not in reg.builders:
            raise UsageError(f"variant {target.name!r}: its builder {target.builder!r} is not in the registry; "
                             f"pass registry= holding it, or check the BlockBuilder itself")
        if reg.variants.get(target.name) is not target:
            reg = Registry(dict(reg.builders), {target.name: target}, dict(reg.measurements), reg.plugins)
            reg.check_variant(target, f"variant {target.name!r}")
        return Subject(reg.builders[target.builder], target, reg)
    raise TypeError(f"cannot check a {type(target).__name__}: give a BlockBuilder, a Variant or a name")


_INSTALLED: list[Registry] = []


def _installed() -> Registry:
    if not _INSTALLED:
        _INSTALLED.append(load_registry(pyproject=None))
    return _INSTALLED[0]


# -- the checks --------------------------------------------------------------------------------
def check_shapes(s: Subject) -> str:
    """The block maps (rows, in) to (rows, out) at several widths, in training and eval mode,
    with finite values of the input's dtype; the first and the last block alike."""
    outs = []
    for width in WIDTHS:
        x = s.inputs(width)
        for index in (0, 3):
            block = s.block(width, index=index)
            for mode in ("train", "eval"):
                block.train(mode == "train")
                with torch.no_grad():
                    y = block(x)
                where = f"width {width}, {mode} mode" + (", last block" if index else "")
                if not isinstance(y, torch.Tensor):
                    raise CheckFailed(f"returned {type(y).__name__}, not a tensor ({where})")
                if y.dim() != 2 or y.shape[0] != x.shape[0]:
                    raise CheckFailed(f"mapped {tuple(x.shape)} to {tuple(y.shape)}: it must map (batch, in) to "
                                      f"(batch, out) ({where})")
                if y.dtype != x.dtype:
                    raise CheckFailed(f"returned {y.dtype} for {x.dtype} inputs ({where})")
                if not torch.isfinite(y).all():
                    raise CheckFailed(f"returned non-finite values at initialization ({where})")
        outs.append(f"{width}->{y.shape[1]}")
    return f"(batch, in) -> (batch, out) at widths {', '.join(outs)}, training and eval mode"


def _state(block: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in block.state_dict().items() if isinstance(t, torch.Tensor)}


def check_seeds(s: Subject) -> str:
    """The same seed builds the same weights; different seeds build different ones, unless the
    block has nothing random in it (constant, zero or identity tensors only)."""
    first, again, other = (_state(s.block(seed=seed)) for seed in (1, 1, 2))
    changed = [n for n in first if not torch.equal(first[n], again[n])]
    if changed:
        raise CheckFailed(f"the same seed built different {', '.join(changed)}: the build draws from a generator "
                          f"other than torch's global one (NumPy's, Python's, a fresh torch.Generator?)")
    if all(torch.equal(first[n], other[n]) for n in first):
        # identical for two seeds: fine for a block with nothing random, not for one that draws
        # from a generator of its own
        drawn = [n for n, t in first.items() if t.is_floating_point() and t.unique().numel() > 2]
        if drawn:
            raise CheckFailed(f"seeds 1 and 2 built the same {', '.join(drawn)}: the build ignores torch's global "
                              f"generator (a fixed seed or a generator of its own?)")
        return "no random weights: every seed builds the same block"
    return f"the same seed gives the same {len(first)} tensors, different seeds different ones"


def _grads(block: nn.Module, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor | None, dict]:
    """dL/dx and dL/dp (None where p is not in the graph) for a random linear read-out L."""
    params = dict(block.named_parameters())
    x = x.clone().requires_grad_(True)
    y = block(x)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    found = torch.autograd.grad((y * r).sum(), [x] + [params[n] for n in names], allow_unused=True)
    return found[0], dict(zip(names, found[1:]))


def check_gradients(s: Subject) -> str:
    """Gradients reach the input and every trainable parameter.

    A parameter passes when it is in the autograd graph at initialization (its gradient is a
    tensor, not None) and, where that gradient is exactly zero (ReZero's branch with alpha = 0,
    a zero-initialized last layer), when it is nonzero once every parameter is moved off its
    initial value: zero by design at init, but trainable. A block that draws in its forward
    (stochastic depth) is given a few draws: a parameter must be reached in one of them.
    """
    names = [n for n, p in s.block().named_parameters() if p.requires_grad]
    x = s.inputs()
    missing, zero, input_reached = set(names), set(names), False
    for draw in range(4):
        block = s.block()
        torch.manual_seed(draw)  # the forward's own draws, if any: a different one each time
        grad_x, grads = _grads(block, x, names)
        input_reached |= grad_x is not None and bool(grad_x.abs().sum() > 0)
        missing -= {n for n, g in grads.items() if g is not None}
        zero -= {n for n, g in grads.items() if g is not None and bool(g.abs().sum() > 0)}
        if not missing and not zero and input_reached:
            break
    if not input_reached:
        raise CheckFailed("no gradient reaches the block's input (is the output detached from it?)")
    if missing:
        raise CheckFailed(f"{', '.join(sorted(missing))} not in the autograd graph: no gradient can ever reach it "
                          f"(unused, detached, or used through .item()/.data)")
    if zero:
        block = s.block()
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=gen).to(p.dtype))
        torch.manual_seed(0)
        _, grads = _grads(block, x, names)
        dead = sorted(n for n in zero if grads[n] is None or not bool(grads[n].abs().sum() > 0))
        if dead:
            raise CheckFailed(f"{', '.join(dead)} get exactly zero gradient, even with perturbed parameters")
        return (f"the input and all {len(names)} trainable parameters; {', '.join(sorted(zero))} exactly zero at "
                f"initialization (by design), nonzero once the parameters move")
    return f"the input and all {len(names)} trainable parameters get nonzero gradients"


def _choices(param) -> tuple:
    if param.choices:
        return param.choices
    return (True, False) if param.type == "bool" else ()


def check_params(s: Subject) -> str:
    """Declared parameters validate: build() accepts every declared name and requires nothing
    undeclared, each default has its declared type, the variant's values resolve, and the block
    builds and runs with every declared choice (and both values of a bool)."""
    sig = inspect.signature(s.builder.build)
    accepted = list(sig.parameters.values())[1:]  # the first is in_dim
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted)
    names = {p.name for p in accepted}
    declared = {p.name for p in s.builder.params}
    unknown = sorted(declared - names) if not takes_any else []
    if unknown:
        raise CheckFailed(f"declared parameter(s) {', '.join(unknown)} not accepted by build{sig}")
    required = sorted(p.name for p in accepted if p.default is inspect.Parameter.empty
                      and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
                      and p.name not in declared and p.name not in POSITION_ARGS)
    if required:
        raise CheckFailed(f"build requires {', '.join(required)}, which no declared Param gives")
    for p in s.builder.params:
        if not isinstance(p.default, PARAM_TYPES[p.type]):
            raise CheckFailed(f"default of {p.name} is {p.default!r}, not a {p.type}")
    s.params()
    s.params(last=True)
    tried = 0
    for p in s.builder.params:
        for choice in _choices(p):
            try:
                block = s.block(8, params={**s.params(), p.name: choice})
                y = block(s.inputs(8, 4))
            except Exception as exc:
                raise CheckFailed(f"{p.name}={choice!r} is declared but the block fails with it: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from None
            if not isinstance(y, torch.Tensor) or y.shape[0] != 4:
                raise CheckFailed(f"{p.name}={choice!r} is declared but the block then returns {_shape(y)}")
            tried += 1
    return f"{len(declared)} declared parameter(s) accepted by build with typed defaults; {tried} declared choice(s) build and run"


def check_layers(s: Subject) -> str:
    """`layers_per_block` equals the block's weight matrices (parameters of two or more
    dimensions) on the main path. Matrices off it (a highway gate, a projection on the skip
    path) are named by the block's `skipbench_side_weights`; the network turns depth (in weight
    layers) into blocks with this number."""
    block = s.block()
    side = tuple(getattr(block, SIDE_WEIGHTS, ()))
    params = dict(block.named_parameters())
    unknown = [n for n in side if n not in params]
    if unknown:
        raise CheckFailed(f"{SIDE_WEIGHTS} names {', '.join(unknown)}, which the block does not have")
    mats = [n for n, p in params.items() if p.dim() >= 2 and n not in side]
    declared = s.builder.layers_per_block
    if len(mats) != declared:
        raise CheckFailed(
            f"layers_per_block = {declared} but the block has {len(mats)} weight matrices on its main path "
            f"({', '.join(mats) or 'none'}): depth counts weight layers, so depth D would give D // {declared} "
            f"blocks; declare layers_per_block={len(mats) or 1}, or name matrices off the main path in the "
            f"block's {SIDE_WEIGHTS}")
    note = f"; off the main path: {', '.join(side)}" if side else ""
    return f"layers_per_block = {declared} = weight matrices on the main path ({', '.join(mats) or 'none'}){note}"


def check_depth(s: Subject) -> str:
    """The network at depth 64 (weight layers) stays finite at initialization: its output, every
    block's output and the gradients of a backward pass."""
    streams.seed_weights(0)
    net = network.build(s.registry, s.variant, DEEP, WIDTH).train()
    x = s.inputs(WIDTH, 16)
    h = net.stem(x)
    for i, block in enumerate(net.blocks):
        h = block(h)
        if not torch.isfinite(h).all():
            raise CheckFailed(f"block {i} of {len(net.blocks)} output non-finite values at initialization")
    y = net.head(h)
    if not torch.isfinite(y).all():
        raise CheckFailed("the head's output is not finite at initialization")
    (0.5 * y.square().sum() / len(y)).backward()
    bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise CheckFailed(f"non-finite gradients at depth {DEEP}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    rms = h.detach().square().mean().sqrt().item()
    return f"{len(net.blocks)} blocks: finite outputs and gradients (output RMS {rms:.3g} for N(0, 1) inputs)"


def check_vectorized(s: Subject) -> str:
    """The block runs vectorized over seeds, as the engine chooses: stacked (seed_batched) or
    under vmap. A declared seed_batched that does not hold, or a block that only runs seed by
    seed, fails with the engine's reason."""
    from .engine.cell import Cell
    from .engine.stack import SeedNets

    seeds = (0, 1, 2)
    cell = Cell(s.registry, s.variant, 2 * s.builder.layers_per_block, WIDTH, 8, seeds)
    probe_rows = cell.normals(seeds, streams.DATA, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the harness runs seeds: a multi-threaded reduction rounds differently
    try:
        stack = SeedNets(cell).stack(seeds, probe_rows, probes=bool(s.builder.probes))
    finally:
        torch.set_num_threads(threads)
    if stack.path == "stacked":
        return "stacked: declared seed_batched, and its stacked outputs match each seed's own"
    if s.builder.seed_batched:
        raise CheckFailed(f"declared seed_batched, but the engine runs it {stack.path}: {stack.reason}")
    if stack.path == "vmap":
        return "under torch.func.vmap (declare seed_batched=True to run stacked, see skipbench.layers)"
    raise CheckFailed(f"runs seed by seed, not vectorized: {stack.reason}")


def check_probes(s: Subject) -> str:
    """Every declared probe is returned by the block's skipbench_probes() after a forward pass,
    as a tensor (a number as a 0-dim tensor); a block with probes declares them."""
    block = s.block()
    method = getattr(block, "skipbench_probes", None)
    if not s.builder.probes:
        if callable(method):
            raise CheckFailed("the block has skipbench_probes() but the builder declares no probes=: "
                              "they would never be recorded")
        return "no probes declared"
    if not callable(method):
        raise CheckFailed(f"declares probes {', '.join(s.builder.probes)} but the block has no skipbench_probes()")
    with torch.no_grad():
        block(s.inputs())
    found = method()
    if not isinstance(found, dict):
        raise CheckFailed(f"skipbench_probes() returned {type(found).__name__}, not a dict")
    missing = [n for n in s.builder.probes if n not in found]
    if missing:
        raise CheckFailed(f"declared probe(s) {', '.join(missing)} missing from skipbench_probes() "
                          f"(it returned {', '.join(found) or 'nothing'})")
    wrong = [f"{n} ({type(found[n]).__name__})" for n in s.builder.probes if not isinstance(found[n], torch.Tensor)]
    if wrong:
        raise CheckFailed(f"probe(s) {', '.join(wrong)} are not tensors (a number: torch.tensor(x), 0-dim)")
    return f"{', '.join(s.builder.probes)}: tensors"


def check_pickle(s: Subject) -> str:
    """The block pickles and unpickles to a block with the same output (worker processes)."""
    block = s.block().eval()
    try:
        copy = pickle.loads(pickle.dumps(block))
    except Exception as exc:
        raise CheckFailed(f"does not pickle: {type(exc).__name__}: {_first_line(exc)}") from None
    x = s.inputs()
    with torch.no_grad():
        same = torch.equal(block(x), copy.eval()(x))
    if not same:
        raise CheckFailed("the unpickled block gives a different output")
    return "pickles, and the copy gives the same output"


# -- running them ------------------------------------------------------------------------------
@dataclass
class Check:
    """One named check: call it on a builder, variant or name (pytest: it raises CheckFailed)."""

    name: str
    run: Callable[[Subject], str]
    doc: str = field(default="", repr=False)

    def __post_init__(self):
        self.doc = inspect.getdoc(self.run) or ""
        self.__name__ = self.name  # pytest ids: test_x[gradients]

    def result(self, target, registry: Registry | None = None) -> Result:
        """Run the check; a failure or any exception is a failed Result with its reason."""
        try:
            return Result(self.name, True, self.run(subject_of(target, registry)))
        except CheckFailed as exc:
            return Result(self.name, False, str(exc))
        except UsageError:
            raise
        except Exception as exc:
            return Result(self.name, False, f"raised {type(exc).__name__}: {_first_line(exc)}")

    def __call__(self, target, registry: Registry | None = None) -> Result:
        """Run the check; raise CheckFailed with the reason unless it holds."""
        result = self.result(target, registry)
        if not result.ok:
            raise CheckFailed(f"{self.name}: {result.reason}")
        return result


CHECKS = [
    Check("shapes", check_shapes),
    Check("seeds", check_seeds),
    Check("gradients", check_gradients),
    Check("params", check_params),
    Check("layers_per_block", check_layers),
    Check("depth-64", check_depth),
    Check("vectorized", check_vectorized),
    Check("probes", check_probes),
    Check("pickle", check_pickle),
]


def run_all(target, registry: Registry | None = None) -> list[Result]:
    """Every check on one builder, variant or name."""
    subject = subject_of(target, registry)
    return [check.result(subject) for check in CHECKS]


# -- what `skipbench check TARGET` names -----------------------------------------------------------
def resolve(target: str, registry_args: dict) -> tuple[Registry, list[Subject], list[str]]:
    """The registry and subjects of TARGET (a plugin file, a variant, a builder or a plugin's
    name: then all it provides), and problems that fail the check before any runs (a plugin
    file that does not load). UsageError when TARGET names nothing."""
    if target.endswith(".py") or os.sep in target:
        return _resolve_file(Path(target), registry_args)
    registry = load_registry(**registry_args)
    if target in registry.variants:
        return registry, [subject_of(registry.variants[target], registry)], []
    if target in registry.builders:
        return registry, [subject_of(registry.builders[target])], []
    for info in registry.plugins.infos:
        if target in info.names():
            return registry, *_provided(registry, info)
    raise UsageError(f"check target {target!r} is not a variant, builder, plugin file or plugin; "
                     f"see `skipbench list`, `skipbench list --builders`, `skipbench plugins`")


def _resolve_file(path: Path, registry_args: dict):
    if not path.is_file() or path.suffix != ".py":
        raise UsageError(f"plugin file {str(path)!r} does not exist or is not a .py file")
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / path.name
        link.symlink_to(path.resolve())
        registry = load_registry(**{**registry_args, "plugin_dirs": [*registry_args.get("plugin_dirs", ()), tmp]})
        info = next(i for i in registry.plugins.infos if i.source == "dropin" and i.distribution == str(link))
        return registry, *_provided(registry, info)


def _provided(registry: Registry, info) -> tuple[list[Subject], list[str]]:
    if info.status == "blocked":
        raise UsageError(f"plugin {info.name!r} is disabled")
    if info.status == "failed":
        return [], [f"plugin {info.name!r} failed to load: {info.error}"]
    builders = [registry.builders[n] for n in info.contributes.get("builders", []) if n in registry.builders]
    variants = [registry.variants[n] for n in info.contributes.get("variants", []) if n in registry.variants]
    subjects = [subject_of(b) for b in builders] + [subject_of(v, registry) for v in variants]
    if not subjects:
        return [], [f"plugin {info.name!r} provides no builders or variants"]
    return subjects, []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _shape(y) -> str:
    return str(tuple(y.shape)) if isinstance(y, torch.Tensor) else type(y).__name__
