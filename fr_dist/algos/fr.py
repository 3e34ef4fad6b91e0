"""Features Replay (Huo, Gu, Huang, NeurIPS 2018): the schedule and a stage's compute.

Stage k < K-1 in iteration t forwards batch t without a graph and stores its
input; it then replays batch t-(K-1-k) from the stored input with its current
weights and backpropagates the error gradient that stage k+1 computed for that
batch in iteration t-1. Nothing waits on a backward lock. For K = 3:

    iteration   stage 0        stage 1        stage 2
    0           F0             F0             B0
    1           F1             F1  R0         B1
    2           F2  R0         F2  R1         B2
    t           Ft  R(t-2)     Ft  R(t-1)     Bt
    T (drain)       R(T-2)         R(T-1)
    T+1 (drain)     R(T-1)

The receive of the gradient is posted before the forward, so it arrives while
the forward computes. K = 1 is plain backpropagation.
"""

from __future__ import annotations

import torch

from fr_dist.algos.base import Worker
from fr_dist.algos.staleness import Compensation
from fr_dist.models.probes import BatchNormState
from fr_dist.runtime.actions import Action, last_stage, source
from fr_dist.runtime.ring import RingBuffer


def iterations(stage: int, K: int, T: int) -> int:
    """T forwards, then K-1-k drain iterations that only replay."""
    return T + K - 1 - stage


def schedule(stage: int, K: int, t: int, T: int) -> list[Action]:
    """Actions of `stage` in iteration t of a run of T batches."""
    if stage == K - 1:
        return last_stage(stage, t) if t < T else []
    replayed = t - (K - 1 - stage)  # batch whose gradient stage k+1 sent in iteration t-1
    replay = 0 <= replayed < T
    acts = [Action("post_g", replayed)] if replay else []
    if t < T:
        acts += [source(stage, t), Action("forward", t), Action("send_x", t)]
    if replay:
        acts.append(Action("backward", replayed))
        if stage > 0:
            acts.append(Action("send_g", replayed))
        acts.append(Action("step", replayed))
    return acts


class Worker(Worker):
    """A non-last FR stage: forward without a graph, replay from the ring buffer."""

    def __init__(self, module, stage, K, device, optimizer, lr_of, in_spec, options=None, clip_grad_norm=None,
                 steps_per_epoch=1):
        super().__init__(module, stage, K, device, optimizer, lr_of, in_spec, options, clip_grad_norm)
        self.compensation = Compensation(options, stage, K, module, optimizer, lr_of, steps_per_epoch)
        self.lr_of, self.spike_tau = self.compensation.lr_of, self.compensation.spike_tau
        shape, dtype = in_spec
        self.ring = RingBuffer(K - stage, shape, dtype, device) if stage < K - 1 else None
        self.bn = BatchNormState(module)  # the replay leaves the statistics as the forward left them
        self.chunks = getattr(options, "replay_chunks", 1)
        self.cuda = device.type == "cuda"

    @property
    def peak_mem_bytes(self) -> int:
        return (self.ring.nbytes if self.ring else 0) + self.graph_bytes.peak

    def state_dict(self) -> dict:
        return self.ring.state_dict() if self.ring else {}

    def load_state_dict(self, state: dict) -> None:
        if self.ring:
            self.ring.load_state_dict(state)

    def forward(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.cuda else None
        with torch.no_grad(), self.compensation.predicted(batch):
            h = self.module(x)
        self.ring.push(batch, x, cpu_rng, cuda_rng)
        return h

    def backward(self, batch: int, grad: torch.Tensor) -> torch.Tensor | None:
        """Replay `batch` with the current weights and backpropagate `grad`, in `replay_chunks` slices.

        Slices hold 1/M of the graph at a time; their parameter gradients add up in .grad. The RNG is
        restored once, before the first slice: the slices draw dropout masks one after another, which are
        the forward's only when M = 1; BatchNorm normalises each slice by its own statistics.
        """
        x, cpu_rng, cuda_rng = self.ring.pop(batch)  # raises unless the oldest is `batch`
        grad = self.compensation.received(grad)
        needs_grad = self.stage > 0
        self.bn.save()
        # Same dropout masks as the forward, without advancing the stream.
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            torch.set_rng_state(cpu_rng)
            if self.cuda:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            grads_x = []
            for xc, gc in zip(x.chunk(self.chunks), grad.chunk(self.chunks)):
                xc = xc.detach().requires_grad_(needs_grad)
                with self.graph_bytes(x):
                    h = self.module(xc)
                h.backward(gc)
                grads_x.append(xc.grad)
        self.bn.restore()  # after the backward, not before (models/probes.py says why)
        if not needs_grad:
            return None
        return grads_x[0] if self.chunks == 1 else torch.cat(grads_x)
