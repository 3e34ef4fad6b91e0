"""Executes a rank's actions: data, links and the stage's compute.

The engine knows nothing of any algorithm: the schedule says what to do, the
worker computes, the links move tensors. It keeps the few values that flow
between actions of one iteration (the input, the output, the input gradient),
the diagnostic passes' values apart from training's, and the error gradients
received ahead of their replay at an evaluation or checkpoint cut (`take_g`):
a checkpoint saves those (runtime/resume.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from fr_dist.models.objective import cross_entropy
from fr_dist.runtime.actions import Action
from fr_dist.runtime.timing import BusyTimer


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
    (mixed precision; a no-op context by default). Every value sent is cast to its
    link's dtype first: a stage boundary carries exactly the agreed dtype.
    """

    def __init__(self, worker, data, links: dict, device: torch.device, probe=None, autocast=nullcontext):
        self.worker, self.data, self.links, self.device, self.probe = worker, data, links, device, probe
        self.autocast = autocast
        self.train, self.diag = Values(), Values()
        self.losses: list[torch.Tensor] = []  # of the last stage, one per batch, until taken
        # evaluation: correct predictions, summed loss, targets scored; summed on the device, read once
        self.scores = torch.zeros(3, dtype=torch.float64, device=device)
        self.timer = BusyTimer(device)  # compute of training actions: busy_frac
        self.timed = True  # evaluation does not count: busy_frac is about training
        self.diag_s = 0.0  # wall seconds of the diagnostic's passes: not training time either
        self.held: dict[int, torch.Tensor] = {}  # error gradients taken at a cut, by batch, until their replay
        self.averager = None  # with replicas: the stage's gradient all-reduce (runtime/replicas.py)
        self.history: list[Action] = []  # recent actions, printed when a rank fails

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            self.history = self.history[-31:] + [action]
            start = time.perf_counter()
            getattr(self, "_" + action.op)(action)
            if action.diag is not None:
                self.diag_s += time.perf_counter() - start

    @property
    def busy_s(self) -> float:
        return self.timer.seconds

    @contextmanager
    def _compute(self, a: Action, autocast: bool = True):
        """A compute action: under autocast, timed if it is training's."""
        timer = self.timer() if self.timed and a.diag is None and not a.eval else nullcontext()
        with timer, self.autocast() if autocast else nullcontext():
            yield

    def take_losses(self) -> list[torch.Tensor]:
        losses, self.losses = self.losses, []
        return losses

    def take_scores(self) -> torch.Tensor:
        """(correct predictions, summed loss, targets) since the last call, on the host (one device sync for a
        whole evaluation). A target is a sample of a classifier, a token of a language model."""
        scores = self.scores.cpu().clone()  # .cpu() of a CPU tensor is the tensor itself
        self.scores.zero_()
        return scores

    def waiting_on(self) -> int | None:
        """The peer stage of a transfer this rank has started and not finished, if any."""
        link = next((l for l in self.links.values() if l.busy), None)
        return link.peer_stage if link else None

    def check_links(self) -> None:
        """Every received header verified (GPU links check them one transfer late)."""
        for link in self.links.values():
            link.check()

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
        link = self.links["x_out"]
        link.send(self._values(a).h.to(link.dtype), a.link_id)  # the boundary's dtype (bf16 runs), a no-op in fp32

    def _post_g(self, a: Action) -> None:
        if a.diag is None and a.batch in self.held:
            return  # taken at the last cut: nothing to receive
        self.links["g_in"].post(a.link_id)

    def _take_g(self, a: Action) -> None:
        """Receive the error gradient of `a.batch` now, ahead of its replay: no transfer crosses the cut."""
        self.held[a.batch] = self.links["g_in"].recv(a.link_id).clone()

    def _send_g(self, a: Action) -> None:
        link = self.links["g_out"]
        link.send(self._values(a).grad_x.to(link.dtype), a.link_id)  # the boundary's dtype, a no-op in fp32
        if self.averager is not None and a.diag is None:  # the input gradient is on its way: now average
            self.averager.start()

    # compute
    def _forward(self, a: Action) -> None:
        v = self._values(a)
        with self._compute(a):
            if a.diag is not None:
                v.h = self.probe.forward(a.diag, v.x)
            elif a.eval:
                v.h = self.worker.evaluate(v.x)
            else:
                v.h = self.worker.forward(a.batch, v.x)

    def _backward(self, a: Action) -> None:
        held = self.held.pop(a.batch) if a.diag is None and a.batch in self.held else None
        grad = held if held is not None else self.links["g_in"].wait(a.link_id)  # the wait is not compute
        with self._compute(a):
            if a.diag is not None:
                self.diag.grad_x = self.probe.backward(a.diag, grad)
            else:
                self.train.grad_x = self.worker.backward(a.batch, grad)

    def _local_backward(self, a: Action) -> None:
        with self._compute(a):
            self.train.grad_x = self.worker.local_backward(a.batch)

    def _loss(self, a: Action) -> None:
        v = self._values(a)
        with self._compute(a):
            if a.diag is not None:
                v.grad_x = self.probe.loss(a.diag, v.x, v.y)
                return
            loss, v.grad_x = self.worker.loss(a.batch, v.x, v.y)
        self.losses.append(loss)

    def _step(self, a: Action) -> None:
        with self._compute(a, autocast=False):  # weights and optimizer state stay in fp32
            if self.averager is not None:
                self.averager.wait()
            self.worker.step(a.batch)

    def _score(self, a: Action) -> None:
        v = self.train
        with self._compute(a):
            logits = self.worker.evaluate(v.x)[: len(v.y)]  # padding rows are not samples
            self.scores[0] += (logits.argmax(-1) == v.y).sum()
            self.scores[1] += cross_entropy(logits.float(), v.y, reduction="sum")
            self.scores[2] += v.y.numel()
