"""Learning-rate schedules by hand, AdamW's parameter groups, the rate of every group."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from fr_dist.algos.base import Worker
from fr_dist.config import AdamWConfig, OptimConfig, ScheduleConfig, SGDConfig
from fr_dist.optim import make_lr, make_optimizer, spike_step


def test_step_schedule_by_hand():
    optim = OptimConfig(lr=0.1, schedule=ScheduleConfig(name="step", milestones=[2, 3], gamma=0.1))
    lr = make_lr(optim, steps_per_epoch=10, total_steps=40)
    assert [lr(b) for b in (0, 19, 20, 29, 30, 39)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_and_onecycle_by_hand():
    cos = make_lr(OptimConfig(lr=1.0, schedule=ScheduleConfig(name="cosine")), 10, 100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    one = make_lr(OptimConfig(lr=1.0, schedule=ScheduleConfig(name="onecycle")), 10, 100)
    assert one(0) == pytest.approx(1 / 30) and one(29) == pytest.approx(1.0)
    assert one(65) == pytest.approx(0.5 * (1 + math.cos(math.pi * 35 / 70)))


class Tagger(nn.Module):
    """A layer of each kind AdamW treats apart: embedding, linear, the norms; the head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(7, 4)
        self.linear = nn.Linear(4, 6)
        self.layer_norm = nn.LayerNorm(6)
        self.batch_norm = nn.BatchNorm1d(6)
        self.conv = nn.Conv1d(6, 4, 3)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embedding.weight


def test_adamw_decays_only_weight_matrices_and_kernels():
    m = Tagger()
    optimizer = make_optimizer(AdamWConfig(lr=0.01, weight_decay=0.1, betas=[0.8, 0.9], eps=1e-6), m)
    no_decay = [m.embedding.weight, m.linear.bias, m.layer_norm.weight, m.layer_norm.bias, m.batch_norm.weight,
                m.batch_norm.bias, m.conv.bias]
    decay = [m.linear.weight, m.conv.weight]
    assert isinstance(optimizer, torch.optim.AdamW)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert by_decay == {0.1: {id(p) for p in decay}, 0.0: {id(p) for p in no_decay}}
    assert all((g["lr"], g["betas"], g["eps"]) == (0.01, (0.8, 0.9), 1e-6) for g in optimizer.param_groups)


def test_sgd_is_one_group_and_a_stage_without_parameters_has_no_optimizer():
    m = Tagger()
    sgd = make_optimizer(SGDConfig(weight_decay=0.1), m)
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["weight_decay"] == 0.1
    assert {id(p) for p in sgd.param_groups[0]["params"]} == {id(p) for p in m.parameters()}
    for optim in (SGDConfig(), AdamWConfig()):
        assert make_optimizer(optim, nn.Sequential(nn.ReLU(), nn.Flatten())) is None


def by_hand(name: str, batch: int) -> float:
    """The rate of `batch` for base 0.01 over 40 batches of 10 per epoch (SCHEDULES below), written out."""
    if name == "constant":
        return 0.01
    if name == "step":  # milestones [2], gamma 0.5
        return 0.01 if batch < 20 else 0.005
    if name == "cosine":
        return 0.01 * 0.5 * (1 + math.cos(math.pi * batch / 40))
    if name == "warm cosine":  # one epoch of warm-up
        return 0.01 * (batch + 1) / 10 if batch < 10 else 0.01 * 0.5 * (1 + math.cos(math.pi * (batch - 10) / 30))
    # onecycle: warm-up over 30% of the run (12 batches), then cosine
    return 0.01 * (batch + 1) / 12 if batch < 12 else 0.01 * 0.5 * (1 + math.cos(math.pi * (batch - 12) / 28))


