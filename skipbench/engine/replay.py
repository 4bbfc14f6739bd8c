"""Many seeds' weights at the cost of their random draws: one build recorded, replayed per seed.

Building a deep network is mostly Python: module constructors, attribute bookkeeping, dtype
conversion. For a seed's weights only the tensor operations matter (``empty``, ``normal_``,
``fill_``, ``_to_copy``, ...). :class:`BuildReplay` records the aten operations of one build
(a ``TorchDispatchMode``), then, for another seed, seeds torch's generator as the build does
and re-runs just those operations: the parameters and buffers come out exactly as that seed's
own build makes them, at a fraction of the cost.

This holds when construction is straight-line tensor code whose randomness comes from torch's
generator (``torch.nn.init``, ``Tensor.normal_``, ...). A build that reads a tensor's values
back into Python (``.item()``, ``bool(t)``, ``if t < 0.5``, ``.tolist()``, ``.numpy()``: its
choices could depend on the draw) or that draws from Python's or NumPy's global generators
would replay the recorded seed's choices for every seed; such a build is never replayed
(:meth:`BuildReplay.record` returns None and says why). That decision is deterministic: it looks
at what the build did, not at whether another seed happened to come out the same.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable

import numpy
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .streams import seed_weights


def _key(t: torch.Tensor) -> tuple:
    """What makes two tensor objects the same data (an nn.Parameter and the tensor it wraps)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)


_ALIASES = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)
# operations that hand a tensor's values to Python (item, bool, float, int, comparisons in `if`)
_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
          torch.ops.aten.equal.default)


def _keys(values) -> list[tuple | None]:
    return [_key(a) if isinstance(a, torch.Tensor) else None for a in values]


def _nested(args: tuple, kwargs: dict) -> bool:
    """Whether tensors may sit deeper than a replay substitutes them: it replaces tensor arguments,
    tensors in a list argument, and tensor keywords."""
    def deep(a: Any) -> bool:
        return isinstance(a, dict) or (isinstance(a, (list, tuple)) and any(isinstance(x, (list, tuple, dict)) for x in a))

    return any(deep(a) for a in args) or any(
        isinstance(a, (list, tuple, dict)) and any(isinstance(x, torch.Tensor) for x in tree_flatten(a)[0])
        for a in kwargs.values())


