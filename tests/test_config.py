"""The schema: every bad value refused with one message, the shipped configs valid."""

from __future__ import annotations

import pytest

from fr_dist import FRError
from fr_dist.config import CONF_DIR, compose, validate
from fr_dist.optim import make_lr


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