SCHEDULES = {"constant": ScheduleConfig(name="constant"),
             "step": ScheduleConfig(name="step", milestones=[2], gamma=0.5),
             "cosine": ScheduleConfig(name="cosine"), "warm cosine": ScheduleConfig(name="cosine", warmup_epochs=1),
             "onecycle": ScheduleConfig(name="onecycle")}


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_sets_the_rate_of_every_adamw_group(name):
    """A stage's step with AdamW applies lr(batch) to both groups (decayed and not)."""
    m = Tagger()
    optim = AdamWConfig(lr=0.01, schedule=SCHEDULES[name])
    optimizer = make_optimizer(optim, m)
    worker = Worker(m, 0, 1, torch.device("cpu"), optimizer, make_lr(optim, steps_per_epoch=10, total_steps=40), None)
    assert len(optimizer.param_groups) == 2
    for batch in (0, 5, 11, 12, 19, 20, 30, 39):
        worker.step(batch)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([by_hand(name, batch)] * 2, rel=1e-12)


def two_steps(optimizer_step, nesterov: bool, weight_decay: float):
    """Weights after two steps on a fixed pair of gradients, from the same start."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    for g in torch.randn(2, 5):
        w.grad = g.clone()
        optimizer_step(optimizer)
    return w.detach()


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_spike_step_without_delay_is_torch_sgd_bit_for_bit(nesterov, weight_decay):
    """tau = 0: a = 1, b = 0 is torch's momentum step; with Nesterov (n = 1) a = m, b = 1 is torch's Nesterov."""
    want = two_steps(lambda o: o.step(), nesterov, weight_decay)
    assert torch.equal(two_steps(lambda o: spike_step(o, 0), nesterov, weight_decay), want)


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_spike_step_by_hand(nesterov):
    """Two steps with tau = 2, written out: v1 = g1, w1 = w0 - lr (a v1 + b g1); v2 = m v1 + g2,
    w2 = w1 - lr (a v2 + b g2), a = m^n, b = (1 - m^n) / (1 - m), n = tau (+1 with Nesterov);
    g includes the weight decay on the weights it is taken at."""
    lr, m, decay, tau = 0.1, 0.9, 0.01, 2
    n = tau + 1 if nesterov else tau
    a, b = m ** n, (1 - m ** n) / (1 - m)
    torch.manual_seed(0)
    w0 = torch.randn(5).double()
    g1, g2 = torch.randn(2, 5).double()
    d1 = g1 + decay * w0
    w1 = w0 - lr * (a * d1 + b * d1)
    d2 = g2 + decay * w1
    w2 = w1 - lr * (a * (m * d1 + d2) + b * d2)
    w = nn.Parameter(w0.clone())
    optimizer = torch.optim.SGD([w], lr=lr, momentum=m, nesterov=nesterov, weight_decay=decay)
    for g in (g1, g2):
        w.grad = g.clone()
        spike_step(optimizer, tau)
    assert torch.allclose(w.detach(), w2, rtol=0, atol=1e-12)


def test_spike_step_keeps_a_gradients_total_contribution():
    """One gradient, then none: its updates add up to lr / (1 - m) g with or without compensation (here tau = 3);
    compensation only moves them earlier: the first step moves lr (m^3 + 1 + m + m^2) g instead of lr g."""
    lr, m, tau = 0.1, 0.5, 3
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    paths = []
    for step in (lambda o: o.step(), lambda o: spike_step(o, tau)):
        w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        optimizer = torch.optim.SGD([w], lr=lr, momentum=m)
        path = []
        for i in range(200):
            w.grad = g.clone() if i == 0 else torch.zeros_like(g)
            step(optimizer)
            path.append(w.detach().clone())
        paths.append(path)
    plain, compensated = paths
    assert torch.allclose(plain[-1], -lr / (1 - m) * g) and torch.allclose(compensated[-1], plain[-1])
    assert torch.allclose(plain[0], -lr * g)
    assert torch.allclose(compensated[0], -lr * (m ** tau + (1 - m ** tau) / (1 - m)) * g)
