"""The optimizer of a stage and learning-rate schedules as functions of the batch id: lr(batch)."""

from __future__ import annotations

import math
from typing import Callable

import torch


def make_lr(optim, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """lr(batch) for `optim` (config.OptimConfig); an update of batch b uses lr(b).

    constant; step (x gamma at each milestone epoch); cosine (to 0 at the last
    batch); onecycle (linear warm-up, default 30% of the run, then cosine to 0).
    `warmup_epochs` adds a linear warm-up from 0 to any of them.
    """
    s, base = optim.schedule, optim.lr
    warmup = s.warmup_epochs * steps_per_epoch
    if s.name == "onecycle" and warmup == 0:
        warmup = 0.3 * total_steps

    def lr(batch: int) -> float:
        if batch < warmup:
            return base * (batch + 1) / warmup
        if s.name == "constant":
            return base
        if s.name == "step":
            epoch = batch // steps_per_epoch
            return base * s.gamma ** sum(epoch >= m for m in s.milestones)
        progress = (batch - warmup) / max(1.0, total_steps - warmup)  # cosine, onecycle
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return lr


def make_optimizer(optim, params: list) -> torch.optim.Optimizer | None:
    """The optimizer for `optim` (config.OptimConfig) over a stage's parameters; None for a stage without any."""
    if not params:
        return None
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The rate of the next step: the rate of the batch it applies, lr(batch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
