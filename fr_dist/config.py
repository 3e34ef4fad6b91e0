"""The one configuration schema: typed, documented, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fr_dist.errors import FRError


def _conf_dir() -> Path:
    """The configs: fr_dist/conf/ in an installed wheel (package data), else the checkout's conf/.

    A checkout (``python -m`` from the repository root, or an editable install) has
    conf/ beside the package; a wheel carries the same files inside it (setup.cfg).
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    return package.parent / "conf"  # neither: Hydra's "Primary config directory not found" names it


CONF_DIR = _conf_dir()
DATASETS = ("synthetic", "fashion_mnist", "cifar10", "cifar100")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


@dataclass
class AlgoConfig:
    """fr, bp and ddg: no options of their own."""

    name: str = "fr"  # fr, bp, ddg, dni, gpipe, 1f1b (ALGO_OPTIONS)


@dataclass
class DNIConfig(AlgoConfig):
    synth: str = "auto"  # synthetic-gradient model: auto (conv for 4-D features, linear for 2-D), conv, linear
    synth_lr: Optional[float] = None  # SGD rate of the synthetic-gradient models (null: optim.lr)
    synth_hidden: Optional[int] = None  # width of a hidden layer (null: one zero-initialised layer)


@dataclass
class PipeConfig(AlgoConfig):
    """gpipe and 1f1b through torch.distributed.pipelining (micro-batches: the top-level `microbatches`)."""

    checkpoint: bool = False  # recompute each stage's activations in backward, like FR


# Each algorithm's options: `algo.KEY` of another algorithm is refused at start-up.
ALGO_OPTIONS = {"fr": AlgoConfig, "bp": AlgoConfig, "ddg": AlgoConfig, "dni": DNIConfig, "gpipe": PipeConfig,
                "1f1b": PipeConfig}


@dataclass
class DataConfig:
    name: str = "synthetic"
    data_root: Optional[str] = None  # where dataset files live (searched first)
    shape: list = field(default_factory=lambda: [3, 32, 32])  # synthetic only: C, H, W
    classes: int = 10  # synthetic only
    train_size: int = 2048  # synthetic only
    test_size: int = 512  # synthetic only
    augment: bool = False  # crop with padding 4 and horizontal flip (training only)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant, step, cosine, onecycle
    milestones: list = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0; onecycle defaults to 30% when 0


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class WandbConfig:
    mode: str = "${oc.env:WANDB_MODE,offline}"  # online, offline, disabled
    project: str = "fr_dist"
    group: Optional[str] = None


@dataclass
class Config:
    algo: Any = None  # one of ALGO_OPTIONS, chosen by algo.name
    splits: int = 1  # K stages, one process each: must equal the world size
    model: Any = None  # dict: name (mlp, resnet8..110, resnet164) or _target_ returning blocks
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 1
    max_steps: Optional[int] = None  # caps the number of training batches (null = no cap)
    batch_size: int = 128
    seed: int = 0
    threads_per_rank: Optional[int] = None  # null: cores / ranks
    eval_every: int = 1  # epochs between evaluations (the final one is after the drain)
    log_every: int = 10  # steps between metrics rows
    microbatches: int = 4  # gpipe, 1f1b: micro-batches per batch (must divide batch_size)
    diag_every: int = 0  # steps between sufficient-direction measurements (0: off; fr, bp, ddg, dni)
    partition: Any = "uniform"  # uniform, or a list of K-1 cut indices into the block list
    ckpt_every: int = 500  # steps between checkpoints (0: only at the end)
    ckpt_keep: int = 2  # complete checkpoints kept
    resume: Optional[str] = "auto"  # null (start fresh), auto (latest in the run directory) or a path
    fail_timeout_s: float = 60.0  # how long a rank waits for a dead peer
    progress: bool = True  # progress bar on the reporting rank
    wandb: WandbConfig = field(default_factory=WandbConfig)


def check_microbatches(schedule: str, M: int, batch_size: int, K: int) -> None:
    """The micro-batch rules of gpipe and 1f1b: validate() applies them at start-up, PipeRunner on construction."""
    if M < 1 or batch_size % M:
        raise FRError(f"microbatches={M} must divide batch_size={batch_size} (equal micro-batches): "
                      f"choose a divisor, e.g. microbatches={max(d for d in range(1, max(M, 1) + 1) if batch_size % d == 0)}")
    if schedule == "1f1b" and M < K:
        raise FRError(f"1f1b needs microbatches >= splits (microbatches={M}, splits={K}): set microbatches={K} or more")


