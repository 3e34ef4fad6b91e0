"""The schedule interface every algorithm implements, and what they share.

An algorithm is a module with
  - ``schedule(stage, K, t, T) -> list[Action]``: the actions of `stage` in
    iteration t (0 <= t < iterations(stage, K, T)), a pure function;
  - ``iterations(stage, K, T) -> int``: iterations of `stage` for T batches,
    drain included;
  - ``Worker``: the compute of one stage (forward, backward, loss, step).
The runtime (engine.py) executes the actions and knows nothing of any algorithm.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# Action ops. Communication: recv_x (activations from stage k-1, needed now),
# send_x (to k+1, non-blocking), post_g (post the receive of an error gradient
# from k+1), send_g (input gradient to k-1, non-blocking). Data: load (stage 0's
# input), labels (last stage's targets). Compute: forward, backward (consumes
# the posted gradient), local_backward (a backward with a gradient the stage
# makes itself, e.g. a synthetic one), loss (last stage: forward, loss, backward), step,
# train_step (a whole batch by a worker that brings its own communication:
# gpipe and 1f1b through torch.distributed.pipelining),
# score (last stage, evaluation: count correct predictions).
OPS = ("load", "labels", "recv_x", "send_x", "post_g", "send_g", "forward", "backward", "local_backward", "loss",
       "step", "train_step", "score")
_CODE = {"load": "L", "labels": "Y", "recv_x": "Rx", "send_x": "Sx", "post_g": "Pg", "send_g": "Sg",
         "forward": "F", "backward": "B", "local_backward": "BL", "loss": "FB", "step": "U", "train_step": "P", "score": "S"}


@dataclass(frozen=True)
class Action:
    op: str
    batch: int  # training batch id, or evaluation batch index when eval
    eval: bool = False

    def __str__(self) -> str:
        return ("e" if self.eval else "") + _CODE[self.op] + str(self.batch)


def source(stage: int, t: int, eval: bool = False) -> Action:
    """Where stage's input for batch t comes from: the data on stage 0, else stage k-1."""
    return Action("load" if stage == 0 else "recv_x", t, eval)


def last_stage(stage: int, t: int) -> list[Action]:
    """The last stage in every algorithm: plain forward, loss and backward of batch t."""
    acts = [source(stage, t), Action("labels", t), Action("loss", t)]
    if stage > 0:
        acts.append(Action("send_g", t))
    return acts + [Action("step", t)]


def eval_schedule(stage: int, K: int, e: int) -> list[Action]:
    """Evaluation batch e: a forward-only pipeline with the current weights."""
    acts = [source(stage, e, eval=True)]
    if stage < K - 1:
        return acts + [Action("forward", e, True), Action("send_x", e, True)]
    return acts + [Action("labels", e, True), Action("score", e, True)]


def in_flight(algo, k: int, K: int, t: int, T: int) -> list[int]:
    """Error gradients stage k sent in iteration t that stage k-1 receives only in t+1."""
    if k == 0 or t >= algo.iterations(k, K, T):
        return []
    sent = [a.batch for a in algo.schedule(k, K, t, T) if a.op == "send_g"]
    taken = ({a.batch for a in algo.schedule(k - 1, K, t, T) if a.op == "backward"}
             if t < algo.iterations(k - 1, K, T) else set())
    return [b for b in sent if b not in taken]


@contextmanager
def saved_storages(skip: set[int]):
    """{storage pointer: bytes} of every tensor autograd saves inside the block, but `skip`."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


class SavedBytes:
    """Peak bytes of activations saved for backward by one graph, measured.

    Counts unique storages packed by ``saved_tensors_hooks``, except parameters
    and the given inputs (those are counted where they are stored).
    """

    def __init__(self, module: nn.Module, calls: int = 2):
        self.params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.calls = calls  # shapes are fixed, so the first calls tell the peak
        self.peak = 0

    @contextmanager
    def __call__(self, *inputs: torch.Tensor):
        if self.calls <= 0:
            yield
            return
        self.calls -= 1
        with saved_storages(self.params | {x.untyped_storage().data_ptr() for x in inputs}) as seen:
            yield
        self.peak = max(self.peak, sum(seen.values()))


class Worker:
    """The compute of one stage: what each algorithm's forward/backward override.

    `module` holds this stage's blocks, `lr_of(batch)` gives the rate an update
    for that batch uses.
    """

    def __init__(self, module: nn.Module, stage: int, K: int, device: torch.device,
                 optimizer: torch.optim.Optimizer | None, lr_of: Callable[[int], float], in_spec):
        self.module, self.stage, self.K, self.device = module, stage, K, device
        self.optimizer, self.lr_of = optimizer, lr_of
        self.graph_bytes = SavedBytes(module)

    @property
    def peak_mem_bytes(self) -> int:
        """Peak activation bytes the algorithm holds (stored inputs, graphs)."""
        return self.graph_bytes.peak

    def loss(self, batch: int, x: torch.Tensor, y: torch.Tensor):
        """Last stage: forward, cross-entropy, backward. Returns (loss, input grad)."""
        x = x.detach().requires_grad_(self.stage > 0)
        with self.graph_bytes(x):
            loss = F.cross_entropy(self.module(x), y)
        loss.backward()
        return loss.detach(), x.grad

    def step(self, batch: int) -> None:
        """Apply the accumulated gradient of `batch` with that batch's rate."""
        if self.optimizer is None:  # a stage without parameters
            return
        lr = self.lr_of(batch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # reuse the gradient buffers

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Forward with the current weights in eval mode; changes no state."""
        self.module.eval()
        try:
            return self.module(x)
        finally:
            self.module.train()

    def state_dict(self) -> dict:
        """What the stage holds between iterations (stored inputs, graphs), for checkpoints."""
        raise NotImplementedError(f"{type(self).__module__} cannot checkpoint its state between iterations")

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError(f"{type(self).__module__} cannot checkpoint its state between iterations")

    def forward(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, batch: int, grad: torch.Tensor) -> torch.Tensor | None:
        """Consume the error gradient of `batch` from stage k+1; return the input gradient."""
        raise NotImplementedError

    def local_backward(self, batch: int) -> torch.Tensor | None:
        """Backward of `batch` with a gradient the stage makes itself; return the input gradient."""
        raise NotImplementedError
