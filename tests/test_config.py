"""The schema: every bad value refused with one message, the shipped configs valid."""

from __future__ import annotations

import re

import pytest

from fr_dist import FRError
from fr_dist.compose import CONF_DIR, compose
from fr_dist.config import validate
from fr_dist.models import MODELS
from fr_dist.optim import make_lr

E = re.escape  # a message expected word for word

@pytest.mark.parametrize("overrides,match", [
    (["algo.name=foo"], "unknown algo 'foo'"),
    (["algo=foo"], "Could not find 'algo/foo'"),
    (["batch_size=0"], "batch_size=0 must be a positive integer"),
    (["epochs=-1"], "epochs=-1 must be a positive integer"),
    (["splits=3"], r"splits=3 but the world size is 2"),
    (["data.name=imagenet"], "unknown data 'imagenet'"),
    (["optim.schedule.name=linear"], "unknown lr schedule 'linear'"),
    (["model.name=vgg"], "unknown model 'vgg'"),
    (["optim.name=adam"], E("unknown optimizer 'adam': choose one of sgd, adamw (optim=sgd)")),
    (["algo=gpipe", "microbatches=3"], "microbatches=3 must divide batch_size=128"),
    (["algo=1f1b", "microbatches=1"], "1f1b needs microbatches >= splits"),
    (["diag_every=-1"], "diag_every=-1 must be >= 0"),
    (["batch_size=abc"], "bad configuration"),
    (["nonsense=1"], "bad configuration"),
    # Types, named by key, on one line (OmegaConf's own messages span several).
    (["batch_size=abc"], E("batch_size='abc' must be an integer: set e.g. batch_size=128")),
    (["epochs=1.5"], E("epochs=1.5 must be an integer: set e.g. epochs=1")),
    (["batch_size=true"], E("batch_size=true must be an integer")),
    (["splits=[2]"], E("splits=[2] must be an integer")),
    (["optim.lr=true"], E("optim.lr=true must be a number: set e.g. optim.lr=0.1")),
    (["optim.momentum=abc"], E("optim.momentum='abc' must be a number")),
    (["optim.nesterov=2"], E("optim.nesterov=2 must be true or false: set e.g. optim.nesterov=false")),
    (["progress=maybe"], E("progress='maybe' must be true or false")),
    (["data.augment=maybe"], E("data.augment='maybe' must be true or false")),
    (["data.data_root=[1]"], E("data.data_root=[1] must be a string or null")),
    (["wandb.group=[1]"], E("wandb.group=[1] must be a string or null")),
    (["resume=[1]"], E("resume=[1] must be a string or null")),
    (["data.shape=3"], E("data.shape=3 must be a list")),
    (["optim.schedule.milestones=5"], E("optim.schedule.milestones=5 must be a list")),
    (["threads_per_rank=abc"], E("threads_per_rank='abc' must be an integer or null")),
    (["algo=dni", "algo.synth_hidden=abc"], E("algo.synth_hidden='abc' must be an integer or null")),
    (["algo=gpipe", "algo.checkpoint=maybe"], E("algo.checkpoint='maybe' must be true or false")),
    (["wandb=null"], E("wandb=null must be a section with the keys mode, project, group")),
    (["batch_size=${nowhere}"], E("batch_size=${nowhere} cannot be resolved (Interpolation key 'nowhere' not found)")),
    # Unknown keys, and options of another algorithm or model.
    (["+batchsize=1"], E("batchsize=1 is not a configuration key: remove it (did you mean batch_size?)")),
    (["+data.clases=3"], E("data.clases=3 is not a key of data (its keys: name, data_root, shape,")),
    (["+optim.foo=1"], E("optim.foo=1 is not a key of optim")),
    (["+algo.synth=conv"], E("algo.synth is not an option of algo=fr (its options: spike_compensation, "
                             "delay_warmup_epochs, grad_shrink, weight_prediction, replay_chunks): remove "
                             "algo.synth='conv', or choose algo=dni, which has it")),
    (["algo=bp", "+algo.grad_shrink=0.5"], E("algo.grad_shrink is not an option of algo=bp (its options: none): "
                                             "remove algo.grad_shrink=0.5, or choose algo=fr, which has it")),
    (["algo=gpipe", "+algo.synth=conv"], E("algo.synth is not an option of algo=gpipe (its options: checkpoint)")),
    (["algo=dni", "+algo.checkpoint=true"], E("algo.checkpoint is not an option of algo=dni (its options: synth, "
                                              "synth_lr, synth_hidden)")),
    (["+model.width=4"], E("model.width=4 is not an option of model=mlp (its options: hidden, dropout): remove it")),
    (["model=resnet8", "+model.hidden=[3]"],
     E("model.hidden=[3] is not an option of model=resnet8 (its options: width)")),
    # Config groups set to null.
    (["model=null"], E("model=null: model is a config group, not a value: choose one of custom, gpt, mlp,")),
    (["algo=null"], E("algo=null: algo is a config group, not a value")),
    (["data=null"], E("(e.g. data=synthetic)")),
    # Ranges of run keys.
    (["splits=0"], E("splits=0 must be a positive integer: set splits=1 or more")),
    (["eval_every=0"], E("eval_every=0 must be a positive integer")),
    (["log_every=-2"], E("log_every=-2 must be a positive integer")),
    (["microbatches=0"], E("microbatches=0 must be a positive integer")),
    (["algo=gpipe", "microbatches=-1"], E("microbatches=-1 must be a positive integer")),
    (["algo=gpipe", "microbatches=1000000000000"], E("microbatches=1000000000000 must be at most batch_size=128 (a "
                                                     "micro-batch holds a sample or more): set microbatches=128")),
    (["max_steps=0"], E("max_steps=0 must be a positive integer or null: set max_steps=1 or more, or max_steps=null")),
    (["threads_per_rank=0"], E("threads_per_rank=0 must be a positive integer or null")),
    (["threads_per_rank=100000"], E("threads_per_rank=100000 must be at most 1024: set threads_per_rank=null")),
    (["ckpt_keep=0"], E("ckpt_keep=0 must be a positive integer: set ckpt_keep=1 or more")),
    (["ckpt_every=-1"], E("ckpt_every=-1 must be >= 0: set ckpt_every=0 (only at the end) or N > 0")),
    (["seed=-1"], E("seed=-1 must be in [0, 2**32): set e.g. seed=0")),
    (["seed=4294967296"], E("seed=4294967296 must be in [0, 2**32)")),
    (["fail_timeout_s=0"], E("fail_timeout_s=0.0 must be a number of seconds in (0, 86400]")),
    (["fail_timeout_s=inf"], E("fail_timeout_s=inf must be a number of seconds in (0, 86400]")),
    (["fail_timeout_s=1e300"], E("fail_timeout_s=1e+300 must be a number of seconds in (0, 86400]: "
                                 "set e.g. fail_timeout_s=60")),
    (["resume=''"], E("resume='' must be null, auto or a checkpoint path: set resume=null to start fresh")),
    (["wandb.mode=foo"], E("wandb.mode='foo' must be one of online, offline, disabled")),
    (["wandb.project=''"], E("wandb.project='' must be a non-empty string: set e.g. wandb.project=fr_dist")),
    (["wandb.group=''"], E("wandb.group='' must be a non-empty string or null")),
    # partition: uniform, profiled or increasing block indices (its length and end: at start-up, test_train.py).
    (["partition=foo"], E("partition='foo' must be uniform, profiled or a list of splits-1 increasing block indices: "
                          "set partition=uniform or e.g. partition=[1]")),
    (["partition=1"], E("partition=1 must be uniform, profiled or a list")),
    (["partition=null"], E("partition=null must be uniform, profiled or a list")),
    (["partition=[0]"], E("partition=[0]: the element 0 must be a positive integer: set e.g. partition=[1]")),
    (["partition=[1.5]"], E("partition=[1.5]: the element 1.5 must be a positive integer")),
    (["partition=[a]"], E("partition=['a']: the element 'a' must be a positive integer")),
    (["partition=[2,2]"], E("partition=[2,2] must be strictly increasing")),
    # The optimizer and its schedule.
    (["optim.lr=0"], E("optim.lr=0.0 must be a positive number: set e.g. optim.lr=0.1")),
    (["optim.lr=nan"], E("optim.lr=nan must be a positive number")),
    (["optim.lr=-inf"], E("optim.lr=-inf must be a positive number")),
    (["optim.momentum=1"], E("optim.momentum=1.0 must be a number in [0, 1): set e.g. optim.momentum=0.9")),
    (["optim.momentum=-0.5"], E("optim.momentum=-0.5 must be a number in [0, 1)")),
    (["optim.weight_decay=-1"], E("optim.weight_decay=-1.0 must be a number >= 0")),
    (["optim.nesterov=true", "optim.momentum=0"], E("optim.nesterov=true needs optim.momentum > 0 (got 0.0)")),
    (["optim.schedule.gamma=0"], E("optim.schedule.gamma=0.0 must be a positive number")),
    (["optim.schedule.gamma=-1"], E("optim.schedule.gamma=-1.0 must be a positive number")),
    (["optim.schedule.warmup_epochs=-1"], E("optim.schedule.warmup_epochs=-1.0 must be a number >= 0")),
    (["optim.schedule.name=step", "optim.schedule.milestones=[-1]"],
     E("optim.schedule.milestones=[-1]: the element -1 must be a positive integer")),
    (["optim.schedule.name=step", "optim.schedule.milestones=[1.5]"],
     E("optim.schedule.milestones=[1.5]: the element 1.5 must be a positive integer")),
    (["optim.schedule.name=step", "optim.schedule.milestones=[a]"],
     E("optim.schedule.milestones=['a']: the element 'a' must be a positive integer")),
    (["optim.schedule.name=step", "optim.schedule.milestones=[3,1]"],
     E("optim.schedule.milestones=[3,1] must be strictly increasing: sort it and drop repeats, "
       "e.g. optim.schedule.milestones=[1,3]")),
    (["optim.schedule.name=step", "optim.schedule.milestones=[2,2]"],
     E("milestones=[2,2] must be strictly increasing")),
    (["optim.schedule.milestones=[2]"], E("optim.schedule.milestones=[2] apply to the step schedule only, not "
                                          "optim.schedule.name=cosine")),
    # AdamW and clipping; each optimizer's options refused with the other.
    (["optim=adamw", "optim.betas=[0.9]"], E("optim.betas=[0.9] must be two numbers in [0, 1): "
                                            "set e.g. optim.betas=[0.9,0.95]")),
    (["optim=adamw", "optim.betas=[1,0.9]"], E("optim.betas=[1,0.9] must be two numbers in [0, 1)")),
    (["optim=adamw", "optim.betas=[0.9,-0.1]"], E("optim.betas=[0.9,-0.1] must be two numbers in [0, 1)")),
    (["optim=adamw", "optim.betas=[a,0.9]"], E("optim.betas=['a',0.9] must be two numbers in [0, 1)")),
    (["optim=adamw", "optim.betas=0.9"], E("optim.betas=0.9 must be a list: set e.g. optim.betas=[0.9,0.95]")),
    (["optim=adamw", "optim.eps=0"], E("optim.eps=0.0 must be a positive number: set e.g. optim.eps=1e-08")),
    (["optim=adamw", "optim.eps=abc"], E("optim.eps='abc' must be a number")),
    (["optim=adamw", "optim.lr=0"], E("optim.lr=0.0 must be a positive number: set e.g. optim.lr=0.001")),
    (["optim=adamw", "optim.weight_decay=-1"], E("optim.weight_decay=-1.0 must be a number >= 0: "
                                                "set e.g. optim.weight_decay=0.1")),
    (["optim.clip_grad_norm=0"], E("optim.clip_grad_norm=0.0 must be a positive number or null: "
                                   "set e.g. optim.clip_grad_norm=1.0")),
    (["optim=adamw", "optim.clip_grad_norm=-1"], E("optim.clip_grad_norm=-1.0 must be a positive number or null")),
    (["optim.clip_grad_norm=inf"], E("optim.clip_grad_norm=inf must be a positive number or null")),
    (["optim.clip_grad_norm=abc"], E("optim.clip_grad_norm='abc' must be a number or null")),
    (["optim=adamw", "+optim.momentum=0.5"], E("optim.momentum is not an option of optim=adamw (its options: lr, "
                                               "weight_decay, clip_grad_norm, schedule, betas, eps): remove "
                                               "optim.momentum=0.5, or choose optim=sgd, which has it")),
    (["+optim.betas=[0.9,0.9]"], E("optim.betas is not an option of optim=sgd (its options: lr, weight_decay, "
                                   "clip_grad_norm, schedule, momentum, nesterov): remove optim.betas=[0.9,0.9], "
                                   "or choose optim=adamw, which has it")),
    (["optim.name=adamw"], E("optim.momentum is not an option of optim=adamw (its options: lr, weight_decay, "
                             "clip_grad_norm, schedule, betas, eps): choose the optimizer with optim=adamw, "
                             "which brings its own options, not optim.name=adamw")),
    (["optim=adamw", "+optim.foo=1"], E("optim.foo=1 is not a key of optim (its keys: name, lr, weight_decay, "
                                        "clip_grad_norm, schedule, betas, eps): remove it")),
    # Algorithm options.
    (["algo=dni", "algo.synth=foo"], E("algo.synth='foo' must be one of auto, conv, linear")),
    (["algo=dni", "algo.synth_lr=0"], E("algo.synth_lr=0.0 must be a positive number or null")),
    (["algo=dni", "algo.synth_lr=-1"], E("algo.synth_lr=-1.0 must be a positive number or null")),
    (["algo=dni", "algo.synth_hidden=0"], E("algo.synth_hidden=0 must be a positive integer or null")),
    (["algo=dni", "algo.synth=conv"], E("algo.synth=conv makes a conv synthetic-gradient model, which needs "
                                        "(N, C, H, W) features, but model=mlp sends 2-D ones: set algo.synth=auto")),
    (["algo=dni", "algo.synth=linear", "model=resnet8"], E("algo.synth=linear makes a linear synthetic-gradient "
                                                           "model, which needs (N, D) or (N, T, D) features")),
    (["algo=1f1b", "diag_every=5"], E("diag_every needs a stage-wise update; algo=1f1b has none")),
    # Staleness compensation (fr, ddg).
    (["algo.spike_compensation=2"], E("algo.spike_compensation=2 must be true or false")),
    (["algo.delay_warmup_epochs=0"], E("algo.delay_warmup_epochs=0.0 must be a positive number or null: "
                                       "set e.g. algo.delay_warmup_epochs=1.0")),
    (["algo=ddg", "algo.delay_warmup_epochs=-1"], E("algo.delay_warmup_epochs=-1.0 must be a positive number")),
    (["algo.grad_shrink=0"], E("algo.grad_shrink=0.0 must be a number in (0, 1] or null: "
                               "set e.g. algo.grad_shrink=0.9")),
    (["algo=ddg", "algo.grad_shrink=1.5"], E("algo.grad_shrink=1.5 must be a number in (0, 1] or null")),
    (["algo.grad_shrink=nan"], E("algo.grad_shrink=nan must be a number in (0, 1] or null")),
    (["algo.replay_chunks=0"], E("algo.replay_chunks=0 must be a positive integer: set algo.replay_chunks=1 or more")),
    (["algo.replay_chunks=1.5"], E("algo.replay_chunks=1.5 must be an integer")),
    (["algo.replay_chunks=3"], E("algo.replay_chunks=3 must divide batch_size=128 (equal slices): choose a divisor, "
                                 "e.g. algo.replay_chunks=2")),
    (["algo.replay_chunks=256"], E("algo.replay_chunks=256 must divide batch_size=128 (equal slices): choose a "
                                   "divisor, e.g. algo.replay_chunks=128")),
    (["algo=ddg", "+algo.replay_chunks=2"], E("algo.replay_chunks is not an option of algo=ddg (its options: "
                                              "spike_compensation, delay_warmup_epochs, grad_shrink): remove "
                                              "algo.replay_chunks=2, or choose algo=fr, which has it")),
    (["algo=ddg", "+algo.weight_prediction=true"], E("algo.weight_prediction is not an option of algo=ddg")),
    (["algo=dni", "+algo.replay_chunks=2"], E("algo.replay_chunks is not an option of algo=dni")),
    (["algo=gpipe", "+algo.spike_compensation=true"], E("algo.spike_compensation is not an option of algo=gpipe")),
    (["optim=adamw", "algo.spike_compensation=true"], E("algo.spike_compensation=true is defined for SGD with "
                                                        "momentum, not optim=adamw: set "
                                                        "algo.spike_compensation=false or optim=sgd")),
    (["optim=adamw", "algo.weight_prediction=true"], E("algo.weight_prediction=true is defined for SGD with "
                                                       "momentum, not optim=adamw")),
    (["algo=ddg", "optim=adamw", "algo.spike_compensation=true"], E("algo.spike_compensation=true is defined for "
                                                                    "SGD with momentum, not optim=adamw")),
    (["optim.momentum=0", "algo.spike_compensation=true"], E("algo.spike_compensation=true needs optim.momentum > 0 "
                                                             "(got 0.0): set algo.spike_compensation=false or e.g. "
                                                             "optim.momentum=0.9")),
    (["optim.momentum=0", "algo.weight_prediction=true"], E("algo.weight_prediction=true needs optim.momentum > 0")),
    # Model options (models.check_options).
    (["model.hidden=[8,-1]"], E("model.hidden=[8,-1]: the element -1 must be a positive integer: "
                                "set e.g. model.hidden=[64,64,64]")),
    (["model.hidden=[8,0]"], E("model.hidden=[8,0]: the element 0 must be a positive integer")),
    (["model.hidden=[a]"], E("model.hidden=['a']: the element 'a' must be a positive integer")),
    (["model.hidden=[1.5]"], E("model.hidden=[1.5]: the element 1.5 must be a positive integer")),
    (["model.hidden=8"], E("model.hidden=8 must be a list of positive integers")),
    (["model.dropout=1"], E("model.dropout=1 must be a number in [0, 1): set e.g. model.dropout=0.1")),
    (["model.dropout=-0.1"], E("model.dropout=-0.1 must be a number in [0, 1)")),
    (["model.dropout=abc"], E("model.dropout='abc' must be a number in [0, 1)")),
    (["model=resnet8", "model.width=0"], E("model.width=0 must be a positive integer: set model.width=1 or more")),
    (["model=resnet8", "model.width=2.5"], E("model.width=2.5 must be a positive integer")),
    (["model=resnet8", "model.width=abc"], E("model.width='abc' must be a positive integer")),
    (["model.name=null"], "unknown model null"),
    (["model=resnet8", "data.shape=[3,4]"], E("model=resnet8 needs images (C, H, W), but the data's shape is [3,4]: "
                                              "set data.shape=[C,H,W]")),
    # Data options (data.check_options).
    (["data.shape=[0,4,4]"], E("data.shape=[0,4,4]: the element 0 must be a positive integer: "
                               "set e.g. data.shape=[3,32,32]")),
    (["data.shape=[3,a]"], E("data.shape=[3,'a']: the element 'a' must be a positive integer")),
    (["data.shape=[3,-4,4]"], E("data.shape=[3,-4,4]: the element -4 must be a positive integer")),
    (["data.shape=[1.5,4,4]"], E("data.shape=[1.5,4,4]: the element 1.5 must be a positive integer")),
    (["data.shape=[3,[1],4]"], E("data.shape=[3,[1],4]: the element [1] must be a positive integer")),
    (["data.shape=[]"], E("data.shape=[] must be a non-empty list")),
    (["data.classes=1"], E("data.classes=1 must be >= 2: set data.classes=2 or more")),
    (["data.train_size=0"], E("data.train_size=0 must be a positive integer")),
    (["data.test_size=-3"], E("data.test_size=-3 must be a positive integer")),
    (["data.train_size=1.5"], E("data.train_size=1.5 must be an integer")),
    (["batch_size=3000"], E("batch_size=3000 is larger than data.train_size=2048: use batch_size <= 2048")),
    (["data.augment=true", "data.shape=[3]"], E("data.augment=true crops and flips images, but data.shape=[3] "
                                                "is not (C, H, W)")),
    (["data.name=fashion_mnist", "data.classes=3"], E("data.classes=3 applies to data=synthetic and "
                                                      "data=custom only; data=fashion_mnist has its own: remove "
                                                      "the override")),
    (["data.name=cifar10", "data.shape=[1,2,2]"], E("data.shape=[1,2,2] applies to data=synthetic only")),
])
def test_config_errors(overrides, match):
    with pytest.raises(FRError, match=match) as refused:
        validate(compose(["splits=2", *overrides]), world_size=2)
    assert "\n" not in str(refused.value)  # one line: train.py prints it after "[stage 0] error: "


