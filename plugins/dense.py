"""dense: each layer reads the concatenation of everything before it (DenseNet, Huang et al. 2017).

A network of D dense layers is one dense block of D layers: layer i sees the block's input and
all earlier layers' outputs, because each layer returns cat(x, act(W x + b)).

Memory: each plain layer's Linear saves its whole concatenated input for backward, so a block of
D layers keeps O(D^2) features. With ``memory_efficient = true`` (Pleiss et al. 2017,
"Memory-Efficient Implementation of DenseNets") a layer keeps only the pieces its input is
concatenated from (the block's input and each earlier layer's new features, tensors that are
alive anyway and shared by every layer) and rebuilds the concatenation transiently in backward:
O(D) features kept, with the same parameters, outputs and gradients.
"""

import torch
from torch import nn


import skipbench
from skipbench import BlockBuilder, Param
from skipbench.inits import activation as make_activation
from skipbench.inits import linear
from skipbench.layers import linear as linear_op

from ._common import base_params

_PARTS = "_skipbench_dense_parts"  # attribute of a memory-efficient layer's output: (version, pieces)


class _ConcatLinear(torch.autograd.Function):
    """linear(x, weight, bias) where x == cat(parts, -1), saving the parts instead of x.

    Backward computes the gradients as autograd's own linear backward does (the same products,
    so the same bits), for one seed or stacked seeds (skipbench.layers). Written in torch.func's
    style (setup_context, a generated vmap rule), so that seeds under vmap run it too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, *parts):
        return linear_op(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, bias, *parts = inputs
        ctx.save_for_backward(weight, *parts)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        weight, *parts = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad.mT @ torch.cat(parts, -1) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(-2) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, *(None,) * len(parts)


def _parts_of(x: torch.Tensor) -> list[torch.Tensor]:
    """The pieces `x` was concatenated from by a memory-efficient layer, or [x] when it was not
    (the block's input, a tensor made from an output, an output changed in place since)."""
    version, parts = getattr(x, _PARTS, (None, None))
    if version != x._version or sum(p.shape[-1] for p in parts) != x.shape[-1]:
        return [x]
    return parts


class DenseLayer(nn.Module):
    """cat(x, act(W x + b)): the width grows by the growth rate."""

    def __init__(self, in_dim, activation, bias, init, growth_rate, memory_efficient=False):
        super().__init__()
        self.fc = linear(in_dim, growth_rate, init, bias)
        self.act = make_activation(activation)
        self.memory_efficient = memory_efficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.memory_efficient:
            return torch.cat([x, self.act(self.fc(x))], dim=-1)
        parts = _parts_of(x)
        new = self.act(_ConcatLinear.apply(x, self.fc.weight, self.fc.bias, *parts))
        out = torch.cat([x, new], dim=-1)
        setattr(out, _PARTS, (out._version, [*parts, new]))
        return out


@skipbench.hookimpl
def skipbench_register_builders():
    params = base_params() + (
        Param("growth_rate", "int", 16, help="features each layer adds", minimum=1),
        Param("memory_efficient", "bool", False,
              help="keep only each layer's new features for backward, not its concatenated input (Pleiss et al. 2017)"),
    )
    yield BlockBuilder("dense", DenseLayer, params, layers_per_block=1, skip_kind="concatenative", seed_batched=True,
                       description="y = [x, act(W x + b)]: features concatenate, width grows with depth")
