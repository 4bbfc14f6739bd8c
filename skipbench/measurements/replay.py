"""Many seeds' weights at the cost of their random draws: one build recorded, replayed per seed.

Building a deep network is mostly Python: module constructors, attribute bookkeeping, dtype
conversion. For a seed's weights only the tensor operations matter (``empty``, ``normal_``,
``fill_``, ``_to_copy``, ...). :class:`BuildReplay` records the aten operations of one build
(a ``TorchDispatchMode``), then, for another seed, seeds torch's generator as the build does
and re-runs just those operations: the parameters and buffers come out exactly as that seed's
own build makes them, at a fraction of the cost.

This holds when construction is straight-line tensor code whose randomness comes from torch's
generator (``torch.nn.init``, ``Tensor.normal_``, ...). A build that draws from Python's or
NumPy's generators, or branches on random values, would replay another seed's choices; so the
replay is checked against a real build of a second seed, bit for bit, and not used when they
differ (the caller then builds every seed).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import seed_torch


def _key(t: torch.Tensor) -> tuple:
    """What makes two tensor objects the same data (an nn.Parameter and the tensor it wraps)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)


_ALIASES = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)


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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        arg_keys = [_keys(a) if isinstance(a, (list, tuple)) else _key(a) if isinstance(a, torch.Tensor) else None
                    for a in args]
        kwarg_keys = {n: _key(a) for n, a in kwargs.items() if isinstance(a, torch.Tensor)}
        self.ops.append((func, args, kwargs, arg_keys, kwarg_keys, _nested(args, kwargs), _keys(tree_flatten(out)[0]), out))
        return out


class BuildReplay:
    """The tensor program of one build, re-run for other seeds (see the module's docstring)."""

    def __init__(self, ops: list, names: dict[str, torch.Tensor]):
        slot_of: dict[tuple, int] = {}
        self._program = []
        for func, args, kwargs, arg_keys, kwarg_keys, nested, out_keys, _ in ops:
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
            self._program.append((func, args, kwargs, subs, targets))
        self.n_slots = len(slot_of)
        missing = [name for name, t in names.items() if _key(t) not in slot_of]
        if missing:
            raise LookupError(f"not made by the recorded operations: {', '.join(missing)}")
        self._slots = {name: slot_of[_key(t)] for name, t in names.items()}

    @classmethod
    def record(cls, build: Callable[[], nn.Module]) -> tuple[nn.Module, "BuildReplay | None"]:
        """Run `build()` while recording; return its module and the replay (None when some
        parameter or buffer was not made by recorded operations)."""
        recorder = _Recorder()
        with recorder:
            module = build()
        try:
            return module, cls(recorder.ops, state(module))
        except LookupError:
            return module, None

    def run(self, seed: int) -> dict[str, torch.Tensor]:
        """The parameters and buffers (by name) that a build seeded with `seed` makes."""
        seed_torch(seed)
        slots: list[Any] = [None] * self.n_slots
        with torch.no_grad():
            self._execute(slots)
        return {name: slots[slot] for name, slot in self._slots.items()}

    def _execute(self, slots: list) -> None:
        for func, args, kwargs, subs, targets in self._program:
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


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name (the names stack_module_state uses)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two states hold the same names, dtypes, shapes and values (a NaN never equals
    itself, so a state holding one is never taken as replayed exactly)."""
    return a.keys() == b.keys() and all(
        x.dtype == b[n].dtype and x.shape == b[n].shape and torch.equal(x, b[n]) for n, x in a.items())
