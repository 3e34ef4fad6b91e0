"""Data-parallel replicas of the pipeline: what the D copies of a stage share.

Every replica of stage k computes the same update on its own slice of the global
batch; the raw gradients are averaged before the step (so momentum and weight
decay see the same values on every replica), and the weights stay identical.
FR does one backward per stage per iteration, so each backward is the last one
of its step: the all-reduce starts as soon as the input gradient has been sent
down (stage k-1 never waits for it) and is waited on just before the step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm


class GradientAverager:
    """The stage's gradients averaged over its replicas through one preallocated flat buffer."""

    def __init__(self, params, group, replicas: int):
        self.params = [p for p in params if p.requires_grad]
        self.group, self.replicas = group, replicas
        device = self.params[0].device
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32, device=device)
        self.views, offset = [], 0
        for p in self.params:
            self.views.append(self.flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        self.work = None

    def start(self) -> None:
        """Begin the all-reduce of the gradients as they are now (once per step)."""
        if self.work is not None:
            return
        for p, view in zip(self.params, self.views):
            if p.grad is None:
                view.zero_()
            else:
                view.copy_(p.grad)
        self.work = dist.all_reduce(self.flat, group=self.group, async_op=True)

    def wait(self) -> None:
        """The averaged gradients in every .grad: call just before the step."""
        self.start()
        self.work.wait()
        self.work = None
        self.flat.div_(self.replicas)
        for p, view in zip(self.params, self.views):
            if p.grad is None:
                p.grad = view.clone()
            else:
                p.grad.copy_(view)


def average_now(params, group, replicas: int) -> None:
    """Average the gradients of `params` over the replicas at once (a small model's, e.g. DNI's M_k)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat.div_(replicas)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_statistics(module: torch.nn.Module, group, replicas: int) -> None:
    """BatchNorm running statistics averaged over the replicas (before an evaluation or a checkpoint)."""
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf, group=group)
                buf.div_(replicas)


def sum_over(value: torch.Tensor, group) -> torch.Tensor:
    """`value` summed over the replicas of this stage (a host tensor on the stage's gloo group)."""
    value = value.detach().cpu().clone()
    dist.all_reduce(value, group=group)
    return value
