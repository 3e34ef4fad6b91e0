"""Backpropagation: one process, or the naive model-parallel pipeline for K > 1.

Every batch runs a forward wavefront up the stages and a backward wavefront
down before the next batch enters: the backward-locked baseline FR removes.
Stage k in iteration t: receive batch t, forward with a graph, send, wait for
the gradient of batch t, backward, send the input gradient down, step.
"""

from __future__ import annotations

import torch

from fr_dist.algos.base import Worker
from fr_dist.runtime.actions import Action, last_stage, source


def iterations(stage: int, K: int, T: int) -> int:
    return T


def schedule(stage: int, K: int, t: int, T: int) -> list[Action]:
    if stage == K - 1:
        return last_stage(stage, t)
    acts = [source(stage, t), Action("forward", t), Action("send_x", t), Action("post_g", t), Action("backward", t)]
    if stage > 0:
        acts.append(Action("send_g", t))
    return acts + [Action("step", t)]


class Worker(Worker):
    """A non-last BP stage: keeps the graph of the one batch in flight."""

    def state_dict(self) -> dict:
        return {}  # between iterations nothing is held: the graph lives within one

    def load_state_dict(self, state: dict) -> None:
        pass

    def forward(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        self.x = x.detach().requires_grad_(self.stage > 0)
        with self.graph_bytes(self.x):
            self.h = self.module(self.x)
        return self.h.detach()

    def backward(self, batch: int, grad: torch.Tensor) -> torch.Tensor | None:
        self.h.backward(grad)
        self.h = None
        return self.x.grad
