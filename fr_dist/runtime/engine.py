"""Executes a rank's actions: data, links and the algorithm's worker.

The engine knows nothing of any algorithm: the schedule says what to do, the
worker computes, the links move tensors. It keeps the few values that flow
between actions of one iteration (the input, the output, the input gradient).
"""

from __future__ import annotations

import time

import torch

from fr_dist.runtime.actions import Action

COMPUTE = ("forward", "backward", "local_backward", "loss", "step", "train_step", "score")


def eval_id(e: int) -> int:
    """Link header of evaluation batch e: negative, never a training batch id."""
    return -1 - e


class Engine:
    def __init__(self, worker, data, links: dict, device: torch.device):
        self.worker, self.data, self.links, self.device = worker, data, links, device
        self.x = self.h = self.grad_x = self.y = None
        self.losses: list[torch.Tensor] = []  # of the last stage, one per batch
        self.correct = 0  # evaluation: correct predictions so far
        self.busy_s = 0.0  # seconds in compute actions, waits for an error gradient left out
        self.history: list[Action] = []  # recent actions, printed when a rank fails

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            self.history = self.history[-31:] + [action]
            if action.op in COMPUTE:
                start = time.perf_counter()
                getattr(self, "_" + action.op)(action)
                self.busy_s += time.perf_counter() - start
            else:
                getattr(self, "_" + action.op)(action)

    def _id(self, a: Action) -> int:
        return eval_id(a.batch) if a.eval else a.batch

    # data
    def _load(self, a: Action) -> None:
        x = self.data.test_inputs(a.batch) if a.eval else self.data.inputs(a.batch)
        self.x = x.to(self.device, non_blocking=True)

    def _labels(self, a: Action) -> None:
        y = self.data.test_labels(a.batch) if a.eval else self.data.labels(a.batch)
        self.y = y.to(self.device, non_blocking=True)

    # communication
    def _recv_x(self, a: Action) -> None:
        self.x = self.links["x_in"].recv(self._id(a))

    def _send_x(self, a: Action) -> None:
        self.links["x_out"].send(self.h, self._id(a))

    def _post_g(self, a: Action) -> None:
        self.links["g_in"].post(a.batch)

    def _send_g(self, a: Action) -> None:
        self.links["g_out"].send(self.grad_x, a.batch)

    # compute
    def _forward(self, a: Action) -> None:
        self.h = self.worker.evaluate(self.x) if a.eval else self.worker.forward(a.batch, self.x)

    def _backward(self, a: Action) -> None:
        start = time.perf_counter()
        grad = self.links["g_in"].wait(a.batch)
        self.busy_s -= time.perf_counter() - start  # run() times the whole action; waiting is not compute
        self.grad_x = self.worker.backward(a.batch, grad)

    def _local_backward(self, a: Action) -> None:
        self.grad_x = self.worker.local_backward(a.batch)

    def _loss(self, a: Action) -> None:
        loss, self.grad_x = self.worker.loss(a.batch, self.x, self.y)
        self.losses.append(loss)

    def _train_step(self, a: Action) -> None:
        loss = self.worker.train_step(a.batch, self.x, self.y)
        if loss is not None:
            self.losses.append(loss)

    def _step(self, a: Action) -> None:
        self.worker.step(a.batch)

    def _score(self, a: Action) -> None:
        logits = self.worker.evaluate(self.x)[: len(self.y)]  # padding rows are not samples
        self.correct += int((logits.argmax(1) == self.y).sum())
