"""Many seeds at the cost of few: the seeds' networks stacked and run in one vectorized pass.

Each seed's network is built exactly as the per-seed loop builds it (same generator, same draws),
then the weights are stacked along a leading seed dimension (torch.func.stack_module_state) and
one ``vmap(functional_call)`` runs every seed at once. Seeds never interact: a loss summed over
seeds has, for each seed's weights, exactly that seed's gradient, and elementwise optimizers
(Adam, SGD) on the stacked tensors update each seed as its own optimizer would.

A block that cannot run under vmap (``.item()`` or data-dependent Python control flow in its
forward, random draws such as dropout) makes :func:`try_stack` return None, and the
measurement falls back to its per-seed loop. Seeds are processed in chunks small enough to keep
the stacked activations under ``MAX_ELEMENTS``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..network import SkipNet
from . import Cell
from .replay import BuildReplay, same_state, state

MAX_ELEMENTS = 2**27  # stacked activation elements a chunk may hold (512 MiB of float32)


class TracedNet(nn.Module):
    """A SkipNet whose forward also returns every block's output and adds a `delta` to every
    block's input: the gradient with respect to a zero delta is dL/dx at that input."""

    def __init__(self, net: SkipNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, deltas: list[torch.Tensor]):
        """(output, [trunk input, block 0's output, block 1's output, ...])."""
        net = self.net
        x = net.stem(x)
        outputs = [x]
        for block, delta in zip(net.blocks, deltas):
            x = block(x + delta)
            outputs.append(x)
        return net.head(x), outputs


@dataclass
class Stacked:
    """The stacked weights of several seeds' networks and a stateless copy to run them with."""

    seeds: tuple[int, ...]
    module: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    widths: list[int]

    def __call__(self, *args):
        """Run every seed: each argument has a leading seed dimension."""
        def one(params, buffers, *a):
            return functional_call(self.module, (params, buffers), a)

        # randomness="error": a block that draws random numbers in its forward (dropout) would
        # draw differently under vmap than in its own seed's loop, and its draws would depend on
        # the other seeds of the chunk; such blocks fail the probe and run seed by seed
        return vmap(one, randomness="error")(self.params, self.buffers, *args)

    def block_params(self, prefix: str, n_blocks: int) -> list[dict[str, torch.Tensor]]:
        """For each block, its stacked parameters by name."""
        out = [{} for _ in range(n_blocks)]
        for name, p in self.params.items():
            if name.startswith(prefix):
                index, _, rest = name[len(prefix):].partition(".")
                out[int(index)][rest] = p
        return out


def chunks(cell: Cell, rows: int) -> Iterator[tuple[int, ...]]:
    """The cell's seeds in chunks whose stacked activations stay under MAX_ELEMENTS."""
    per_seed = max(1, rows * sum(cell.widths))
    size = max(1, min(len(cell.seeds), MAX_ELEMENTS // per_seed))
    for start in range(0, len(cell.seeds), size):
        yield cell.seeds[start:start + size]


def _replay(cell: Cell, seed: int) -> tuple[SkipNet, BuildReplay] | None:
    """`seed`'s network and the replay of its build for the cell's other seeds, when that replay
    gives another seed's weights bit for bit (recorded and checked once per cell); else None."""
    if cell._replay is None:
        cell.widths  # probed outside the recording: a probe's forward pass makes no weight
        net, replay = BuildReplay.record(lambda: cell.build(seed))
        other = next((s for s in cell.seeds if s != seed), None)
        exact = replay is not None and other is not None and same_state(replay.run(other), state(cell.build(other)))
        cell._replay = (net, replay) if exact else False
    return cell._replay or None


def seed_states(cell: Cell, seeds: tuple[int, ...]) -> tuple[SkipNet, list[dict[str, torch.Tensor]]]:
    """A network of the cell (the template to run the stacked weights with) and every seed's
    parameters and buffers, each exactly as that seed's own build makes them (replayed where
    the replay is exact, see replay.py)."""
    recorded = _replay(cell, seeds[0]) if len(cell.seeds) > 1 else None
    if recorded is not None:
        net, replay = recorded
        return net, [replay.run(s) for s in seeds]
    net = cell.build(seeds[0])
    return net, [state(net)] + [state(cell.build(s)) for s in seeds[1:]]


def _stack(states: list[dict[str, torch.Tensor]], module: nn.Module, prefix: str):
    """Stacked parameters (leaves that require grad) and buffers, named as in `module`."""
    params = {f"{prefix}{n}": torch.stack([s[n] for s in states]).detach().requires_grad_(p.requires_grad)
              for n, p in module.named_parameters()}
    buffers = {f"{prefix}{n}": torch.stack([s[n] for s in states]) for n, _ in module.named_buffers()}
    return params, buffers


def try_stack(cell: Cell, seeds: tuple[int, ...], wrap: bool | type[nn.Module],
              probe: Callable[[list[int]], tuple]) -> Stacked | None:
    """Stack the networks of `seeds` and check that they run under vmap on the (small) arguments
    `probe(widths)` returns; None when a block cannot be vectorized.

    `wrap`: False runs the network itself; a module class taking the network (its attribute
    `net`) runs that instead; True is TracedNet."""
    net, states = seed_states(cell, seeds)
    probe = probe(net.widths)
    wrapper = TracedNet if wrap is True else wrap or None
    params, buffers = _stack(states, net, "net." if wrapper else "")
    stateless = copy.deepcopy(wrapper(net) if wrapper else net).to("meta")
    stacked = Stacked(seeds, stateless, params, buffers, net.widths)
    try:
        with torch.no_grad():  # on copies of the buffers: a block that updates its own (a
            # counter, running statistics) must start the real pass as its seed's loop does
            Stacked(seeds, stateless, params, {k: b.clone() for k, b in buffers.items()}, stacked.widths)(*probe)
    except Exception:
        return None
    return stacked


def zero_deltas(cell: Cell, n_seeds: int, rows: int, widths: list[int]) -> list[torch.Tensor]:
    """Zero deltas, one per block input, that require grad (see TracedNet)."""
    return [cell.place(torch.zeros(n_seeds, rows, w)).requires_grad_(True) for w in widths[:-1]]
