"""The sufficient-direction diagnostic: how well a stale update points downhill.

The paper's convergence proof assumes the FR update g_FR of each stage keeps a
positive share of the true gradient g_BP: sigma = <g_FR, g_BP> / ||g_BP||^2 > 0.
Every `diag_every` steps this measures it. In iteration t, after every stage
computed its update and before any optimizer step, each stage k takes the batch
b_k its update used and gets the true backprop gradient of its weights for b_k
with every stage's current weights: one forward through the whole pipeline and
a backward down to stage k, over the same links, all ranks in lockstep. Raw
gradients (before momentum and weight decay) are compared per stage and over
all stages together (the assumption is about the whole model).

The passes leave BatchNorm statistics, the RNG stream and every .grad as they
were; with dropout they draw fresh masks (the forward's masks are not kept).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fr_dist.runtime.actions import in_flight


def _diag_id(j: int) -> int:
    """Link header of the pass for stage j: negative and far from evaluation ids."""
    return -1_000_000 - j


def stepped_batches(algo, K: int, t: int, T: int) -> dict[int, int]:
    """Stage -> the batch whose update it applies in iteration t (a pure function)."""
    out = {}
    for k in range(K):
        if t < algo.iterations(k, K, T):
            steps = [a.batch for a in algo.schedule(k, K, t, T) if a.op == "step"]
            if steps:
                out[k] = steps[0]
    return out


def true_gradient(job, j: int, batch: int):
    """Pass for stage j: returns stage j's true gradient (a list of tensors) on stage j, else None."""
    k, K = job.rt.rank, job.rt.world
    if k < j:  # below the target: features only
        x = _input(job, batch, j)
        with torch.no_grad():
            job.engine.links["x_out"].send(job.module(x), _diag_id(j))
        return None
    module, links = job.module, job.engine.links
    params = [p for p in module.parameters()]
    x = _input(job, batch, j).detach().requires_grad_(k > j)
    wrt = params if k == j else [x]
    buffers = [(b, b.clone()) for m in module.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]
    device = job.rt.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        h = module(x)
        if k == K - 1:
            y = job.engine.data.labels(batch).to(device)
            grads = torch.autograd.grad(F.cross_entropy(h, y), wrt)
        else:
            links["x_out"].send(h.detach(), _diag_id(j))
            delta = links["g_in"].recv(_diag_id(j))
            grads = torch.autograd.grad(h, wrt, delta)
    for buf, saved in buffers:  # after the backward: autograd saved the BatchNorm buffers
        buf.copy_(saved)
    if k > j:
        links["g_out"].send(grads[0], _diag_id(j))
        return None
    return list(grads)


def _input(job, batch: int, j: int) -> torch.Tensor:
    if job.rt.rank == 0:
        return job.engine.data.inputs(batch, prefetch=False).to(job.rt.device)
    return job.engine.links["x_in"].recv(_diag_id(j))


def measure(job, t: int) -> dict | None:
    """Run the passes of iteration t; the metrics row (on the last stage), else None."""
    k, K = job.rt.rank, job.rt.world
    # The gradients stage k+1 sent for our next iteration are on the link the
    # passes use: take them off first (they are kept for that iteration).
    for batch in in_flight(job.algo, k + 1, K, t, job.T) if k < K - 1 else []:
        job.engine.links["g_in"].receive_early(batch)
    batches = stepped_batches(job.algo, K, t, job.T)
    mine = None
    for j, batch in sorted(batches.items()):
        grads = true_gradient(job, j, batch)
        if j == k:
            mine = grads
    stats = None
    if mine is not None:
        g_fr = [p.grad if p.grad is not None else torch.zeros_like(p) for p in job.module.parameters()]
        dot = sum(float((a * b).sum()) for a, b in zip(g_fr, mine))
        stats = (dot, sum(float((b * b).sum()) for b in mine), sum(float((a * a).sum()) for a in g_fr))
    everyone = [None] * K
    tdist.all_gather_object(everyone, stats, group=job.rt.control)
    if job.reporter is None:
        return None
    row = {"step": t + 1, "epoch": (t + 1) / job.steps_per_epoch}
    total = [0.0, 0.0, 0.0]
    for stage, s in enumerate(everyone):
        if s is None:
            continue
        dot, n_bp, n_fr = s
        row[f"sigma_{stage}"] = dot / n_bp if n_bp > 0 else float("nan")
        row[f"cos_{stage}"] = dot / math.sqrt(n_bp * n_fr) if n_bp * n_fr > 0 else float("nan")
        total = [a + b for a, b in zip(total, s)]
    if total[1] > 0 and total[2] > 0:
        row["sigma"] = total[0] / total[1]
        row["cos"] = total[0] / math.sqrt(total[1] * total[2])
    return row
