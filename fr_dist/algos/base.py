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

from typing import Callable

import torch
import torch.nn as nn

from fr_dist.models.objective import cross_entropy
from fr_dist.optim import apply_gradient
from fr_dist.runtime.memory import SavedBytes


class Worker:
    """The compute of one stage: what each algorithm's forward/backward override.

    `module` holds this stage's blocks, `lr_of(batch)` gives the rate an update
    for that batch uses, `options` the algorithm's typed options (config.ALGO_OPTIONS),
    `clip_grad_norm` the norm this stage's gradient is clipped to before a step (None: not),
    `steps_per_epoch` the batches of an epoch (options given in epochs). `spike_tau`: the delay
    the SGD step compensates (optim.spike_step; None: the optimizer's own step).
    """

    def __init__(self, module: nn.Module, stage: int, K: int, device: torch.device,
                 optimizer: torch.optim.Optimizer | None, lr_of: Callable[[int], float], in_spec, options=None,
                 clip_grad_norm: float | None = None, steps_per_epoch: int = 1):
        self.module, self.stage, self.K, self.device = module, stage, K, device
        self.optimizer, self.lr_of, self.clip_grad_norm = optimizer, lr_of, clip_grad_norm
        self.spike_tau: int | None = None
        self.graph_bytes = SavedBytes(module)
        self.average = None  # with replicas: averages a small model's gradients over them (DNI's M_k)

    @property
    def peak_mem_bytes(self) -> int:
        """Peak activation bytes the algorithm holds (stored inputs, graphs)."""
        return self.graph_bytes.peak

    def loss(self, batch: int, x: torch.Tensor, y: torch.Tensor):
        """Last stage: forward, cross entropy (per token for a language model), backward. Returns (loss, input
        grad)."""
        x = x.detach().requires_grad_(self.stage > 0)
        with self.graph_bytes(x):
            loss = cross_entropy(self.module(x), y)
        loss.backward()
        return loss.detach(), x.grad

    def step(self, batch: int) -> None:
        """Apply the accumulated gradient of `batch` (with replicas: averaged) with that batch's rate, clipped."""
        if self.optimizer is None:  # a stage without parameters
            return
        apply_gradient(self.optimizer, self.module, self.lr_of(batch), self.clip_grad_norm, self.spike_tau)

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
