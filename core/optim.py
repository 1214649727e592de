"""The recipe's optimizer, built the same way by the trainer and the benchmarks."""

from __future__ import annotations

from typing import Iterable

import torch


def make_sgd(params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float, weight_decay: float,
             device: torch.device) -> torch.optim.SGD:
    """SGD with one fused kernel per step on CUDA, and zero momentum buffers from the start.

    Fused SGD creates missing momentum buffers with `empty_like` and keeps them even when a
    GradScaler skips the step (inf/NaN gradients, as on the first fp16 steps), so the next step
    would read `momentum * garbage + g`. Zero buffers give exactly the first-step result of a
    fresh buffer (`buf = g` with dampening 0), and a skipped step leaves them zero.
    """
    params = [p for p in params if p.requires_grad]
    fused = device.type == "cuda"
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                fused=True if fused else None, foreach=None)
    if momentum:
        for p in params:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer
