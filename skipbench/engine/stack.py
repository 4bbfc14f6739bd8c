"""Many seeds' networks run as one: stacked weights, one interface, three ways to run a block.

Every seed's parameters and buffers are stacked along a leading seed dimension into leaf tensors
(``(seeds, ...)``) that the stack owns: gradients, optimizers and norms work on those, the same
way whatever runs the blocks. Inputs, block inputs and block outputs are real tensors of shape
``(seeds, rows, features)``, so autograd gives dL/dx at any block's input directly. A block runs
in one of three ways, chosen once per stack and recorded (``path``, and ``reason`` when it is not
the fastest the builder allows):

- ``stacked``: the builder declares ``seed_batched=True``: its blocks' forward accepts stacked
  parameters (skipbench.layers). The template network holds the stacked leaves and runs once,
  at the cost of its batched matrix products. The declaration is checked on a probe batch
  against vmap (or the loop): a block that does not keep to it runs another way, with the reason.
- ``vmap``: any other block that torch.func can vectorize: ``vmap(functional_call)``, block by block.
- ``loop``: a block that cannot run under vmap (``.item()``, data-dependent control flow, random
  draws from torch's generator in forward: under vmap a seed's draws would depend on the other
  seeds), one seed after another, on views of the same stacked leaves. Each seed's forward draws
  come from its own stream (streams.FORWARD), so they are the same alone or among any other seeds.

Random draws in forward run stacked when a block makes them with skipbench.layers.seed_uniform
or row_uniform: around a stacked forward pass the stack hands those helpers each seed's
forward-stream generator (layers.seed_generators), the same generator whose state the loop path
installs as torch's for that seed, so a seed draws the same numbers on every path.

Seeds never interact on any path: a loss summed over seeds has, for each seed's weights, exactly
that seed's gradient, and elementwise optimizers update each seed as its own optimizer would.
Buffers (BatchNorm's running statistics, counters) are each seed's own slice of the stack on
every path: the stacked path hands the block its stacked buffers (a seed-batched block updates
each seed's slice), vmap its seed's slice, the loop a copy it writes back.

The mode (training or eval, `mode`) is the template module's, set by the measurement; the path is
chosen on the modes the measurement runs in.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, vmap

from .. import network
from ..layers import seed_generators
from ..network import SkipNet
from .cell import MODES, Cell
from .replay import BuildReplay, same_state, state
from .streams import FORWARD, generator

PATHS = ("stacked", "vmap", "loop")
CHUNK_BYTES = 192 * 2**20  # what one chunk of seeds may keep alive (per worker process) ...
CHUNK_SLACK = 0.1  # ... or this much more, where that saves a whole chunk (see chunks)


class SeedNets:
    """Every seed's weights for one cell, each exactly as that seed's own build makes them.

    One build is recorded and replayed for the other seeds (they then cost only their tensor
    operations: draws, fills, casts) unless the build reads values into Python or draws from
    another generator (see replay.py): then every seed is built. The first build's network is
    the template; one copy of it runs every chunk's stack, on the path chosen for the first.
    """

    def __init__(self, cell: Cell, path: str | None = None):
        """`path` forces one of PATHS for every chunk (None: the fastest that runs correctly)."""
        if path is not None and path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.cell = cell
        self.replay_reason = ""
        self._template: SkipNet | None = None
        self._replay: BuildReplay | None = None
        self._module: SkipNet | None = None
        self._held_width: int | None = None
        self._path: tuple[str, str] | None = (path, "") if path else None

    @property
    def template(self) -> SkipNet:
        """A network of the cell (the first seed's), recording its build for the other seeds."""
        if self._template is None:
            cell = self.cell
            widths = cell.build(cell.seeds[0]).widths  # probed outside the recording
            net, replay, reason = BuildReplay.record(lambda: cell.build(cell.seeds[0], widths))
            # a second guard, for what no hook sees (a build seeding NumPy from
            # torch.initial_seed()): one other seed, replayed and built for real
            if replay is not None and len(cell.seeds) > 1 and not _replays_exactly(replay, cell, net, cell.seeds[1]):
                replay, reason = None, f"the replay differs from seed {cell.seeds[1]}'s own build"
            self._template, self._replay, self.replay_reason = net, replay, reason
        return self._template

    @property
    def widths(self) -> list[int]:
        return self.template.widths

    @property
    def held_width(self) -> int:
        """network.held_width of the cell's network: elements per sample its activations hold,
        which sizes the chunks (see seed_bytes). Run on a copy of the template, whose weights
        are no seed's record (the stacks then run that copy with their own leaves)."""
        if self._held_width is None:
            runner = copy.deepcopy(self.template)
            self._held_width = network.held_width(runner)
            if self._module is None:  # no stack has taken a copy yet: the stacks run this one
                self._module = runner
        return self._held_width

    def state(self, seed: int) -> dict[str, torch.Tensor]:
        """`seed`'s parameters and buffers by name."""
        template = self.template
        if seed == self.cell.seeds[0]:
            return state(template)
        if self._replay is not None:
            return self._replay.run(seed)
        return state(self.cell.build(seed, template.widths))

    def stacked_state(self, seeds: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Every seed's parameters and buffers, stacked along a leading seed dimension: drawn
        all at once where the build allows it (replay.BuildReplay.run_stacked), else seed by
        seed and stacked."""
        template = self.template
        if self._replay is not None and self._replay.stackable:
            return self._replay.run_stacked(seeds)
        states = [self.state(s) for s in seeds]
        return {n: torch.stack([s[n] for s in states]) for n in state(template)}

    def stack(self, seeds: tuple[int, ...], probe_rows: torch.Tensor | None = None,
              probes: bool = False, modes: tuple[str, ...] = ("train",)) -> "SeedStack":
        """The stack of `seeds`' networks, its path chosen on `probe_rows` ((seeds, 2, width)),
        run in each of `modes` (those the measurement will run the network in)."""
        if self._module is None:
            self._module = copy.deepcopy(self.template)
        stack = SeedStack(seeds, self._module, self.stacked_state(seeds))
        if self._path is None:
            stack.choose_path(self.cell.builder.seed_batched, probe_rows, probes, modes)
            self._path = stack.path, stack.reason
        stack.path, stack.reason = self._path
        return stack


def _replays_exactly(replay: BuildReplay, cell: Cell, first: SkipNet, seed: int) -> bool:
    """Whether `replay` gives `seed` exactly its own build's weights, alone and (where the
    replay stacks) in a stack after the cell's first seed, whose build is `first`."""
    own = state(cell.build(seed, first.widths))
    if not same_state(replay.run(seed), own):
        return False
    if not replay.stackable:
        return True
    stacked = replay.run_stacked((cell.seeds[0], seed))
    return all(same_state({n: t[j] for n, t in stacked.items()}, expected)
               for j, expected in enumerate((state(first), own)))


def check_replay(nets: SeedNets, seed: int) -> bool:
    """Whether the cell's replay gives `seed` exactly its own build's weights, alone and in a
    stack (for tests and benchmarks)."""
    return _replays_exactly(nets._replay, nets.cell, nets.template, seed)


class SeedStack:
    """The networks of several seeds, run together (see the module's docstring)."""

    def __init__(self, seeds: tuple[int, ...], module: SkipNet, stacked: dict[str, torch.Tensor]):
        """`module`: a network of the cell, which takes the stacked leaves (`stacked`: each
        parameter and buffer with a leading seed dimension) as its own; a chunk's stack
        replaces the previous chunk's."""
        self.seeds = seeds
        self.widths = module.widths
        self.module = module
        self.params = {n: nn.Parameter(stacked[n].contiguous(), requires_grad=p.requires_grad)
                       for n, p in module.named_parameters()}
        self.buffers = {n: stacked[n].contiguous() for n, _ in module.named_buffers()}
        _install(module, {**self.params, **self.buffers})
        self.n_blocks = len(module.blocks)
        self.path, self.reason = "stacked", ""
        self._generators: list[torch.Generator] | None = None  # each seed's forward stream
        self._parts: dict[str, list] | None = None

    # -- the parts of the network: stem, blocks, head -----------------------------------------------
    def _part(self, name: str) -> tuple[nn.Module, dict, dict]:
        """Part `name`'s module and its own stacked parameters and buffers (by local name)."""
        if self._parts is None:
            self._parts = {}
            for kind, tensors in ((1, self.params), (2, self.buffers)):
                for full, t in tensors.items():
                    head, _, rest = full.partition(".")
                    if head == "blocks":
                        index, _, rest = rest.partition(".")
                        head = f"blocks.{index}"
                    part = self._parts.setdefault(head, [self.module.get_submodule(head), {}, {}])
                    part[kind][rest] = t
        return self._parts.get(name) or (self.module.get_submodule(name), {}, {})

    def run_part(self, name: str, x: torch.Tensor, probes: bool = False, path: str | None = None):
        """Part `name` ("stem", "blocks.3", "head") on (seeds, rows, ...) inputs; with `probes`,
        also the block's probes, each with a leading seed dimension."""
        path = path or self.path
        module, params, buffers = self._part(name)
        if path == "stacked":
            with seed_generators(self.generators()):
                out = module(x)
            return (out, module.skipbench_probes()) if probes else out

        def one(p, b, xs):
            y = functional_call(module, (p, b), (xs,))
            return (y, module.skipbench_probes()) if probes else y

        if path == "vmap":
            return vmap(one, randomness="error")(params, buffers, x)
        outs = []
        for j in range(x.shape[0]):  # the first seeds only, for a probe of fewer
            # a seed's own copy of its buffers: an in-place update of a view would bump the
            # version of the whole stack, under the other seeds' saved tensors
            own = {n: b[j].clone() for n, b in buffers.items()}
            outs.append(self._own_draws(j, one, {n: p[j] for n, p in params.items()}, own, x[j]))
            with torch.no_grad():
                for n, b in buffers.items():
                    b[j].copy_(own[n])
        if probes:
            return (torch.stack([o for o, _ in outs]),
                    {k: torch.stack([torch.as_tensor(p[k]) for _, p in outs]) for k in outs[0][1]})
        return torch.stack(outs)

    def generators(self) -> list[torch.Generator]:
        """Each seed's forward-stream generator (streams.FORWARD), in stack order, where its
        draws so far have left it."""
        if self._generators is None:
            self._generators = [generator(s, FORWARD) for s in self.seeds]
        return self._generators

    def _own_draws(self, j: int, fn, *args):
        """fn(*args) drawing from seed j's forward stream instead of torch's global generator."""
        own = self.generators()[j]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(own.get_state())
            out = fn(*args)
            own.set_state(torch.get_rng_state())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every seed's network output for (seeds, rows, width) inputs."""
        if self.path == "stacked":
            with seed_generators(self.generators()):
                return self.module(x)
        return self.trace(x)[0]

    __call__ = forward

    def trace(self, x: torch.Tensor, probes: bool = False, path: str | None = None):
        """(output, block inputs, block outputs[, probes per block]). Block inputs always
        require grad, so that autograd can be asked for dL/dx there."""
        h = self.run_part("stem", x, path=path)
        if not h.requires_grad:  # no stem (or a parameter-free one): the input is block 0's input
            h = h.detach().requires_grad_(True)
        inputs, outputs, found = [], [], []
        for i in range(self.n_blocks):
            inputs.append(h)
            out = self.run_part(f"blocks.{i}", h, probes, path)
            h, p = out if probes else (out, None)
            outputs.append(h)
            found.append(p)
        y = self.run_part("head", h, path=path)
        return (y, inputs, outputs, found) if probes else (y, inputs, outputs)

    @contextlib.contextmanager
    def mode(self, mode: str) -> Iterator[None]:
        """Run the network in `mode` ("train": module.train(), "eval": module.eval()) within
        this context; the previous mode after it."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        was = self.module.training
        self.module.train(mode == "train")
        try:
            yield
        finally:
            self.module.train(was)

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Whatever runs within this context, every seed's buffers and forward streams are as
        they were before it afterwards (an evaluation must not change the network it measures,
        nor the draws of the training that follows it)."""
        saved = {n: b.clone() for n, b in self.buffers.items()}
        states = None if self._generators is None else [g.get_state() for g in self._generators]
        try:
            yield
        finally:
            with torch.no_grad():
                for n, b in self.buffers.items():
                    b.copy_(saved[n])
            if states is None:
                self._generators = None
            else:
                for g, state_ in zip(self._generators, states):
                    g.set_state(state_)

    @property
    def label(self) -> str:
        """How the seeds ran: the path, and why not the fastest one where it is not."""
        return f"{self.path} ({self.reason})" if self.reason else self.path

    def tag(self, columns: list) -> list:
        """`columns` (results.Columns) with a `seeds_path` column saying how the seeds ran."""
        for c in columns:
            c.extra["seeds_path"] = [self.label] * len(c.value)
        return columns

    def block_matrices(self, i: int) -> dict[str, nn.Parameter]:
        """Block `i`'s weight matrices (per seed two or more dimensions), by name."""
        return {n: p for n, p in self._part(f"blocks.{i}")[1].items() if p.dim() >= 3}

    def block_params(self, i: int) -> dict[str, nn.Parameter]:
        """Block `i`'s parameters (stacked: a leading seed dimension), by name within the block."""
        return dict(self._part(f"blocks.{i}")[1])

    # -- choosing the path -------------------------------------------------------------------------
    def choose_path(self, seed_batched: bool, probe_rows: torch.Tensor | None, probes: bool = False,
                    modes: tuple[str, ...] = ("train",)) -> None:
        """Set `path` (and `reason`) from what runs on the probe rows in each of `modes`. A
        declared seed-batched block must give the loop's outputs (and probes); any other block
        runs under vmap if it can. Buffers and forward streams are restored afterwards: a block
        that updates its own must start the real pass as its seed's loop does."""
        if probe_rows is None:
            self.path, self.reason = ("stacked" if seed_batched else "vmap"), ""
            return
        outputs, errors = {}, {}

        def attempt(path: str, keep: int | None = None) -> bool:
            """Run `path` on the probe rows (the loop on the first `keep` seeds only), keeping
            the outputs of the first `keep` seeds (None: all)."""
            rows = probe_rows[:keep] if path == "loop" else probe_rows
            try:
                with self.preserved(), torch.no_grad():
                    found = []
                    for mode in modes:
                        with self.mode(mode):
                            found += [t[:keep] for t in _flat(self.trace(rows, probes, path))]
                outputs[path] = found
            except Exception as exc:
                errors[path] = f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return path in outputs

        # the loop, the reference, on two seeds: enough to catch a block that mixes seeds, and
        # cheap in a deep network of many seeds
        if seed_batched and attempt("stacked", 2) and attempt("loop", 2):
            if _close(outputs["stacked"], outputs["loop"]):
                self.path, self.reason = "stacked", ""
                return
            errors["stacked"] = "declared seed_batched, but its stacked outputs differ from the loop's"
        self.path = "vmap" if attempt("vmap") else "loop"
        self.reason = "; ".join(errors.values())


def _install(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make `tensors` (by full name) the module's own parameters and buffers."""
    for name, t in tensors.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        if leaf in sub._parameters:
            sub._parameters[leaf] = t
        else:
            sub._buffers[leaf] = t


def _flat(traced) -> list[torch.Tensor]:
    out = [traced[0], *traced[2]]
    if len(traced) > 3:
        out += [torch.as_tensor(v) for probes in traced[3] for v in (probes or {}).values()]
    return out


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Equal within float rounding, relative to each tensor's scale: a normalization over the
    two probe rows amplifies rounding in its elements near zero beyond any elementwise atol,
    while a block that mixes seeds differs at the tensor's own scale."""
    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        if x.shape != y.shape or not torch.equal(x.isnan(), y.isnan()):
            return False
        if x.numel() == 0:
            return True
        x, y = x.nan_to_num(nan=0.0).double(), y.nan_to_num(nan=0.0).double()
        diff = torch.where(x == y, 0.0, x - y).abs().max().item()  # equal infinities are equal
        finite = y[y.isfinite()]
        return diff <= 1e-5 * (finite.abs().max().item() if finite.numel() else 0.0) + 1e-6
    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))


