"""Staleness compensation of one stage of fr or ddg (docs/DESIGN.md, Staleness compensation).

Stage k applies the error gradient of a batch tau = K-1-k iterations after its
forward. Each option changes only stages with tau > 0, so the last stage, and
K = 1, are exactly what they are without it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn as nn


def delay_warmup(lr_of: Callable[[int], float], tau: int, warmup_batches: float) -> Callable[[int], float]:
    """PipeMare's rate for a stage with delay tau: lr(b) / tau^(1 - min(b / T_w, 1)), T_w in batches."""

    def lr(batch: int) -> float:
        return lr_of(batch) / tau ** (1 - min(batch / warmup_batches, 1))

    return lr


class Compensation:
    """What the options (config.DelayedConfig or FRConfig) change for stage `stage` of K.

    `lr_of`: the stage's rate (with the delay warm-up), `spike_tau`: the delay its SGD step compensates
    (None: torch's step), `received(grad)`: the error gradient after shrinking, `predicted(batch)`: the
    weights a no-graph forward runs with.
    """

    def __init__(self, options, stage: int, K: int, module: nn.Module, optimizer, lr_of: Callable[[int], float],
                 steps_per_epoch: int):
        self.tau = K - 1 - stage
        delayed = self.tau > 0 and options is not None
        warmup = getattr(options, "delay_warmup_epochs", None) if delayed else None
        self.lr_of = delay_warmup(lr_of, self.tau, warmup * steps_per_epoch) if warmup and self.tau > 1 else lr_of
        self.spike_tau = self.tau if delayed and options.spike_compensation and optimizer is not None else None
        self.shrink = getattr(options, "grad_shrink", None) if delayed else None
        self.optimizer = optimizer if delayed and getattr(options, "weight_prediction", False) else None
        if self.optimizer is not None:  # the one extra copy: the real weights while the forward sees predicted ones
            self.params = [p for p in module.parameters()]
            self.real = [torch.empty_like(p) for p in self.params]

    def received(self, grad: torch.Tensor) -> torch.Tensor:
        """The error gradient a stage backpropagates: scaled by beta (Zhuang et al.), a new tensor."""
        return grad if self.shrink is None else grad * self.shrink

    @contextmanager
    def predicted(self, batch: int):
        """Inside: the weights are w - lr tau v, those the stage is predicted to hold when it replays `batch`
        (v: the momentum buffer; before the first step, none: the weights as they are). Restored after."""
        if self.optimizer is None:
            yield
            return
        velocity = [self.optimizer.state.get(p, {}).get("momentum_buffer") for p in self.params]
        alpha = -(self.lr_of(batch) * self.tau)
        with torch.no_grad():
            for p, real, v in zip(self.params, self.real, velocity):
                if v is not None:
                    real.copy_(p)
                    p.add_(v, alpha=alpha)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, real, v in zip(self.params, self.real, velocity):
                    if v is not None:
                        p.copy_(real)