@pytest.mark.parametrize("overrides", [
    ["algo=dni", "algo.synth=conv", "model=resnet8", "data.shape=[3,8,8]"],
    ["algo=dni", "algo.synth=linear", "algo.synth_lr=0.5", "algo.synth_hidden=4"],
    ["optim.schedule.name=step", "optim.schedule.milestones=[1,3]", "optim.schedule.gamma=1e30"],
    ["optim.momentum=0", "optim.weight_decay=0", "optim.schedule.warmup_epochs=0.5"],
    ["partition=[2]", "seed=4294967295", "threads_per_rank=1", "max_steps=1", "resume=null", "ckpt_every=0"],
    ["threads_per_rank=1024", "fail_timeout_s=86400", "algo=1f1b", "microbatches=128"],
    ["data.shape=[1,2,3,4]", "model.hidden=[]", "splits=1"],
    ["model=resnet8", "data.shape=[3,1,1]", "model.width=1"],
    ["data=fashion_mnist", "batch_size=1"],
    ["wandb.group=sweep", "wandb.project=p"],
    ["optim=adamw", "optim.betas=[0,0.999]", "optim.eps=1e-12", "optim.weight_decay=0", "optim.clip_grad_norm=1e-6"],
    ["optim=adamw", "optim.schedule.name=step", "optim.schedule.milestones=[2]", "algo=gpipe", "algo=dni"],
    ["optim.clip_grad_norm=5", "optim.schedule.name=onecycle"],
    ["algo.spike_compensation=true", "algo.weight_prediction=true", "algo.delay_warmup_epochs=0.5",
     "algo.grad_shrink=1", "algo.replay_chunks=128", "optim.nesterov=true"],
    ["algo=ddg", "algo.spike_compensation=true", "algo.delay_warmup_epochs=2", "algo.grad_shrink=1e-3"],
    ["optim=adamw", "algo.delay_warmup_epochs=1", "algo.grad_shrink=0.5", "algo.replay_chunks=2"],
])
def test_config_edges_validate(overrides):
    """Values at the edges of the ranges, and combinations that work, are accepted."""
    splits = 1 if "splits=1" in overrides else 2
    validate(compose([f"splits={splits}", "wandb.mode=disabled", *overrides]), world_size=splits)


