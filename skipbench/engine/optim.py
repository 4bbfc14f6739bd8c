"""Adam and SGD for stacked seeds: torch.optim's own fused kernels, without its Python wrapper.

``torch.optim.Adam(params, lr, fused=True)`` and ``torch.optim.SGD(params, lr, fused=True)``
(no momentum, no weight decay) update every element on its own, so seeds stacked in one tensor
are updated exactly as each seed's own optimizer would. They do that with two kernels,
``torch._fused_adam_`` and ``torch._fused_sgd_``; the rest of torch.optim is bookkeeping, whose
``step`` imports torch._dynamo on its first call (about 1.2 s, in every worker process of a run,
before its first training step). `Adam` and `SGD` here call the same kernels with the same
arguments and state (a float32 step count per parameter on its device, zero moments made at its
first gradient; parameters without a gradient skipped), so their updates are bit-identical to
torch.optim's: tests/test_engine.py compares them step by step.
"""

from __future__ import annotations

import torch


class _Fused:
    """What both optimizers share: the parameters, and zero_grad."""

    def __init__(self, params, lr: float):
        self.params = list(params)
        self.lr = float(lr)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (as torch.optim's zero_grad(set_to_none=True))."""
        for p in self.params:
            p.grad = None

    def _groups(self) -> list[list[torch.Tensor]]:
        """The parameters that have a gradient, by device and dtype (one kernel call each, as
        torch.optim groups them)."""
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in self.params:
            if p.grad is not None:
                groups.setdefault((p.device, p.dtype), []).append(p)
        return list(groups.values())


class Adam(_Fused):
    """torch.optim.Adam(params, lr, betas, eps, fused=True), as one fused kernel call per step."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        self.betas, self.eps = betas, eps
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        for params in self._groups():
            for p in params:
                if p not in self.state:  # (step, exp_avg, exp_avg_sq), made as torch.optim makes them
                    self.state[p] = (torch.zeros((), dtype=torch.float32, device=p.device),
                                     torch.zeros_like(p, memory_format=torch.preserve_format),
                                     torch.zeros_like(p, memory_format=torch.preserve_format))
            steps, avgs, sqs = (list(s) for s in zip(*(self.state[p] for p in params)))
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, [p.grad for p in params], avgs, sqs, [], steps, amsgrad=False, lr=self.lr,
                               beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                               maximize=False, grad_scale=None, found_inf=None)


class SGD(_Fused):
    """torch.optim.SGD(params, lr, fused=True): plain gradient descent, one fused kernel call."""

    @torch.no_grad()
    def step(self) -> None:
        """One SGD update of every parameter that has a gradient."""
        for params in self._groups():
            torch._fused_sgd_(params, [p.grad for p in params], [], weight_decay=0.0, momentum=0.0, lr=self.lr,
                              dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
                              grad_scale=None, found_inf=None)
