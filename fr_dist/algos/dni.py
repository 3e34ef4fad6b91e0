"""Decoupled neural interfaces with synthetic gradients (Jaderberg et al., ICML 2017).

Every non-last stage k owns a small synthetic-gradient model M_k that predicts
the error gradient dL/dh of its output h from h. Stage k < K-1, iteration t:

    post the receive of the true gradient of batch t-1
    take input t, forward with a graph -> h_t, send h_t up
    local backward t: h_t.backward(M_k(h_t)), the input gradient goes down (k > 0)
    step t (stage weights, lr(t)): no waiting for the stage above
    backward t-1: the true gradient of batch t-1 arrives from stage k+1; M_k takes
        one SGD step on mean((M_k(h_{t-1}) - g_true)^2); nothing is sent

The "true" gradient stage k+1 sends is its input gradient, itself computed
from M_{k+1}'s prediction (as in the paper); only the last stage backpropagates
the loss. One extra drain iteration consumes the gradient of batch T-1.
For K = 3 (F: forward, BL: synthetic backward+step, B: train M on batch's true gradient):

    iteration   stage 0          stage 1          stage 2
    0           F0 BL0           F0 BL0           FB0
    1           F1 BL1 B0        F1 BL1 B0        FB1
    t           Ft BLt B(t-1)    Ft BLt B(t-1)    FBt
    T (drain)   B(T-1)           B(T-1)

M_k defaults to one zero-initialised layer (so training starts with a zero
synthetic gradient): Conv2d(C, C, 3, padding=1) for (N, C, H, W) features,
Linear(D, D) for (N, D), and for (N, T, D) (a transformer's) at every position. Options (config.DNIConfig, conf/algo/dni.yaml):
`synth` (auto, conv, linear), `synth_lr` (default: the stage optimizer's lr),
`synth_hidden` (a hidden layer of that width with ReLU; its first layer is
initialised from a seed of its own, the output layer to zero). M_k is trained
with plain SGD using the stage optimizer's momentum and Nesterov setting (with
optim=adamw: no momentum), no weight decay, no clipping, at a constant rate.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn as nn
import torch.nn.functional as F

from fr_dist.algos.base import Worker
from fr_dist.config import DNIConfig
from fr_dist.runtime.actions import Action, last_stage, source


def iterations(stage: int, K: int, T: int) -> int:
    """T iterations, plus one that only consumes the true gradient of batch T-1."""
    return T if stage == K - 1 else T + 1


def schedule(stage: int, K: int, t: int, T: int) -> list[Action]:
    if stage == K - 1:
        return last_stage(stage, t) if t < T else []
    previous = 0 <= t - 1 < T  # batch whose true gradient stage k+1 sent in iteration t-1
    acts = [Action("post_g", t - 1)] if previous else []
    if t < T:
        acts += [source(stage, t), Action("forward", t), Action("send_x", t), Action("local_backward", t)]
        if stage > 0:
            acts.append(Action("send_g", t))
        acts.append(Action("step", t))
    if previous:
        acts.append(Action("backward", t - 1))  # trains M_k; returns None, nothing is sent
    return acts


def make_synth(shape, synth: str = "auto", hidden: int | None = None, seed: int = 0) -> nn.Module:
    """The synthetic-gradient model for features of `shape` (batch dimension included).

    The output layer is zero-initialised; a hidden layer's weights come from
    `seed` without touching the global RNG stream (dropout masks stay the same).
    """
    if synth == "auto":
        synth = "conv" if len(shape) == 4 else "linear"
    if synth == "conv":
        if len(shape) != 4:
            raise ValueError(f"synth=conv needs (N, C, H, W) features, got shape {tuple(shape)}")
        C = shape[1]

        def layer(i, o):
            return nn.Conv2d(i, o, 3, padding=1)
    elif synth == "linear":
        if len(shape) not in (2, 3):  # (N, T, D): the same map at every position, as a transformer's features
            raise ValueError(f"synth=linear needs (N, D) or (N, T, D) features, got shape {tuple(shape)}")
        C = shape[-1]

        def layer(i, o):
            return nn.Linear(i, o)
    else:
        raise ValueError(f"unknown synth={synth!r}: choose auto, conv or linear")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [layer(C, hidden), nn.ReLU(), layer(hidden, C)] if hidden else [layer(C, C)]
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class Worker(Worker):
    """A non-last DNI stage: updates at once with M_k's prediction, trains M_k one batch later."""

    def __init__(self, module, stage, K, device, optimizer, lr_of, in_spec, options: DNIConfig | None = None,
                 clip_grad_norm=None, steps_per_epoch=1):
        super().__init__(module, stage, K, device, optimizer, lr_of, in_spec, options, clip_grad_norm)
        options = options or DNIConfig(name="dni")
        self.synth_kind, self.synth_hidden = options.synth, options.synth_hidden
        defaults = optimizer.defaults if optimizer is not None else {"lr": 0.1, "momentum": 0.0, "nesterov": False}
        self.synth_lr = defaults["lr"] if options.synth_lr is None else options.synth_lr
        self.synth_momentum = defaults.get("momentum", 0.0)  # AdamW has none: plain SGD
        self.synth_nesterov = defaults.get("nesterov", False)
        self.synth: nn.Module | None = None  # built at the first forward, when the feature shape is known
        self.synth_optimizer = None
        self.x = self.h = None  # the batch in flight: input leaf and output with its graph
        self.stored: deque = deque()  # (batch, detached output) awaiting the true gradient
        self.stored_peak = 0

    @property
    def peak_mem_bytes(self) -> int:
        """One graph, plus the outputs kept for training M_k."""
        return self.graph_bytes.peak + self.stored_peak

    def _build_synth(self, shape) -> None:
        self.synth_shape = tuple(shape)
        self.synth = make_synth(shape, self.synth_kind, self.synth_hidden, seed=1 + self.stage).to(self.device)
        self.synth_optimizer = torch.optim.SGD(self.synth.parameters(), lr=self.synth_lr,
                                               momentum=self.synth_momentum, nesterov=self.synth_nesterov)

    def state_dict(self) -> dict:
        """M_k, its optimizer, and the outputs awaiting their true gradient (between iterations)."""
        if self.synth is None:
            return {"synth": None, "stored": []}
        return {"synth": self.synth.state_dict(), "synth_optimizer": self.synth_optimizer.state_dict(),
                "shape": self.synth_shape, "stored": [(b, h) for b, h in self.stored]}

    def load_state_dict(self, state: dict) -> None:
        self.stored = deque((b, h.to(self.device)) for b, h in state["stored"])
        if state["synth"] is None:
            self.synth = self.synth_optimizer = None
            return
        self._build_synth(state["shape"])
        self.synth.load_state_dict(state["synth"])
        self.synth_optimizer.load_state_dict(state["synth_optimizer"])

    def forward(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        self.batch = batch
        self.x = x.detach().requires_grad_(self.stage > 0)
        with self.graph_bytes(self.x):
            self.h = self.module(self.x)
        if self.synth is None:
            self._build_synth(self.h.shape)
        return self.h.detach()

    def local_backward(self, batch: int) -> torch.Tensor | None:
        if self.h is None or self.batch != batch:
            raise RuntimeError(f"DNI stage {self.stage}: synthetic backward of batch {batch} without its forward")
        h = self.h.detach()
        with torch.no_grad():
            synthetic = self.synth(h)
        self.h.backward(synthetic)
        self.stored.append((batch, h))
        self.stored_peak = max(self.stored_peak, sum(s.numel() * s.element_size() for _, s in self.stored))
        x, self.x, self.h = self.x, None, None
        return x.grad

    def backward(self, batch: int, grad: torch.Tensor) -> None:
        """Train M_k on the true gradient of `batch`; returns None (nothing to send)."""
        if not self.stored or self.stored[0][0] != batch:
            held = self.stored[0][0] if self.stored else None
            raise RuntimeError(f"DNI stage {self.stage}: true gradient of batch {batch}, but the stored one is {held}")
        _, h = self.stored.popleft()
        F.mse_loss(self.synth(h), grad).backward()
        if self.average is not None:  # replicas: M_k stays the same on every one
            self.average(list(self.synth.parameters()))
        with torch.autocast(self.device.type, enabled=False):  # never an optimizer step under autocast
            self.synth_optimizer.step()
        self.synth_optimizer.zero_grad(set_to_none=False)
        return None
