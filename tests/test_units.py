"""Partition, ring buffer, config validation, lr schedules and the FR stage compute."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from fr_dist import FRError
from fr_dist.algos import fr
from fr_dist.config import CONF_DIR, OptimConfig, ScheduleConfig, compose, validate
from fr_dist.optim import make_lr
from fr_dist.partition import stage_cuts
from fr_dist.runtime.ring import RingBuffer


def test_uniform_partition_covers_blocks_in_order():
    assert stage_cuts(11, 2, "uniform") == [0, 6, 11]
    assert stage_cuts(5, 4, "uniform") == [0, 2, 3, 4, 5]
    assert stage_cuts(4, 1, "uniform") == [0, 4]


def test_explicit_partition():
    assert stage_cuts(5, 2, [3]) == [0, 3, 5]
    with pytest.raises(FRError, match=r"partition=\[5\] must be 1 strictly increasing cut indices"):
        stage_cuts(5, 2, [5])
    with pytest.raises(FRError, match=r"partition=\[2, 2\]"):
        stage_cuts(5, 3, [2, 2])


def test_more_stages_than_blocks():
    with pytest.raises(FRError, match=r"splits=6 is larger than the model's 5 blocks"):
        stage_cuts(5, 6, "uniform")


def test_ring_buffer_fifo_and_batch_check():
    ring = RingBuffer(2, (3,), torch.float32, torch.device("cpu"))
    rng = torch.get_rng_state()
    ring.push(0, torch.zeros(3), rng, None)
    ring.push(1, torch.ones(3), rng, None)
    with pytest.raises(RuntimeError, match="ring buffer full"):
        ring.push(2, torch.ones(3), rng, None)
    with pytest.raises(RuntimeError, match="replay of batch 1 but the oldest stored input is batch 0"):
        ring.pop(1)
    x, state, _ = ring.pop(0)
    assert torch.equal(x, torch.zeros(3)) and torch.equal(state, rng)
    ring.push(2, torch.full((3,), 2.0), rng, None)
    assert torch.equal(ring.pop(1)[0], torch.ones(3))
    assert torch.equal(ring.pop(2)[0], torch.full((3,), 2.0))
    assert ring.nbytes == 2 * 3 * 4


@pytest.mark.parametrize("overrides,match", [
    (["algo.name=foo"], "unknown algo 'foo'"),
    (["algo=foo"], "Could not find 'algo/foo'"),
    (["batch_size=0"], "batch_size=0 must be a positive integer"),
    (["epochs=-1"], "epochs=-1 must be a positive integer"),
    (["splits=3"], r"splits=3 but the world size is 2"),
    (["data.name=imagenet"], "unknown data 'imagenet'"),
    (["optim.schedule.name=linear"], "unknown lr schedule 'linear'"),
    (["model.name=vgg"], "unknown model 'vgg'"),
    (["optim.name=adam"], "unknown optimizer 'adam'"),
    (["algo=gpipe", "microbatches=3"], "microbatches=3 must divide batch_size=128"),
    (["algo=1f1b", "microbatches=1"], "1f1b needs microbatches >= splits"),
    (["diag_every=-1"], "diag_every=-1 must be >= 0"),
    (["batch_size=abc"], "bad configuration"),
    (["nonsense=1"], "bad configuration"),
])
def test_config_errors(overrides, match):
    with pytest.raises(FRError, match=match):
        validate(compose(["splits=2", *overrides]), world_size=2)


def test_config_defaults_validate():
    c = validate(compose(["splits=2", "wandb.mode=disabled"]), world_size=2)
    assert c.splits == 2 and c.algo.name == "fr" and c.model["name"] == "mlp" and c.threads_per_rank >= 1


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiment_configs_validate(name):
    c = validate(compose([f"+experiment={name}", "splits=4", "wandb.mode=disabled"]), world_size=4)
    assert c.epochs >= 1 and c.model["name"].startswith("resnet")


def test_paper_cifar10_recipe_is_the_papers():
    c = validate(compose(["+experiment=paper_cifar10", "splits=2", "wandb.mode=disabled"]), world_size=2)
    assert (c.model["name"], c.data.name, c.data.augment, c.batch_size, c.epochs) == ("resnet56", "cifar10", True, 128, 300)
    assert (c.optim.momentum, c.optim.nesterov, c.optim.weight_decay) == (0.9, True, 5e-4)
    steps = 50000 // 128  # CIFAR-10's training set, last partial batch dropped
    lr = make_lr(c.optim, steps_per_epoch=steps, total_steps=300 * steps)
    # 0.01 until epoch 150, then 0.001 until 225, then 0.0001 (the authors' run script)
    assert [lr(b) for b in (0, 150 * steps - 1, 150 * steps, 225 * steps - 1, 225 * steps, 300 * steps - 1)] == \
        pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


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


def test_more_nccl_stages_than_gpus(monkeypatch):
    from fr_dist.runtime import groups as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(FRError, match="4 stages on this node but 2 visible GPUs"):
        dist.check_devices()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    dist.check_devices()


def test_busy_time_leaves_out_the_wait_for_the_error_gradient():
    import time

    from fr_dist.runtime.actions import Action
    from fr_dist.runtime.engine import Engine

    class SlowLink:  # the gradient arrives 0.3 s after the stage asks for it
        def wait(self, batch):
            time.sleep(0.3)
            return torch.ones(2)

    class Stage:  # a backward that computes for 0.1 s
        def backward(self, batch, grad):
            end = time.perf_counter() + 0.1
            while time.perf_counter() < end:
                pass
            return grad

    engine = Engine(Stage(), None, {"g_in": SlowLink()}, torch.device("cpu"))
    start = time.perf_counter()
    engine.run([Action("backward", 0)])
    assert time.perf_counter() - start >= 0.4  # the action took both
    assert 0.09 <= engine.busy_s < 0.25  # only the compute counts