def test_optimizer_options_are_typed_by_optimizer():
    sgd = validate(compose(["splits=1", "wandb.mode=disabled"]), world_size=1).optim
    adamw = validate(compose(["splits=1", "wandb.mode=disabled", "optim=adamw"]), world_size=1).optim
    assert (sgd.name, sgd.momentum, sgd.nesterov, sgd.clip_grad_norm) == ("sgd", 0.9, False, None)
    assert (adamw.name, adamw.lr, adamw.betas, adamw.eps, adamw.weight_decay, adamw.clip_grad_norm) == \
        ("adamw", 1e-3, [0.9, 0.95], 1e-8, 0.1, None)
    assert not hasattr(adamw, "momentum") and not hasattr(sgd, "betas")


def test_config_defaults_validate():
    c = validate(compose(["splits=2", "wandb.mode=disabled"]), world_size=2)
    assert c.splits == 2 and c.algo.name == "fr" and c.model["name"] == "mlp" and c.threads_per_rank >= 1


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiment_configs_validate(name):
    c = validate(compose([f"+experiment={name}", "splits=4", "wandb.mode=disabled"]), world_size=4)
    assert c.epochs >= 1 and c.model["name"] in MODELS


def test_paper_cifar10_recipe_is_the_papers():
    c = validate(compose(["+experiment=paper_cifar10", "splits=2", "wandb.mode=disabled"]), world_size=2)
    assert (c.model["name"], c.data.name, c.data.augment, c.batch_size, c.epochs) == ("resnet56", "cifar10", True, 128, 300)
    assert (c.optim.momentum, c.optim.nesterov, c.optim.weight_decay) == (0.9, True, 5e-4)
    steps = 50000 // 128  # CIFAR-10's training set, last partial batch dropped
    lr = make_lr(c.optim, steps_per_epoch=steps, total_steps=300 * steps)
    # 0.01 until epoch 150, then 0.001 until 225, then 0.0001 (the authors' run script)
    assert [lr(b) for b in (0, 150 * steps - 1, 150 * steps, 225 * steps - 1, 225 * steps, 300 * steps - 1)] == \
        pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])
