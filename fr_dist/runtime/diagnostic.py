"""The sufficient-direction diagnostic: how well a stale update points downhill.

The paper's convergence proof assumes the FR update g_FR of each stage keeps a
positive share of the true gradient g_BP: sigma = <g_FR, g_BP> / ||g_BP||^2 > 0.
Every `diag_every` steps this measures it. In iteration t, after every stage
computed its update and before any optimizer step, each stage j takes the batch
b_j its update used and gets the true backprop gradient of its weights for b_j
with every stage's current weights: one forward through the whole pipeline and
a backward down to stage j. Raw gradients (before momentum and weight decay)
are compared per stage and over all stages together (the assumption is about
the whole model).

The passes are actions of the schedule (`with_passes`), executed by the engine
over the same links as training, so the send/receive order test covers them.
They sit at a cut of the iteration where no transfer is in flight: the error
gradients that cross into the next iteration and the steps are moved after
them. The passes leave BatchNorm statistics, the RNG stream and every .grad as
they were; with dropout they draw fresh masks (the forward's masks are not kept).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fr_dist.models.objective import cross_entropy
from fr_dist.models.probes import BatchNormState
from fr_dist.runtime.actions import Action, in_flight, source


def stepped_batches(algo, K: int, t: int, T: int) -> dict[int, int]:
    """Stage -> the batch whose update it applies in iteration t (a pure function)."""
    out = {}
    for k in range(K):
        if t < algo.iterations(k, K, T):
            steps = [a.batch for a in algo.schedule(k, K, t, T) if a.op == "step"]
            if steps:
                out[k] = steps[0]
    return out


def passes(k: int, K: int, batches: dict[int, int]) -> list[Action]:
    """Stage k's actions of the passes: for every target stage j, batch b_j up to the loss and down to j.

    Below j a stage only forwards; from j up it forwards with a graph and
    backpropagates, sending the input gradient down while above j.
    """
    acts = []
    for j, b in sorted(batches.items()):
        acts.append(source(k, b, diag=j))
        if k < j:
            acts += [Action("forward", b, diag=j), Action("send_x", b, diag=j)]
            continue
        if k == K - 1:
            acts += [Action("labels", b, diag=j), Action("loss", b, diag=j)]
        else:
            acts += [Action("forward", b, diag=j), Action("send_x", b, diag=j), Action("post_g", b, diag=j),
                     Action("backward", b, diag=j)]
        if k > j:
            acts.append(Action("send_g", b, diag=j))
    return acts


def with_passes(algo, k: int, K: int, t: int, T: int) -> list[Action]:
    """Iteration t of stage k with the diagnostic's passes at a cut where nothing is in flight.

    Every update is computed before the passes and applied after them; the
    error gradients that stage k-1 receives only in iteration t+1 are sent
    after them too, so no message crosses the passes.
    """
    actions = algo.schedule(k, K, t, T)
    crossing = set(in_flight(algo, k, K, t, T))
    later = [a for a in actions if a.op == "step" or (a.op == "send_g" and a.batch in crossing)]
    before = [a for a in actions if a not in later]
    return before + passes(k, K, stepped_batches(algo, K, t, T)) + later


class TrueGradient:
    """The compute of one stage in the passes: current weights, nothing of the run's state changed.

    Stage j (the target) keeps <g_FR, g_BP>, ||g_BP||^2 and ||g_FR||^2 of its
    pass in `stats`, with g_FR the .grad its update is about to apply.
    """

    def __init__(self, module: nn.Module, stage: int, device: torch.device):
        self.module, self.stage, self.device = module, stage, device
        self.params = list(module.parameters())
        self.bn = BatchNormState(module)
        self.x = self.h = None
        self.stats: tuple[float, float, float] | None = None

    def _run(self, x: torch.Tensor, target: int) -> torch.Tensor:
        self.bn.save()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.stage < target:  # below the target: features only
                with torch.no_grad():
                    h = self.module(x)
                self.bn.restore()
                return h
            self.x = x.detach().requires_grad_(self.stage > target)
            return self.module(self.x)

    def forward(self, target: int, x: torch.Tensor) -> torch.Tensor:
        self.h = self._run(x, target)
        return self.h.detach()

    def loss(self, target: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return self._gradients(target, cross_entropy(self._run(x, target), y), None)

    def backward(self, target: int, grad: torch.Tensor) -> torch.Tensor | None:
        h, self.h = self.h, None
        return self._gradients(target, h, grad)

    def _gradients(self, target: int, out: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor | None:
        """Backward of the pass: the input gradient to send down, or (on the target) the statistics."""
        x, self.x = self.x, None
        wrt = self.params if self.stage == target else [x]
        grads = torch.autograd.grad(out, wrt, grad) if wrt else []
        self.bn.restore()  # after the backward: autograd saved the BatchNorm buffers
        if self.stage > target:
            return grads[0]
        g_fr = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        dot = sum(float((a * b).sum()) for a, b in zip(g_fr, grads))
        self.stats = (dot, sum(float((b * b).sum()) for b in grads), sum(float((a * a).sum()) for a in g_fr))
        return None


def row(step: int, epoch: float, stats: list) -> dict:
    """The metrics row of one measurement from every stage's (dot, ||g_BP||^2, ||g_FR||^2), or None."""
    out = {"step": step, "epoch": epoch}
    total = [0.0, 0.0, 0.0]
    for stage, s in enumerate(stats):
        if s is None:
            continue
        dot, n_bp, n_fr = s
        out[f"sigma_{stage}"] = dot / n_bp if n_bp > 0 else float("nan")
        out[f"cos_{stage}"] = dot / math.sqrt(n_bp * n_fr) if n_bp * n_fr > 0 else float("nan")
        total = [a + b for a, b in zip(total, s)]
    if total[1] > 0 and total[2] > 0:
        out["sigma"] = total[0] / total[1]
        out["cos"] = total[0] / math.sqrt(total[1] * total[2])
    return out