def validate(cfg: DictConfig, world_size: int) -> Config:
    """Check `cfg` against the schema and the launch; return it typed.

    Raises FRError naming the bad value and the fix. Runs identically on every
    rank, so every rank reaches the same verdict without talking to the others.
    """
    name = OmegaConf.select(cfg, "algo.name", default="fr")
    if name not in ALGO_OPTIONS:
        raise FRError(f"unknown algo {name!r}: choose one of {', '.join(ALGO_OPTIONS)} (algo=fr)")
    try:
        rest = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "algo"])
        merged = OmegaConf.merge(OmegaConf.structured(Config), rest)
        merged.algo = OmegaConf.merge(OmegaConf.structured(ALGO_OPTIONS[name]), cfg.get("algo") or {})
        c: Config = OmegaConf.to_object(merged)  # also resolves interpolations
    except OmegaConfBaseException as e:
        raise FRError(f"bad configuration: {e.msg if hasattr(e, 'msg') else e}".strip()) from None
    if name == "dni" and c.algo.synth not in ("auto", "conv", "linear"):
        raise FRError(f"algo.synth={c.algo.synth!r}: choose auto, conv or linear")
    if name in ("gpipe", "1f1b"):
        check_microbatches(name, c.microbatches, c.batch_size, c.splits)
    if c.diag_every < 0:
        raise FRError(f"diag_every={c.diag_every} must be >= 0 (0 turns the diagnostic off)")
    if c.diag_every and c.algo.name in ("gpipe", "1f1b"):
        raise FRError(f"diag_every needs a stage-wise update; algo={c.algo.name} has none: set diag_every=0")
    if c.data.name not in DATASETS:
        raise FRError(f"unknown data {c.data.name!r}: choose one of {', '.join(DATASETS)}")
    if c.optim.name != "sgd":
        raise FRError(f"unknown optimizer {c.optim.name!r}: only sgd is available (optim=sgd)")
    if c.optim.schedule.name not in SCHEDULES:
        raise FRError(f"unknown lr schedule {c.optim.schedule.name!r}: choose one of {', '.join(SCHEDULES)}")
    for key in ("batch_size", "epochs", "splits", "eval_every", "log_every"):
        if getattr(c, key) < 1:
            raise FRError(f"{key}={getattr(c, key)} must be a positive integer")
    if c.max_steps is not None and c.max_steps < 1:
        raise FRError(f"max_steps={c.max_steps} must be positive or null")
    if c.optim.lr <= 0:
        raise FRError(f"optim.lr={c.optim.lr} must be positive")
    if c.splits != world_size:
        raise FRError(
            f"splits={c.splits} but the world size is {world_size}: launch one process per stage "
            f"(torchrun --nproc_per_node={c.splits} ...) or set splits={world_size}"
        )
    if not isinstance(c.model, dict) or not ("name" in c.model or "_target_" in c.model):
        raise FRError("model is not set: choose one with model=mlp, model=resnet20, ...")
    from fr_dist.models import MODELS

    if "_target_" not in c.model and c.model["name"] not in MODELS:
        raise FRError(f"unknown model {c.model['name']!r}: choose one of {', '.join(MODELS)}, or give model._target_")
    if c.optim.nesterov and c.optim.momentum <= 0:
        raise FRError(f"optim.nesterov=true needs optim.momentum > 0 (got {c.optim.momentum})")
    if c.ckpt_every < 0 or c.ckpt_keep < 1:
        raise FRError(f"ckpt_every={c.ckpt_every} must be >= 0 and ckpt_keep={c.ckpt_keep} >= 1")
    if c.fail_timeout_s <= 0:
        raise FRError(f"fail_timeout_s={c.fail_timeout_s} must be positive")
    if c.wandb.mode not in ("online", "offline", "disabled"):
        raise FRError(f"wandb.mode={c.wandb.mode!r}: choose online, offline or disabled")
    if c.threads_per_rank is None:
        c.threads_per_rank = max(1, (os.cpu_count() or 1) // world_size)
    return c


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """conf/CONFIG_NAME.yaml with command-line `overrides`, without the hydra node.

    Hydra's errors become one FRError line.
    """
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise FRError(f"bad configuration: {one_line(str(e))}") from None
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def one_line(msg: str) -> str:
    """Hydra's multi-line message on one line: "Could not find 'algo/x'; Available options in 'algo': bp, fr"."""
    text, in_list = "", False
    for line in msg.split("\nConfig search path")[0].splitlines():
        line = line.strip()
        if not line:
            continue
        if not text:
            text = line
        elif text.endswith(":") or (in_list and " " not in line):
            text += (", " if in_list else " ") + line
            in_list = True
            continue
        else:
            text += (" " if text.endswith(".") else "; ") + line
        in_list = False
    return text
