"""The FR stage compute in one process: the replay leaves statistics and RNG as the forward left them."""

from __future__ import annotations

import torch
import torch.nn as nn

from fr_dist.algos import fr


def make_worker(module, K=2, stage=0, shape=(4, 6)):
    params = list(module.parameters())
    opt = torch.optim.SGD(params, lr=0.1) if params else None
    return fr.Worker(module, stage, K, torch.device("cpu"), opt, lambda b: 0.1, (shape, torch.float32))


def test_replay_leaves_batchnorm_statistics_unchanged():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))
    worker = make_worker(module)
    worker.forward(0, torch.randn(4, 6))
    bn = module[1]
    after_forward = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    assert not torch.equal(after_forward[0], torch.zeros(6))  # the forward did update them
    worker.backward(0, torch.randn(4, 6))
    assert torch.equal(bn.running_mean, after_forward[0])
    assert torch.equal(bn.running_var, after_forward[1])
    assert torch.equal(bn.num_batches_tracked, after_forward[2])
    assert module[0].weight.grad.abs().sum() > 0  # the replay used batch statistics and produced a gradient


def test_replay_reuses_the_dropout_mask_and_leaves_the_stream():
    torch.manual_seed(0)
    worker = make_worker(nn.Sequential(nn.Dropout(0.5)), K=3, stage=1)
    x = torch.ones(4, 6)
    h = worker.forward(0, x)  # the forward's mask: h = mask / (1 - p)
    state = torch.get_rng_state()
    grad = worker.backward(0, torch.ones(4, 6))  # d h / d x = mask / (1 - p) with the replay's mask
    assert torch.equal(grad, h)
    assert torch.equal(torch.get_rng_state(), state)  # the replay did not advance the stream
    assert 0 < int((h == 0).sum()) < h.numel()
