"""Single-process simulators of the training algorithms: the ground truth.

Written plainly and independently: nothing here is imported from `algos/`, the
engine or the runtime. Every stage is a module in one process; the loops below
follow DESIGN section 1 literally, so a distributed run can be compared with
them parameter by parameter.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def backprop(model: nn.Module, batches, lr_of, make_optimizer, seed: int) -> list[float]:
    """Plain backpropagation over `batches` [(x, y), ...]; returns the losses.

    `seed` seeds the global RNG (dropout) before the first batch.
    """
    optimizer = make_optimizer(model.parameters())
    torch.manual_seed(seed)
    losses = []
    for b, (x, y) in enumerate(batches):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        _set_lr(optimizer, lr_of(b))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def features_replay(stages: list[nn.Module], batches, lr_of, make_optimizer, seeds: list[int]) -> list[float]:
    """Features Replay with K = len(stages) stages, simulated; returns the losses.

    Iteration t: every stage k < K-1 forwards batch t without a graph and stores
    its input, then replays batch t-(K-1-k) with its current weights and the
    error gradient stage k+1 produced for that batch in iteration t-1; the last
    stage does forward and backward of batch t. After the last batch the
    stages keep replaying until every stored batch is applied. `seeds[k]` seeds
    stage k's RNG stream, which a replay restores to the forward's state.
    """
    K, T = len(stages), len(batches)
    optimizers = [make_optimizer(s.parameters()) for s in stages]
    rng = []
    for seed in seeds:
        torch.manual_seed(seed)
        rng.append(torch.get_rng_state())
    stored = [[] for _ in range(K)]  # stage k: [(batch, input, rng state)] oldest first
    grads = {}  # (stage, batch) -> gradient of that stage's output
    losses = []
    for t in range(T + K - 1):
        new_grads = {}
        x = batches[t][0] if t < T else None
        for k, stage in enumerate(stages):
            torch.set_rng_state(rng[k])
            if t < T and k < K - 1:
                stored[k].append((t, x.clone(), torch.get_rng_state()))
                with torch.no_grad():
                    x = stage(x)
            elif t < T:
                x_in = x.detach().requires_grad_(k > 0)
                loss = F.cross_entropy(stage(x_in), batches[t][1])
                loss.backward()
                losses.append(loss.item())
                if k > 0:
                    new_grads[(k - 1, t)] = x_in.grad
                _set_lr(optimizers[k], lr_of(t))
                optimizers[k].step()
                optimizers[k].zero_grad()
            rng[k] = torch.get_rng_state()
            old = t - (K - 1 - k)
            if k < K - 1 and 0 <= old < T:
                b, x_old, state = stored[k].pop(0)
                assert b == old
                buffers = copy.deepcopy(dict(stage.named_buffers()))
                torch.set_rng_state(state)
                x_in = x_old.requires_grad_(k > 0)
                stage(x_in).backward(grads.pop((k, b)))
                for name, value in buffers.items():  # the replay does not count as statistics
                    stage.get_buffer(name).copy_(value)
                if k > 0:
                    new_grads[(k - 1, b)] = x_in.grad
                _set_lr(optimizers[k], lr_of(b))
                optimizers[k].step()
                optimizers[k].zero_grad()
        grads.update(new_grads)
    assert not grads and not any(stored), "every batch is applied exactly once"
    return losses