class _Recorder(TorchDispatchMode):
    """Keeps every aten operation: its arguments, and the keys of its tensors taken when it ran
    (a Parameter's data can be swapped later, by Module.to). Holding the tensors keeps their
    storages alive, so no two recorded tensors share an address by reuse."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple] = []
        self.reads: list[str] = []  # how the build read values into Python, if it did
        self.filled: dict[int, tuple] = {}  # op index -> (dtype, device type, contiguous, numel) of a normal_

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # a build is never compiled, so __torch_dispatch__ needs no torch._dynamo.disable wrapper,
        # whose first call imports the compiler (about 1.2 s in every worker process)
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _READS:
            self.reads.append(str(func.overloadpacket.__name__))
        if func is _NORMAL:  # what it filled, as it was then (Module.to may convert it later)
            t = args[0]
            self.filled[len(self.ops)] = (t.dtype, t.device.type, t.is_contiguous(), t.numel())
        arg_keys = [_keys(a) if isinstance(a, (list, tuple)) else _key(a) if isinstance(a, torch.Tensor) else None
                    for a in args]
        kwarg_keys = {n: _key(a) for n, a in kwargs.items() if isinstance(a, torch.Tensor)}
        self.ops.append((func, args, kwargs, arg_keys, kwarg_keys, _nested(args, kwargs), _keys(tree_flatten(out)[0]), out))
        return out


class BuildReplay:
    """The tensor program of one build, re-run for other seeds (see the module's docstring)."""

    def __init__(self, ops: list, names: dict[str, torch.Tensor], filled: dict[int, tuple] | None = None):
        slot_of: dict[tuple, int] = {}
        self._program, stackable = [], True
        for op_index, (func, args, kwargs, arg_keys, kwarg_keys, nested, out_keys, _) in enumerate(ops):
            if nested:
                raise LookupError(f"{func}: arguments nested deeper than a list")
            subs = []  # (argument index, list index or None, slot), the keyword's name for index
            for i, k in enumerate(arg_keys):
                if isinstance(k, list):
                    subs += [(i, j, slot_of[kj]) for j, kj in enumerate(k) if kj is not None and kj in slot_of]
                elif k is not None and k in slot_of:
                    subs.append((i, None, slot_of[k]))
            subs += [(n, None, slot_of[k]) for n, k in kwarg_keys.items() if k in slot_of]
            targets = [(j, slot_of.setdefault(k, len(slot_of))) for j, k in enumerate(out_keys) if k is not None]
            if func in _ALIASES and [s for _, _, s in subs] == [s for _, s in targets]:
                continue  # nn.Parameter(t) detaches t: the same data, already in its slot
            stackable = stackable and _stackable(func, args, kwargs, subs, (filled or {}).get(op_index))
            self._program.append((func, args, kwargs, subs, targets))
        self.n_slots = len(slot_of)
        missing = [name for name, t in names.items() if _key(t) not in slot_of]
        if missing:
            raise LookupError(f"not made by the recorded operations: {', '.join(missing)}")
        self._slots = {name: slot_of[_key(t)] for name, t in names.items()}
        self.stackable = stackable
        self._draws = sum(args[0].numel() for func, args, *_ in self._program if func is _NORMAL)

    @classmethod
    def record(cls, build: Callable[[], nn.Module]) -> tuple[nn.Module, "BuildReplay | None", str]:
        """Run `build()` while recording; return its module, the replay, and why there is no
        replay (None and a reason when the build read values into Python, drew from Python's or
        NumPy's generators, or made a parameter or buffer outside the recorded operations)."""
        recorder = _Recorder()
        before = (random.getstate(), numpy.random.get_state(legacy=False))
        with recorder, _values_read_by(recorder.reads):
            module = build()
        after = (random.getstate(), numpy.random.get_state(legacy=False))
        if recorder.reads:
            return module, None, f"the build reads tensor values into Python ({', '.join(sorted(set(recorder.reads)))})"
        if before[0] != after[0]:
            return module, None, "the build draws from Python's random module"
        if not _same_numpy_state(before[1], after[1]):
            return module, None, "the build draws from NumPy's global generator"
        try:
            return module, cls(recorder.ops, state(module), recorder.filled), ""
        except LookupError as exc:
            return module, None, f"the build cannot be replayed: {exc}"

    def run(self, seed: int) -> dict[str, torch.Tensor]:
        """The parameters and buffers (by name) that a build seeded with `seed` makes."""
        seed_weights(seed)
        slots: list[Any] = [None] * self.n_slots
        with torch.no_grad():
            self._execute(slots)
        return {name: slots[slot] for name, slot in self._slots.items()}

    def run_stacked(self, seeds: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Every seed's parameters and buffers at once, stacked along a leading seed dimension
        (for a `stackable` program, see _stackable): each seed's draws are one normal_ call on
        its own generator, the rest of the program runs once on the stacks."""
        buffer = torch.empty(len(seeds), self._draws)
        for j, seed in enumerate(seeds):
            seed_weights(seed)
            buffer[j].normal_()
        slots: list[Any] = [None] * self.n_slots
        with torch.no_grad():
            self._execute(slots, buffer)
        return {name: slots[slot] for name, slot in self._slots.items()}

    def _execute(self, slots: list, stacked: torch.Tensor | None = None) -> None:
        """Run the program into `slots`; with `stacked` (seeds x draws), on stacks of seeds."""
        offset = 0
        for func, args, kwargs, subs, targets in self._program:
            if stacked is not None and func in _MAKERS:
                args = ([stacked.shape[0], *args[0]], *args[1:])
            elif stacked is not None and func is _NORMAL:
                shape, std = args[0].shape, args[2] if len(args) > 2 else kwargs.get("std", 1.0)
                draws = stacked[:, offset:offset + args[0].numel()]
                offset += args[0].numel()
                slots[targets[0][1]] = draws.mul_(std).view(stacked.shape[0], *shape)
                continue
            if subs:
                args, kwargs = list(args), dict(kwargs)
                for i, j, slot in subs:
                    if isinstance(i, str):
                        kwargs[i] = slots[slot]
                    elif j is None:
                        args[i] = slots[slot]
                    else:
                        args[i] = list(args[i])
                        args[i][j] = slots[slot]
            out = func(*args, **kwargs)
            if targets:
                outs = [out] if isinstance(out, torch.Tensor) else tree_flatten(out)[0]
                for j, slot in targets:
                    slots[slot] = outs[j]


_NORMAL = torch.ops.aten.normal_.default
# operations that make a tensor of a given size (their first argument): a stack's gets a leading
# seed dimension
_MAKERS = {torch.ops.aten.empty.memory_format, torch.ops.aten.zeros.default, torch.ops.aten.ones.default,
           torch.ops.aten.full.default}
# operations that act the same on a stack of seeds' tensors as on one seed's: elementwise, no
# shapes in their arguments
_ELEMENTWISE = {torch.ops.aten.fill_.Scalar, torch.ops.aten.zero_.default, torch.ops.aten._to_copy.default,
                torch.ops.aten.detach.default, torch.ops.aten.alias.default, torch.ops.aten.copy_.default,
                torch.ops.aten.mul_.Scalar, torch.ops.aten.div_.Scalar, torch.ops.aten.add_.Scalar}


def _stackable(func, args, kwargs, subs, filled: tuple | None) -> bool:
    """Whether one operation of a build can run on stacks of seeds (BuildReplay.run_stacked):
    `empty`, `zeros`, `ones`, `full` (the stack gets a leading dimension), an elementwise operation whose tensor
    arguments are all the build's own, or a normal_(0, std) fill of a contiguous float32 CPU
    tensor of a multiple of 16 elements (`filled`: the tensor as it was then). torch's sampler
    draws such a fill's uniforms in order and turns each block of 16 into normals, so fills
    drawn from one buffer equal their own draws bit for bit (N(0, std) being round(N(0, 1)
    * std) there)."""
    tensors = sum(isinstance(a, torch.Tensor) for a in args) + sum(isinstance(a, torch.Tensor) for a in kwargs.values())
    if func in _MAKERS:
        return True
    if func is _NORMAL:
        if filled is None or kwargs.get("generator") is not None or len(subs) != 1:
            return False
        dtype, device, contiguous, numel = filled
        mean = args[1] if len(args) > 1 else kwargs.get("mean", 0.0)
        return (mean == 0 and dtype == torch.float32 and device == "cpu" and contiguous
                and numel >= 16 and numel % 16 == 0)
    return func in _ELEMENTWISE and len(subs) == tensors


@contextlib.contextmanager
def _values_read_by(reads: list[str]):
    """Note in `reads` every ``Tensor.tolist``, ``Tensor.numpy`` and ``numpy.asarray(tensor)``
    made inside the block: they read values without an aten operation the recorder would see."""
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy", "__array__")}

    def spy(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return originals[name](self, *args, **kwargs)
        return read

    for name in originals:
        setattr(torch.Tensor, name, spy(name))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def _same_numpy_state(a: dict, b: dict) -> bool:
    return a["bit_generator"] == b["bit_generator"] and all(
        numpy.array_equal(a["state"][k], b["state"][k]) for k in a["state"]) and a.get("has_gauss") == b.get("has_gauss")


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name (the names stack_module_state uses)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two states hold the same names, dtypes, shapes and values (a NaN never equals
    itself, so a state holding one is never taken as replayed exactly)."""
    return a.keys() == b.keys() and all(
        x.dtype == b[n].dtype and x.shape == b[n].shape and torch.equal(x, b[n]) for n, x in a.items())
