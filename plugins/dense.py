"""dense: each layer reads the concatenation of everything before it (DenseNet, Huang et al. 2017).

A network of D dense layers is one dense block of D layers: layer i sees the block's input and
all earlier layers' outputs, because each layer returns cat(x, act(W x + b)).

Memory and copies: each plain layer concatenates anew (``torch.cat``: O(D^2) features copied in
a block of D layers) and its Linear saves that whole input for backward (O(D^2) kept). With
``memory_efficient = true`` (Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets": shared storage for the concatenations) the block's features live in one buffer,
which the first layer allocates for the whole block (the builder is position-aware, so each
layer knows the block's final width): a layer reads a prefix of it and appends its new
features in place, its output is that longer prefix (the same memory), and backward reads the
prefix too: O(D)
features kept, none copied, with the same parameters, outputs and gradients (to the last bit
for one seed; stacked seeds' products may round differently). It needs tensors it can alias:
under torch.func.vmap the layer concatenates as the plain one does.
"""

import torch
from torch import nn

import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.layers import linear as linear_op

from ._common import base_params

_BUFFER = "_skipbench_dense_buffer"  # attribute of a memory-efficient layer's output: (buffer, version)


class _PrefixLinear(torch.autograd.Function):
    """linear(x, weight, bias) for x a prefix of a block's feature buffer.

    x is kept on ctx rather than saved for backward: later layers append to the buffer in
    place, which autograd's check of saved tensors would count as changing x (the prefix x
    covers never changes). Backward computes the gradients with the products autograd's own
    linear backward uses, for one seed or stacked seeds (skipbench.layers).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.x, ctx.has_bias = x, bias is not None
        ctx.save_for_backward(weight)
        return linear_op(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        x = ctx.x
        if weight.dim() == 2:  # one seed: rows are every leading dimension
            rows, xs = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
            grad_x = grad @ weight if ctx.needs_input_grad[0] else None
            grad_w = rows.t().mm(xs) if ctx.needs_input_grad[1] else None
            grad_b = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        else:  # stacked seeds: (seeds, rows, features)
            rows, xs = grad.reshape(weight.shape[0], -1, grad.shape[-1]), x.reshape(weight.shape[0], -1, x.shape[-1])
            grad_x = (rows @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
            grad_w = rows.mT @ xs if ctx.needs_input_grad[1] else None
            grad_b = rows.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class _Append(torch.autograd.Function):
    """The buffer's prefix x extended by `new`, written in place after it."""

    @staticmethod
    def forward(ctx, x, new, buffer, used):
        buffer[..., used:used + new.shape[-1]].copy_(new)
        ctx.used = used
        prefix = buffer[..., :used + new.shape[-1]]
        # the same memory as a tensor that autograd does not track as a view of the buffer:
        # later layers append to the buffer in place, which must not count as changing it
        return torch.empty(0, dtype=buffer.dtype, device=buffer.device).set_(
            buffer.untyped_storage(), prefix.storage_offset(), prefix.shape, prefix.stride())

    @staticmethod
    def backward(ctx, grad):
        return grad[..., :ctx.used], grad[..., ctx.used:], None, None


def _buffer_for(x: torch.Tensor, growth: int, final_width: int) -> torch.Tensor:
    """The feature buffer x is the prefix of, when it has room for `growth` more features;
    else a new one holding a copy of x, wide enough for the whole block (`final_width`), or
    with room for at least 8 more layers where the block is wider than it said."""
    buffer, version = getattr(x, _BUFFER, (None, None))
    used = x.shape[-1]
    if buffer is not None and version == x._version and buffer.shape[-1] >= used + growth:
        return buffer
    width = final_width if final_width >= used + growth else max(2 * (used + growth), used + 8 * growth)
    buffer = x.new_empty(*x.shape[:-1], width)
    buffer[..., :used].copy_(x.detach())
    return buffer


class DenseLayer(nn.Module):
    """cat(x, act(W x + b)): the width grows by the growth rate."""

    def __init__(self, in_dim, activation, bias, init, growth_rate, memory_efficient=False, block_index=0,
                 n_blocks=1):
        super().__init__()
        self.fc = linear(in_dim, growth_rate, init, bias)
        self.act = make_activation(activation)
        self.memory_efficient = memory_efficient
        # the block's width after its last layer: the first layer's buffer holds all of it, so
        # no layer copies the features into a wider one
        self.final_width = in_dim + (n_blocks - block_index) * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.memory_efficient or torch._C._functorch.is_functorch_wrapped_tensor(x):
            return torch.cat([x, self.act(self.fc(x))], dim=-1)
        buffer = _buffer_for(x, self.fc.weight.shape[-2], self.final_width)
        new = self.act(_PrefixLinear.apply(x, self.fc.weight, self.fc.bias))
        out = _Append.apply(x, new, buffer, x.shape[-1])
        setattr(out, _BUFFER, (buffer, out._version))
        return out


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("growth_rate", "int", 16, help="features each layer adds", minimum=1),
        Param("memory_efficient", "bool", False,
              help="keep only each layer's new features for backward, not its concatenated input (Pleiss et al. 2017)"),
    )
    yield BlockBuilder("dense", DenseLayer, params, layers_per_block=1, skip_kind="concatenative", seed_batched=True,
                       position=True,
                       description="y = [x, act(W x + b)]: features concatenate, width grows with depth")
