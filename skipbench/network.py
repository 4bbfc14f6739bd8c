"""Stack a variant's blocks into a deep network: stem -> trunk -> head.

Depth counts weight layers on the trunk's main path: a builder with ``layers_per_block = k``
gives ``depth // k`` blocks. Each block's output width is found by running it on a probe input,
never by asking the plugin to predict it.
"""

from __future__ import annotations

import torch
from torch import nn

from .inits import linear
from .registry import Registry
from .specs import BlockBuilder, UsageError, Variant


class BlockFault(Exception):
    """A plugin's block raised or produced an output of the wrong shape."""


def block_count(layers_per_block: int, depth: int, variant: str = "") -> int:
    """Number of blocks for `depth` weight layers; UsageError when the depth is impossible."""
    if depth < 1:
        raise UsageError(f"depth must be >= 1, got {depth}")
    if depth < layers_per_block:
        raise UsageError(f"depth {depth} is impossible for variant {variant!r}: "
                         f"{layers_per_block} weight layers per block, so the minimum depth is {layers_per_block}")
    return depth // layers_per_block


def probe_width(block: nn.Module, in_dim: int, name: str = "") -> int:
    """Run `block` on a probe batch and return its output width, checking the output's shape."""
    was_training = block.training
    block.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            param = next(block.parameters(), None)
            device = param.device if param is not None else "cpu"
            out = block(torch.zeros(2, in_dim, device=device))
    except Exception as exc:
        raise BlockFault(f"block {name!r} raised on a ({2}, {in_dim}) input: {type(exc).__name__}: {exc}") from exc
    finally:
        block.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BlockFault(f"block {name!r} must map (batch, {in_dim}) to (batch, width); it returned {shape}")
    return int(out.shape[1])


def held_width(net: nn.Module) -> int:
    """Elements per sample that the trunk's activations hold in a forward pass: its input and
    every block's output, each distinct storage once. Where blocks write their outputs into one
    buffer they share (the memory-efficient dense block), the buffer counts once, not once per
    block; elsewhere this is the sum of the widths. Found, as probe_width finds a width, by
    running the trunk on a probe batch (eval mode, no gradients, torch's generator restored):
    run it on a network whose state may change, never on one whose weights are a seed's
    record."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            param = next(net.parameters(), None)
            x = torch.zeros(2, net.widths[0], dtype=param.dtype if param is not None else None,
                            device=param.device if param is not None else "cpu")
            held = [net.stem(x)]  # all alive at once: a freed storage's address could be reused
            for block in net.blocks:
                held.append(block(held[-1]))
    finally:
        net.train(was_training)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
    return sum(storages.values()) // (2 * held[0].element_size())


def build_block(builder: BlockBuilder, in_dim: int, params: dict, block_index: int, n_blocks: int) -> nn.Module:
    """Block `block_index` of a trunk of `n_blocks` blocks, built by `builder` with `params` (and
    its position, when the builder declares `position`). The build's own exceptions propagate;
    BlockFault when it returns something other than a module."""
    position = {"block_index": block_index, "n_blocks": n_blocks} if builder.position else {}
    block = builder.build(in_dim, **params, **position)
    if not isinstance(block, nn.Module):
        raise BlockFault(f"builder {builder.name!r} returned {type(block).__name__}, not a torch.nn.Module")
    return block


class SkipNet(nn.Module):
    """stem -> blocks -> head, with the widths found while building."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, widths: list[int]):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.widths = widths  # trunk input width, then each block's output width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    @property
    def out_width(self) -> int:
        """Width of the trunk's output (before the head)."""
        return self.widths[-1]


def _stem(kind: str, width: int, init: str) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    layer = linear(width, width, init)
    return nn.Sequential(layer, nn.ReLU()) if kind == "linear-relu" else layer


def build(registry: Registry, variant: Variant, depth: int, width: int, device: str | torch.device = "cpu",
          widths: list[int] | None = None) -> SkipNet:
    """Build the network of `variant` at `depth` weight layers and `width` input features.

    The caller seeds torch's generator; building draws the stem, the blocks in order, then the
    head. `widths`, from an earlier build of the same network with another seed, skips probing
    the blocks again (the same blocks have the same widths whatever their weights).
    """
    if width < 1:
        raise UsageError(f"width must be >= 1, got {width}")
    builder = registry.builders[variant.builder]
    params = registry.params_of(variant)
    last_params = registry.params_of(variant, last_block=True)
    net_opts = variant.network
    n_blocks = block_count(builder.layers_per_block, depth, variant.name)
    stem = _stem(net_opts["stem"], width, net_opts["stem_init"])
    known, widths, blocks = widths, [width], []
    for i in range(n_blocks):
        try:
            block = build_block(builder, widths[-1], params if i < n_blocks - 1 else last_params, i, n_blocks)
        except BlockFault:
            raise
        except Exception as exc:
            raise BlockFault(f"builder {builder.name!r} raised building block {i}: {type(exc).__name__}: {exc}") from exc
        widths.append(known[i + 1] if known else probe_width(block, widths[-1], builder.name))
        blocks.append(block)
    head_kind = net_opts["head"]
    if head_kind == "linear" or (head_kind == "auto" and widths[-1] != width):
        head = linear(widths[-1], width, net_opts["head_init"])
    else:
        head = nn.Identity()
    return SkipNet(stem, blocks, head, widths).to(device=device, dtype=getattr(torch, net_opts["dtype"]))
