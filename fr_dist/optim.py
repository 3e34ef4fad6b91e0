"""A stage's optimizer, its step (per-stage clipping), and learning-rate schedules by batch id: lr(batch)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn


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


def make_optimizer(optim, module: nn.Module) -> torch.optim.Optimizer | None:
    """The optimizer for `optim` (config.SGDConfig or AdamWConfig) over a stage's parameters; None for a stage
    without any.

    SGD: one group, torch adds the weight decay to the gradient. AdamW: decoupled weight decay on the
    weight matrices and kernels only (`decayed`); biases, norms' parameters and embeddings get none.
    """
    params = list(module.parameters())
    if not params:
        return None
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    decay = {id(p) for p in decayed(module)}
    groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps)


def decayed(module: nn.Module) -> list[nn.Parameter]:
    """The parameters AdamW decays: those with 2 or more dimensions (weight matrices, kernels) that are no
    embedding's table; a table tied to a layer (a language model's head) counts as the embedding."""
    tables = {id(m.weight) for m in module.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    return [p for p in module.parameters() if p.ndim >= 2 and id(p) not in tables]


def apply_gradient(optimizer: torch.optim.Optimizer, module: nn.Module, lr: float,
                   clip_grad_norm: float | None, spike_tau: int | None = None) -> None:
    """Apply the stage's accumulated gradient with rate `lr`, first clipped to norm `clip_grad_norm` (null: not):
    the norm of this stage's gradient alone (docs/DESIGN.md, section 4: the optimizer). `spike_tau`: the SGD step
    with spike compensation for a gradient that delay old (None: the optimizer's own step)."""
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip_grad_norm)
    set_lr(optimizer, lr)
    if spike_tau is None:
        optimizer.step()
    else:
        spike_step(optimizer, spike_tau)
    optimizer.zero_grad(set_to_none=False)  # reuse the gradient buffers


@torch.no_grad()
def spike_step(optimizer: torch.optim.SGD, tau: int) -> None:
    """torch.optim.SGD's momentum step with spike compensation (Kosson et al., MLSys 2021) for delay `tau`.

    g = grad + weight_decay w, v <- m v + g (v = g at the first step), w <- w - lr (a v + b g) with
    a = m^n, b = (1 - m^n) / (1 - m), n = tau + 1 for Nesterov, else tau. Every g still contributes
    lr / (1 - m) in total, but tau steps earlier. tau = 0 is torch's step, bit for bit (a = 1, b = 0;
    Nesterov a = m, b = 1). Works on the optimizer's own momentum buffers, so its checkpoints are torch's.
    """
    for group in optimizer.param_groups:
        m, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
        n = tau + 1 if group["nesterov"] else tau
        a, b = m ** n, (1 - m ** n) / (1 - m)
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
            state = optimizer.state[p]
            v = state.get("momentum_buffer")
            if v is None:
                v = state["momentum_buffer"] = torch.clone(g).detach()
            else:
                v.mul_(m).add_(g)
            p.add_(g.mul(b).add_(v, alpha=a), alpha=-lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The rate of the next step: the rate of the batch it applies, lr(batch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
