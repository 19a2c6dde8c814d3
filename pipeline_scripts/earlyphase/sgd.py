"""The paper's optimizer: SGD with momentum and weight decay (Appendix A), as PyTorch's fused
kernel (``torch._fused_sgd_``, one kernel per device and dtype), called directly.

Why not ``torch.optim.SGD(fused=True)``, which calls the same kernel: every ``torch.optim``
optimizer imports ``torch._dynamo`` when it is constructed (``Optimizer.add_param_group`` is
wrapped in ``torch._disable_dynamo``, which imports it lazily), 1.2-1.4 s of CPU in every training
job's start-up, more than the whole training of a smoke-scale job. The updates are bitwise those of
``torch.optim.SGD(fused=True)`` (tests/unit/test_train.py), which was measured 5 % faster than the
foreach implementation on a 2-core CPU.
"""

from __future__ import annotations

import torch


class SGD:
    """SGD over ``params`` (no dampening, no Nesterov): ``zero_grad``, ``step``, a ``state_dict``
    of the momentum buffers, and ``lr``, which the training loop sets for each step's schedule."""

    def __init__(self, params, *, lr: float, momentum: float, weight_decay: float):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        # one per parameter, made by its first step (as torch.optim keeps them in its state)
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        first = self.momentum != 0 and all(self.momentum_buffers[i] is None for i in live)
        if first:  # the kernel initialises them (is_first_step): momentum_buffer = d_p
            for i in live:
                self.momentum_buffers[i] = torch.empty_like(self.params[i].grad)
        groups: dict[tuple, list[int]] = {}
        for i in live:
            p = self.params[i]
            groups.setdefault((p.device, p.dtype), []).append(i)
        for members in groups.values():
            torch._fused_sgd_(
                [self.params[i] for i in members],
                [self.params[i].grad for i in members],
                [] if self.momentum == 0 else [self.momentum_buffers[i] for i in members],
                weight_decay=self.weight_decay,
                momentum=self.momentum,
                lr=self.lr,
                dampening=0.0,
                nesterov=False,
                maximize=False,
                is_first_step=first,
                grad_scale=None,
                found_inf=None,
            )

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum_buffers": list(self.momentum_buffers)}

    def load_state_dict(self, state: dict) -> None:
        buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(
                f"optimizer state for {len(buffers)} parameters, this model has {len(self.params)}"
            )
        self.lr = state["lr"]
        self.momentum_buffers = [
            None if b is None else b.to(device=p.device, dtype=p.dtype)
            for b, p in zip(buffers, self.params, strict=True)
        ]