# -- chunks of seeds, sized in bytes ---------------------------------------------------------------
def chunks(seeds: tuple[int, ...], bytes_per_seed: int, budget: int | None = None) -> Iterator[tuple[int, ...]]:
    """`seeds` in consecutive chunks of even sizes (differing by at most one seed), at least one
    seed each: as few as hold at most `budget` bytes each (default CHUNK_BYTES), or one fewer
    where each then holds at most CHUNK_SLACK more. A chunk costs the fixed overhead of its steps
    whatever its size (identity trains each chunk 200 steps: about 0.6 s for a last chunk of 2 seeds),
    so 64 seeds of which 31 fit run as 32 + 32, not 31 + 31 + 2."""
    budget = CHUNK_BYTES if budget is None else budget
    fit = max(1, budget // max(1, bytes_per_seed))
    count = -(-len(seeds) // fit)
    if count > 1 and -(-len(seeds) // (count - 1)) * bytes_per_seed <= budget * (1 + CHUNK_SLACK):
        count -= 1
    size, larger = divmod(len(seeds), max(1, count))
    start = 0
    for i in range(count):
        end = start + size + (i < larger)
        yield seeds[start:end]
        start = end


def param_bytes(nets: SeedNets, copies: int) -> int:
    """Bytes of `copies` copies of one seed's parameters (weights, gradients, optimizer moments)."""
    return sum(p.numel() * p.element_size() for p in nets.template.parameters()) * copies


def activation_bytes(nets: SeedNets, rows: int, tensors_per_width: float) -> int:
    """Bytes of one seed's activations over `rows` rows: `tensors_per_width` tensors per unit of
    the width its trunk's activations hold (SeedNets.held_width: the trunk input and the block
    outputs, a storage the blocks share counted once), for the inputs, outputs, saved
    intermediates and gradients a pass keeps."""
    return int(nets.cell.dtype.itemsize * tensors_per_width * rows * nets.held_width)


def seed_bytes(nets: SeedNets, rows: int, tensors_per_width: float, param_copies: int) -> int:
    """Bytes one seed keeps alive in a pass over `rows` rows: its activations
    (activation_bytes) and `param_copies` copies of its parameters (param_bytes)."""
    return activation_bytes(nets, rows, tensors_per_width) + param_bytes(nets, param_copies)


def run_in_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int) -> torch.Tensor:
    """fn over (seeds, N, ...) inputs `rows` rows at a time, concatenated along rows."""
    if x.shape[1] <= rows:
        return fn(x)
    return torch.cat([fn(x[:, i:i + rows]) for i in range(0, x.shape[1], rows)], dim=1)
