"""Decoupled parallel backprop with delayed gradients (Huo et al., ICML 2018).

The schedule is Features Replay's (fr.schedule): stage k < K-1 forwards batch
t in iteration t and backpropagates the error gradient of batch t-(K-1-k) that
stage k+1 computed in iteration t-1. The difference is what a stage keeps: DDG
forwards *with* an autograd graph and stores the graphs of its last K-k
forwards; the delayed gradient is backpropagated through the stored graph, so
it is the gradient of the old forward (old weights, old activations), and it
is applied to the current weights. FR instead stores only the inputs and
replays them with the current weights. That memory is the point of comparison.

The stored graph must see the weights of its time, but the optimizer changes
the live parameters in place after every step: a graph that saved them could
not be backpropagated (version counter). So every forward runs on a snapshot:
`torch.func.functional_call` with detached clones of the parameters (leaves of
that graph) and clones of the buffers. After the backward the snapshot's
gradients become the live parameters' gradients, and the step updates the live
weights. BatchNorm: the forward updates the running statistics once (on the
buffer clones, copied into the module's buffers right after the forward); the
backward of a stored graph never touches them. Dropout: the forward's mask is
saved in the graph, nothing to replay. K = 1 is plain backpropagation.
"""

from __future__ import annotations

from collections import deque

import torch
from torch.func import functional_call

from fr_dist.algos import fr
from fr_dist.algos.base import Worker
from fr_dist.algos.staleness import Compensation

iterations = fr.iterations
schedule = fr.schedule


def _storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


class Worker(Worker):
    """A non-last DDG stage: a FIFO of K-k stored graphs (snapshot, input, output)."""

    def __init__(self, module, stage, K, device, optimizer, lr_of, in_spec, options=None, clip_grad_norm=None,
                 steps_per_epoch=1):
        super().__init__(module, stage, K, device, optimizer, lr_of, in_spec, options, clip_grad_norm)
        self.compensation = Compensation(options, stage, K, module, optimizer, lr_of, steps_per_epoch)
        self.lr_of, self.spike_tau = self.compensation.lr_of, self.compensation.spike_tau
        self.params = dict(module.named_parameters())
        self.buffers = dict(module.named_buffers())
        # (batch, input leaf, output, parameter snapshot, saved-storage sizes or None,
        #  buffer snapshot, RNG states the forward started from)
        self.graphs: deque = deque()
        self.measure = K - stage + 1  # forwards to measure: shapes are fixed, the ring is full after K-k
        self.graph_peak = 0
        self.cuda = device.type == "cuda"

    @property
    def peak_mem_bytes(self) -> int:
        """Peak bytes of the graphs held at once: saved activations, inputs and weight snapshots."""
        return self.graph_peak if self.stage < self.K - 1 else self.graph_bytes.peak

    def state_dict(self) -> dict:
        """The stored forwards, as what rebuilds their graphs: input, weight and buffer snapshots, RNG."""
        return {"graphs": [
            {"batch": batch, "x": x.detach(), "params": {n: p.detach() for n, p in snapshot.items()},
             "buffers": buffers, "cpu_rng": rng[0], "cuda_rng": rng[1]}
            for batch, x, _, snapshot, _, buffers, rng in self.graphs]}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild each stored graph by running its forward again on its snapshots.

        The same input, weights and dropout masks give the same graph. The
        module's BatchNorm statistics are not touched (the original forward
        updated them and they come with the module's state); the graph gets
        the buffer snapshot, whose values a training-mode backward does not use.
        """
        self.graphs.clear()
        for g in state["graphs"]:
            x = g["x"].to(self.device).requires_grad_(self.stage > 0)
            snapshot = {n: v.to(self.device).requires_grad_(self.params[n].requires_grad)
                        for n, v in g["params"].items()}
            buffers = {n: v.to(self.device).clone() for n, v in g["buffers"].items()}
            with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
                torch.set_rng_state(g["cpu_rng"].cpu())
                if self.cuda:
                    torch.cuda.set_rng_state(g["cuda_rng"].cpu(), self.device)
                h = functional_call(self.module, {**snapshot, **buffers}, (x,))
            self.graphs.append((g["batch"], x, h, snapshot, None, buffers, (g["cpu_rng"], g["cuda_rng"])))

    def forward(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        if len(self.graphs) >= self.K - self.stage:
            raise RuntimeError(f"DDG stage {self.stage}: batch {batch} forwarded with {len(self.graphs)} graphs stored")
        # The input is kept by the graph: a copy, as a received one is the link's buffer.
        x = x.detach().clone().requires_grad_(self.stage > 0)
        snapshot = {name: p.detach().clone().requires_grad_(p.requires_grad) for name, p in self.params.items()}
        buffers = {name: b.clone() for name, b in self.buffers.items()}
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None)
        sizes = None
        if self.measure > 0:
            self.measure -= 1
            sizes = {}

            def pack(t: torch.Tensor) -> torch.Tensor:
                sizes.update(_storages([t]))
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                h = functional_call(self.module, {**snapshot, **buffers}, (x,))
            sizes.update(_storages([x, *snapshot.values()]))
        else:
            h = functional_call(self.module, {**snapshot, **buffers}, (x,))
        with torch.no_grad():  # the forward's statistics update, once; the clones stay with the graph
            for name, b in buffers.items():
                self.buffers[name].copy_(b)
        self.graphs.append((batch, x, h, snapshot, sizes, buffers, rng))
        if sizes is not None and all(g[4] is not None for g in self.graphs):
            alive: dict[int, int] = {}
            for g in self.graphs:
                alive.update(g[4])
            self.graph_peak = max(self.graph_peak, sum(alive.values()))
        return h.detach()

    def backward(self, batch: int, grad: torch.Tensor) -> torch.Tensor | None:
        if not self.graphs or self.graphs[0][0] != batch:
            held = self.graphs[0][0] if self.graphs else None
            raise RuntimeError(f"DDG stage {self.stage}: gradient of batch {batch}, but the oldest graph is {held}")
        _, x, h, snapshot, *_ = self.graphs.popleft()
        h.backward(self.compensation.received(grad))  # through the old forward: old weights, old activations
        for name, p in self.params.items():  # the delayed gradient, applied to the current weights
            g = snapshot[name].grad
            if g is None:
                continue
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)
        return x.grad
