"""Executes a rank's actions: data, links and the stage's compute.

The engine knows nothing of any algorithm: the schedule says what to do, the
worker computes, the links move tensors. It keeps the few values that flow
between actions of one iteration (the input, the output, the input gradient),
the diagnostic passes' values apart from training's, and a reference to the
last error gradient it sent: the one a checkpoint must keep while it is in
flight (runtime/checkpoint.py).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fr_dist.runtime.actions import Action

COMPUTE = ("forward", "backward", "local_backward", "loss", "step", "score")


@dataclass
class Values:
    """What flows between the actions of one batch on this stage."""

    x: torch.Tensor | None = None
    h: torch.Tensor | None = None
    grad_x: torch.Tensor | None = None
    y: torch.Tensor | None = None


class Engine:
    """`worker` computes training and evaluation, `probe` the diagnostic passes (or None).

    `autocast()` is the context every compute action but the optimizer step runs in
    (mixed precision; a no-op context by default).
    """

    def __init__(self, worker, data, links: dict, device: torch.device, probe=None, autocast=nullcontext):
        self.worker, self.data, self.links, self.device, self.probe = worker, data, links, device, probe
        self.autocast = autocast
        self.train, self.diag = Values(), Values()
        self.losses: list[torch.Tensor] = []  # of the last stage, one per batch, until taken
        self.correct = 0  # evaluation: correct predictions since the last take_correct
        self.busy_s = 0.0  # seconds in compute actions, waits for an error gradient left out
        self.timed = True  # evaluation does not count: busy_frac is about training
        self.diag_s = 0.0  # wall seconds of the diagnostic's passes: not training time either
        self.sent_g: tuple[int, torch.Tensor] | None = None  # the last error gradient sent down
        self.history: list[Action] = []  # recent actions, printed when a rank fails

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            self.history = self.history[-31:] + [action]
            start = time.perf_counter()
            if action.op in COMPUTE and action.op != "step":
                with self.autocast():
                    getattr(self, "_" + action.op)(action)
            else:
                getattr(self, "_" + action.op)(action)
            if action.diag is not None:
                self.diag_s += time.perf_counter() - start
            elif action.op in COMPUTE and self.timed:
                self.busy_s += time.perf_counter() - start

    def take_losses(self) -> list[torch.Tensor]:
        losses, self.losses = self.losses, []
        return losses

    def take_correct(self) -> int:
        correct, self.correct = self.correct, 0
        return correct

    def resend(self, batch: int, grad: torch.Tensor) -> None:
        """Send again the error gradient a checkpoint kept in flight (resume)."""
        self.train.grad_x = grad.to(self.device)
        self._send_g(Action("send_g", batch))

    def waiting_on(self) -> int | None:
        """The peer stage of a transfer this rank has started and not finished, if any."""
        link = next((l for l in self.links.values() if l.busy), None)
        return link.peer if link else None

    def close(self) -> None:
        for link in self.links.values():
            link.close()

    def _values(self, a: Action) -> Values:
        return self.diag if a.diag is not None else self.train

    # data
    def _load(self, a: Action) -> None:
        if a.eval:
            x = self.data.test_inputs(a.batch)
        else:  # the diagnostic asks off the training order: no prefetch
            x = self.data.inputs(a.batch, prefetch=a.diag is None)
        self._values(a).x = x.to(self.device, non_blocking=True)

    def _labels(self, a: Action) -> None:
        y = self.data.test_labels(a.batch) if a.eval else self.data.labels(a.batch)
        self._values(a).y = y.to(self.device, non_blocking=True)

    # communication
    def _recv_x(self, a: Action) -> None:
        self._values(a).x = self.links["x_in"].recv(a.link_id)

    def _send_x(self, a: Action) -> None:
        self.links["x_out"].send(self._values(a).h, a.link_id)

    def _post_g(self, a: Action) -> None:
        self.links["g_in"].post(a.link_id)

    def _send_g(self, a: Action) -> None:
        grad = self._values(a).grad_x
        self.links["g_out"].send(grad, a.link_id)
        if a.diag is None and not a.eval:
            self.sent_g = (a.batch, grad)

    # compute
    def _forward(self, a: Action) -> None:
        v = self._values(a)
        if a.diag is not None:
            v.h = self.probe.forward(a.diag, v.x)
        elif a.eval:
            v.h = self.worker.evaluate(v.x)
        else:
            v.h = self.worker.forward(a.batch, v.x)

    def _backward(self, a: Action) -> None:
        start = time.perf_counter()
        grad = self.links["g_in"].wait(a.link_id)
        self.busy_s -= time.perf_counter() - start  # run() times the whole action; waiting is not compute
        if a.diag is not None:
            self.diag.grad_x = self.probe.backward(a.diag, grad)
        else:
            self.train.grad_x = self.worker.backward(a.batch, grad)

    def _local_backward(self, a: Action) -> None:
        self.train.grad_x = self.worker.local_backward(a.batch)

    def _loss(self, a: Action) -> None:
        v = self._values(a)
        if a.diag is not None:
            v.grad_x = self.probe.loss(a.diag, v.x, v.y)
            return
        loss, v.grad_x = self.worker.loss(a.batch, v.x, v.y)
        self.losses.append(loss)

    def _step(self, a: Action) -> None:
        self.worker.step(a.batch)

    def _score(self, a: Action) -> None:
        v = self.train
        logits = self.worker.evaluate(v.x)[: len(v.y)]  # padding rows are not samples
        self.correct += int((logits.argmax(1) == v.y).sum())
