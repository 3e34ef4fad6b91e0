"""The one configuration schema: typed, documented, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fr_dist.checks import (
    check_keys,
    choice,
    converted,
    int_list,
    integer,
    is_number,
    number,
    probability,
    refuse,
    show,
    unknown_key,
)
from fr_dist.errors import FRError

DATASETS = ("synthetic", "fashion_mnist", "cifar10", "cifar100", "python_docs", "custom")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
PRECISIONS = ("fp32", "bf16")
# What a missing value (???) is for, after "give it on the command line".
MISSING_HINTS = {"model._target_": ", e.g. model._target_=pkg.fn returning the model's blocks",
                 "data._target_": ", e.g. data._target_=pkg.fn returning (train, test) datasets",
                 "data.classes": ", the number of classes of your labels"}
# Fixed bounds, the same on every rank: 1e5 threads cannot start, a timeout of 1e300 s overflows torch's.
MAX_THREADS, MAX_TIMEOUT_S = 1024, 86400


@dataclass
class AlgoConfig:
    """bp: no options of its own."""

    name: str = "fr"  # fr, bp, ddg, dni, gpipe, 1f1b, interleaved1f1b, zb, zbv, dualpipev (ALGO_OPTIONS)


@dataclass
class DelayedConfig(AlgoConfig):
    """ddg: compensations for a stage that applies its gradient tau_k = K-1-k iterations after its forward
    (docs/DESIGN.md, Staleness compensation). The last stage (tau = 0) is never changed."""

    spike_compensation: bool = False  # SGD momentum step w -= lr (m^tau v + (1 - m^tau) / (1 - m) g)
    delay_warmup_epochs: Optional[float] = None  # lr / tau^(1 - min(b / T_w, 1)) over T_w epochs (null: off)
    grad_shrink: Optional[float] = None  # beta in (0, 1]: each stage scales the error gradient it receives (null: off)


@dataclass
class FRConfig(DelayedConfig):
    """fr: DDG's compensations, and two of its own."""

    weight_prediction: bool = False  # forward batch t with w - lr tau v, the weights its replay will see
    replay_chunks: int = 1  # the replay's forward and backward in this many slices of the batch (must divide it)


@dataclass
class DNIConfig(AlgoConfig):
    synth: str = "auto"  # synthetic-gradient model: auto (conv for 4-D features, linear for 2-D/3-D), conv, linear
    synth_lr: Optional[float] = None  # SGD rate of the synthetic-gradient models (null: optim.lr)
    synth_hidden: Optional[int] = None  # width of a hidden layer (null: one zero-initialised layer)


@dataclass
class PipeConfig(AlgoConfig):
    """gpipe and 1f1b through torch.distributed.pipelining (micro-batches: the top-level `microbatches`)."""

    checkpoint: bool = False  # recompute each stage's activations in backward, like FR


@dataclass
class VirtualPipeConfig(PipeConfig):
    """interleaved1f1b, zb, zbv and dualpipev: V model chunks ("virtual stages") per rank, K x V in all."""

    virtual: int = 2  # chunks per rank; zbv and dualpipev take exactly 2 (their V placement)


# Each algorithm's options: `algo.KEY` of another algorithm is refused at start-up.
ALGO_OPTIONS = {"fr": FRConfig, "bp": AlgoConfig, "ddg": DelayedConfig, "dni": DNIConfig,
                "gpipe": PipeConfig, "1f1b": PipeConfig, "interleaved1f1b": VirtualPipeConfig,
                "zb": VirtualPipeConfig, "zbv": VirtualPipeConfig, "dualpipev": VirtualPipeConfig}
PIPELINE_ALGOS = tuple(name for name, schema in ALGO_OPTIONS.items() if issubclass(schema, PipeConfig))
V_SHAPED = ("zbv", "dualpipev")  # two chunks per rank in a V: rank r holds chunks r and 2K-1-r
SPLIT_BACKWARD = ("zb", "zbv", "dualpipev")  # input and weight gradients in separate actions


@dataclass
class DataConfig:
    name: str = "synthetic"
    data_root: Optional[str] = None  # where dataset files live (searched first)
    shape: list = field(default_factory=lambda: [3, 32, 32])  # synthetic only: C, H, W
    classes: int = 10  # synthetic and custom only
    train_size: int = 2048  # synthetic only
    test_size: int = 512  # synthetic only
    augment: bool = False  # crop with padding 4 and horizontal flip (training only)
    seq_len: int = 128  # text only (python_docs): tokens per window, at most model.block_size
    _target_: Optional[str] = None  # custom only: pkg.fn returning (train, test) map-style Datasets of (x, y) pairs
    args: Dict[str, Any] = field(default_factory=dict)  # custom only: fn's own keyword arguments (+data.args.KEY=V)
    workers: int = 2  # custom only: DataLoader worker processes per reading rank (0: read in the rank's process)
    prefetch_factor: int = 2  # custom only: batches each worker reads ahead (with workers > 0)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant, step, cosine, onecycle
    milestones: list = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0; onecycle defaults to 30% when 0


@dataclass
class OptimConfig:
    """What every optimizer takes; OPTIM_OPTIONS adds each one's own."""

    name: str = "sgd"  # sgd, adamw (OPTIM_OPTIONS)
    lr: float = 0.1
    weight_decay: float = 5e-4  # sgd: added to the gradient (L2); adamw: decoupled, not on biases, norms, embeddings
    clip_grad_norm: Optional[float] = None  # clip the norm of each stage's own gradient before its step (null: off)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])  # the two moments' decay rates, each in [0, 1)
    eps: float = 1e-8  # added to the second moment's root


# Each optimizer's options: `optim.KEY` of another optimizer is refused at start-up.
OPTIM_OPTIONS = {"sgd": SGDConfig, "adamw": AdamWConfig}


@dataclass
class WandbConfig:
    mode: str = "${oc.env:WANDB_MODE,offline}"  # online, offline, disabled
    project: str = "fr_dist"
    group: Optional[str] = None


@dataclass
class Config:
    algo: Any = None  # one of ALGO_OPTIONS, chosen by algo.name
    splits: int = 1  # K stages, one process each per replica
    replicas: int = 1  # D data-parallel copies of the pipeline: world size = splits x replicas
    model: Any = None  # dict: name (mlp, resnet8..110, resnet164) or _target_ returning blocks
    data: DataConfig = field(default_factory=DataConfig)
    optim: Any = None  # one of OPTIM_OPTIONS, chosen by optim.name
    epochs: int = 1
    max_steps: Optional[int] = None  # caps the number of training batches (null = no cap)
    batch_size: int = 128
    seed: int = 0
    threads_per_rank: Optional[int] = None  # null: cores / ranks
    eval_every: int = 1  # epochs between evaluations (the final one is after the drain)
    eval_every_steps: Optional[int] = None  # also evaluate every N steps (null: only at epochs)
    eval_batches: Optional[int] = None  # test batches scored per evaluation (null: the whole test set)
    log_every: int = 10  # steps between metrics rows
    microbatches: int = 4  # pipelining algos (gpipe, 1f1b, ...): micro-batches per batch (must divide batch_size)
    diag_every: int = 0  # steps between sufficient-direction measurements (0: off; fr, bp, ddg, dni)
    partition: Any = "uniform"  # uniform, or a list of K-1 cut indices into the block list
    ckpt_every: int = 500  # steps between checkpoints (0: only at the end)
    ckpt_keep: int = 2  # complete checkpoints kept
    resume: Optional[str] = "auto"  # null (start fresh), auto (latest in the run directory) or a path
    fail_timeout_s: float = 60.0  # how long a rank waits for a dead peer
    progress: bool = True  # progress bar on the reporting rank
    device: str = "auto"  # auto (CUDA when every local rank has its own GPU, else the CPU), cpu, cuda
    transport: str = "auto"  # auto (nccl on CUDA, gloo on the CPU), nccl, gloo (CUDA stages: staged via host)
    deterministic: bool = False  # deterministic kernels and no TF32: a GPU run repeats bit for bit
    precision: str = "fp32"  # fp32, or bf16: every stage's compute under bfloat16 autocast, bf16 links (PRECISIONS)
    compile: bool = False  # torch.compile each stage's module, compiled at start-up (summary.json: compile_s)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def check_microbatches(schedule: str, M: int, batch_size: int, K: int, V: int = 1) -> None:
    """The micro-batch rules of the pipelining algos (V chunks per rank): validate() applies them at start-up,
    PipeRunner on construction."""
    if M > batch_size:
        raise FRError(f"microbatches={M} must be at most batch_size={batch_size} (a micro-batch holds a sample "
                      f"or more): set microbatches={batch_size} or fewer")
    if M < 1 or batch_size % M:
        divisor = max(d for d in range(1, max(M, 1) + 1) if batch_size % d == 0)  # M <= batch_size: a short search
        raise FRError(f"microbatches={M} must divide batch_size={batch_size} (equal micro-batches): "
                      f"choose a divisor, e.g. microbatches={divisor}")
    if schedule == "1f1b" and M < K:
        raise FRError(f"1f1b needs microbatches >= splits (microbatches={M}, splits={K}): set microbatches={K} or more")
    if schedule == "dualpipev" and M < K * V:
        raise FRError(f"dualpipev needs microbatches >= its {K * V} pipeline stages (splits={K} x algo.virtual={V}), "
                      f"got microbatches={M}: set microbatches={K * V} or more")
    rounds = max(1, M // K)
    if schedule in ("interleaved1f1b", "zb") and M % rounds:  # torch runs them in rounds of M / rounds
        raise FRError(f"{schedule} needs microbatches to be a multiple of its rounds max(1, microbatches // splits) "
                      f"= {rounds} (microbatches={M}, splits={K}): set microbatches={K * rounds}")


def check_precision_and_compile(c: Config) -> None:
    """`precision` and `compile`, and the combinations that cannot work (the model's own checks: build.py)."""
    if c.precision == "fp16":
        raise FRError("precision=fp16 is not offered: fp16 needs a loss scale (GradScaler) that every stage agrees on, "
                      "and each FR stage steps a different, older batch; use precision=bf16 (same range as fp32)")
    choice("precision", c.precision, PRECISIONS)
    if c.compile and isinstance(c.algo, VirtualPipeConfig):
        raise FRError(f"compile=true with algo={c.algo.name} is not offered (its start-up warm-up covers one chunk "
                      f"per rank, and torch's split backward does not support torch.compile): set compile=false")
    if c.compile and c.algo.name in PIPELINE_ALGOS and c.algo.checkpoint:
        raise FRError(f"compile=true with algo={c.algo.name} algo.checkpoint=true is not offered (a checkpointed "
                      f"recompute of a compiled stage is not covered): set algo.checkpoint=false or compile=false")


def validate(cfg: DictConfig, world_size: int) -> Config:
    """Check `cfg` against the schema and the launch; return it typed.

    Raises FRError naming the bad value and the fix. Runs identically on every
    rank, so every rank reaches the same verdict without talking to the others.
    """
    raw = _plain(cfg)
    algo = raw.get("algo") or {}
    name = algo.get("name", "fr") if isinstance(algo, dict) else algo
    if name not in ALGO_OPTIONS:
        raise FRError(f"unknown algo {show(name)}: choose one of {', '.join(ALGO_OPTIONS)} (algo=fr)")
    optim = raw.get("optim") or {}
    if not isinstance(optim, dict):
        raise FRError(f"bad configuration: optim={show(optim)} must be a section: choose an optimizer with "
                      f"optim={' or optim='.join(OPTIM_OPTIONS)}")
    optimizer = optim.get("name", "sgd")
    if optimizer not in OPTIM_OPTIONS:
        raise FRError(f"unknown optimizer {show(optimizer)}: choose one of {', '.join(OPTIM_OPTIONS)} (optim=sgd)")
    check_keys(raw, Config, "")
    check_keys(algo, ALGO_OPTIONS[name], "algo.", lambda *a: _algo_option(*a, name))
    check_keys(optim, OPTIM_OPTIONS[optimizer], "optim.", lambda *a: _optim_option(*a, optimizer, optim))
    rest = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("algo", "optim")])
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), rest)
    except OmegaConfBaseException as e:  # a string that is no number or bool (check_keys leaves those to OmegaConf)
        raise FRError(converted(e.full_key, e.msg, raw, Config, "")) from None
    _merge_chosen(merged, cfg, "algo", algo, ALGO_OPTIONS[name])
    _merge_chosen(merged, cfg, "optim", optim, OPTIM_OPTIONS[optimizer])
    missing = sorted(_missing_keys(cfg))  # as composed: the schema's defaults would hide a ??? over them
    if missing:  # a ??? the user must fill, e.g. model=custom without model._target_
        raise FRError(f"{missing[0]} is not set: give it on the command line ({missing[0]}=VALUE)"
                      + MISSING_HINTS.get(missing[0], ""))
    c: Config = OmegaConf.to_object(merged)
    _check_run(c, world_size)
    _check_optim(c.optim)
    _check_algo(c)
    check_precision_and_compile(c)
    if c.data.name not in DATASETS:
        raise FRError(f"unknown data {c.data.name!r}: choose one of {', '.join(DATASETS)} (data=NAME)")
    from fr_dist.data import TEXT, check_options as check_data
    from fr_dist.models import check_options as check_model
    from fr_dist.models import feature_dims

    in_shape = check_data(c.data, c.batch_size)
    if not isinstance(c.model, dict) or not ("name" in c.model or "_target_" in c.model):
        raise FRError("model is not set: choose one with model=mlp, model=resnet20, ...")
    check_model(c.model, in_shape, tokens=c.data.name in TEXT)
    if name == "dni":
        check_synth(c.algo.synth, feature_dims(c.model), c.model.get("name"))
    if c.threads_per_rank is None:
        c.threads_per_rank = max(1, (os.cpu_count() or 1) // world_size)
    return c


def _check_run(c: Config, world_size: int) -> None:
    for key in ("splits", "replicas", "epochs", "batch_size", "eval_every", "log_every", "microbatches", "ckpt_keep"):
        integer(key, getattr(c, key))
    integer("max_steps", c.max_steps, null=True)
    integer("eval_every_steps", c.eval_every_steps, null=True, fix="set eval_every_steps=null (only at epochs) "
            "or N > 0")
    integer("eval_batches", c.eval_batches, null=True, fix="set eval_batches=null (the whole test set) or N > 0")
    integer("threads_per_rank", c.threads_per_rank, null=True, fix="set threads_per_rank=1 or more, or null "
            "(cores / ranks)")
    if (c.threads_per_rank or 0) > MAX_THREADS:
        refuse("threads_per_rank", c.threads_per_rank, f"at most {MAX_THREADS}", "set threads_per_rank=null")
    integer("diag_every", c.diag_every, low=0, fix="set diag_every=0 (0 turns the diagnostic off) or N > 0")
    integer("ckpt_every", c.ckpt_every, low=0, fix="set ckpt_every=0 (only at the end) or N > 0")
    if not 0 <= c.seed < 2**32:
        refuse("seed", c.seed, "in [0, 2**32)", "set e.g. seed=0")
    if not (is_number(c.fail_timeout_s) and 0 < c.fail_timeout_s <= MAX_TIMEOUT_S):
        refuse("fail_timeout_s", c.fail_timeout_s, f"a number of seconds in (0, {MAX_TIMEOUT_S}]",
               "set e.g. fail_timeout_s=60")
    if c.splits * c.replicas != world_size:
        if c.replicas == 1:
            raise FRError(
                f"splits={c.splits} but the world size is {world_size}: launch one process per stage "
                f"(torchrun --nproc_per_node={c.splits} ...) or set splits={world_size}"
            )
        raise FRError(f"splits={c.splits} x replicas={c.replicas} = {c.splits * c.replicas} processes, but the "
                      f"world size is {world_size}: launch torchrun --nproc_per_node={c.splits * c.replicas} "
                      f"(over all nodes), or change splits or replicas")
    if c.replicas > 1:  # what replicas cannot be combined with
        if c.algo.name in PIPELINE_ALGOS:
            refuse("replicas", c.replicas, f"1 with algo={c.algo.name} (the pipelining adapter brings no "
                   f"data-parallel gradient averaging)", "set replicas=1, or algo=fr, bp, ddg or dni")
        if c.diag_every:
            refuse("replicas", c.replicas, "1 with diag_every > 0 (the diagnostic measures one pipeline)",
                   "set diag_every=0 or replicas=1")
        if c.compile:
            refuse("replicas", c.replicas, "1 with compile=true (its start-up warm-up is not averaged)",
                   "set compile=false or replicas=1")
    if c.partition not in ("uniform", "profiled"):  # its length and end: stage_cuts, when the blocks are known
        example = list(range(1, c.splits))
        if not isinstance(c.partition, list):
            refuse("partition", c.partition, "uniform, profiled or a list of splits-1 increasing block indices",
                   f"set partition=uniform or e.g. partition={show(example)}")
        int_list("partition", c.partition, example, increasing=True)
    if c.resume == "":
        refuse("resume", c.resume, "null, auto or a checkpoint path", "set resume=null to start fresh, or resume=auto")
    choice("wandb.mode", c.wandb.mode, ("online", "offline", "disabled"))
    choice("device", c.device, ("auto", "cpu", "cuda"))
    choice("transport", c.transport, ("auto", "nccl", "gloo"))
    if c.device == "cpu" and c.transport == "nccl":  # the rest needs the node's GPUs: groups.choose_device
        refuse("transport", c.transport, "gloo or auto with device=cpu (NCCL moves GPU tensors only)",
               "set transport=gloo, or device=cuda")
    if not c.wandb.project:
        refuse("wandb.project", c.wandb.project, "a non-empty string", "set e.g. wandb.project=fr_dist")
    if c.wandb.group == "":
        refuse("wandb.group", c.wandb.group, "a non-empty string or null", "set wandb.group=null or a name")


def _check_optim(o: OptimConfig) -> None:
    example = OPTIM_OPTIONS[o.name]()
    number("optim.lr", o.lr, example.lr, open_low=True)
    number("optim.weight_decay", o.weight_decay, example.weight_decay)
    number("optim.clip_grad_norm", o.clip_grad_norm, 1.0, open_low=True, null=True)
    if o.name == "sgd":
        probability("optim.momentum", o.momentum, 0.9)
        if o.nesterov and o.momentum <= 0:
            raise FRError(f"optim.nesterov=true needs optim.momentum > 0 (got {o.momentum}): set optim.nesterov=false "
                          f"or e.g. optim.momentum=0.9")
    if o.name == "adamw":
        if not (isinstance(o.betas, list) and len(o.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in o.betas)):
            refuse("optim.betas", o.betas, "two numbers in [0, 1)", f"set e.g. optim.betas={show(example.betas)}")
        number("optim.eps", o.eps, example.eps, open_low=True)
    s = o.schedule
    if s.name not in SCHEDULES:
        raise FRError(f"unknown lr schedule {s.name!r}: choose one of {', '.join(SCHEDULES)}")
    int_list("optim.schedule.milestones", s.milestones, [150, 225], increasing=True)
    if s.milestones and s.name != "step":
        raise FRError(f"optim.schedule.milestones={show(s.milestones)} apply to the step schedule only, not "
                      f"optim.schedule.name={s.name}: set optim.schedule.name=step or optim.schedule.milestones=[]")
    number("optim.schedule.gamma", s.gamma, 0.1, open_low=True)
    number("optim.schedule.warmup_epochs", s.warmup_epochs, 0.0)


def _check_algo(c: Config) -> None:
    name = c.algo.name
    if name == "dni":
        choice("algo.synth", c.algo.synth, ("auto", "conv", "linear"))
        number("algo.synth_lr", c.algo.synth_lr, 0.01, open_low=True, null=True)
        integer("algo.synth_hidden", c.algo.synth_hidden, null=True)
    if isinstance(c.algo, VirtualPipeConfig):
        check_virtual(c)
    if name in PIPELINE_ALGOS:
        check_microbatches(name, c.microbatches, c.batch_size, c.splits, getattr(c.algo, "virtual", 1))
    if c.diag_every and name in PIPELINE_ALGOS:
        raise FRError(f"diag_every needs a stage-wise update; algo={name} has none: set diag_every=0")
    if isinstance(c.algo, DelayedConfig):
        check_staleness(c.algo, c.optim, c.batch_size)


def check_virtual(c: Config) -> None:
    """algo.virtual, and what V chunks per rank cannot be combined with (the block count: build.py)."""
    name = c.algo.name
    integer("algo.virtual", c.algo.virtual, fix="set e.g. algo.virtual=2")
    if name in V_SHAPED and c.algo.virtual != 2:
        refuse("algo.virtual", c.algo.virtual, f"2 with algo={name} (its V placement: rank r holds chunks r and "
               f"2K-1-r)", "set algo.virtual=2")
    if c.algo.checkpoint and name in SPLIT_BACKWARD:
        raise FRError(f"algo.checkpoint=true with algo={name} is not offered: its split backward (input gradient "
                      f"first, weight gradient later) recomputes a checkpointed chunk once per half, and the second "
                      f"recompute fails in torch's checkpoint; set algo.checkpoint=false, or use algo=interleaved1f1b")
    if c.partition != "uniform":
        refuse("partition", c.partition, f"uniform with algo={name} (the cuts of its splits x algo.virtual chunks)",
               "set partition=uniform")


def check_staleness(a: DelayedConfig, o: OptimConfig, batch_size: int) -> None:
    """The staleness compensations of fr and ddg, and what they cannot be combined with."""
    number("algo.delay_warmup_epochs", a.delay_warmup_epochs, 1.0, open_low=True, null=True)
    if a.grad_shrink is not None and not (is_number(a.grad_shrink) and 0 < a.grad_shrink <= 1):
        refuse("algo.grad_shrink", a.grad_shrink, "a number in (0, 1] or null", "set e.g. algo.grad_shrink=0.9")
    momentum_rules = [("spike_compensation", a.spike_compensation)]
    if isinstance(a, FRConfig):
        momentum_rules.append(("weight_prediction", a.weight_prediction))
        integer("algo.replay_chunks", a.replay_chunks)
        if batch_size % a.replay_chunks:
            divisor = max(d for d in range(1, min(a.replay_chunks, batch_size) + 1) if batch_size % d == 0)
            raise FRError(f"algo.replay_chunks={a.replay_chunks} must divide batch_size={batch_size} (equal slices): "
                          f"choose a divisor, e.g. algo.replay_chunks={divisor}")
    for key, on in momentum_rules:
        if on and o.name != "sgd":
            raise FRError(f"algo.{key}=true is defined for SGD with momentum, not optim={o.name}: "
                          f"set algo.{key}=false or optim=sgd")
        if on and o.momentum <= 0:
            raise FRError(f"algo.{key}=true needs optim.momentum > 0 (got {o.momentum}): set algo.{key}=false or "
                          f"e.g. optim.momentum=0.9")


def check_synth(synth: str, dims: int | None, model) -> None:
    """DNI's synthetic-gradient model fits the features a stage sends: conv (N, C, H, W), linear (N, D) or
    (N, T, D).

    validate checks the built-in models; build.py a user's model, once its link shapes are known.
    """
    kind = synth if synth != "auto" else "conv" if dims == 4 else "linear"
    if dims is not None and dims not in ((4,) if kind == "conv" else (2, 3)):
        fix = ("set algo.synth=auto" if dims in (2, 3, 4) else "DNI has no synthetic-gradient model for them: "
               "send (N, C, H, W), (N, D) or (N, T, D) features, or choose another algo")
        raise FRError(f"algo.synth={synth} makes a {kind} synthetic-gradient model, which needs "
                      f"{'(N, C, H, W)' if kind == 'conv' else '(N, D) or (N, T, D)'} features, but model={model} "
                      f"sends {dims}-D ones: {fix}")


def _algo_option(key: str, value, names: list[str], algo: str) -> str:
    """The message for `key` (algo.X) that algo=ALGO does not take; which algorithm has it."""
    own = [n for n in names if n != "name"]
    owners = [a for a, schema in ALGO_OPTIONS.items() if key[len("algo."):] in (f.name for f in fields(schema))]
    return (f"bad configuration: {key} is not an option of algo={algo} (its options: {', '.join(own) or 'none'}): "
            f"remove {key}={show(value)}" + (f", or choose algo={owners[0]}, which has it" if owners else ""))


def _optim_option(key: str, value, names: list[str], optimizer: str, section: dict) -> str:
    """The message for `key` (optim.X) that optim=OPTIMIZER does not take: which optimizer has it, if any."""
    owners = [o for o, schema in OPTIM_OPTIONS.items() if key[len("optim."):] in (f.name for f in fields(schema))]
    if not owners:
        return unknown_key(key, value, names)
    fix = f"remove {key}={show(value)}, or choose optim={owners[0]}, which has it"
    if {f.name for f in fields(OPTIM_OPTIONS[owners[0]])} <= set(section):  # optim.name=X on optim=Y's section
        fix = f"choose the optimizer with optim={optimizer}, which brings its own options, not optim.name={optimizer}"
    own = [n for n in names if n != "name"]
    return f"bad configuration: {key} is not an option of optim={optimizer} (its options: {', '.join(own)}): {fix}"


def _merge_chosen(merged: DictConfig, cfg: DictConfig, key: str, section: dict, schema) -> None:
    """merged[key]: cfg[key] on the schema its name chose (the algorithm's, the optimizer's); a bad value by key."""
    try:
        merged[key] = OmegaConf.merge(OmegaConf.structured(schema), cfg.get(key) or {})
    except OmegaConfBaseException as e:
        raise FRError(converted(e.full_key, e.msg, section, schema, key + ".")) from None


def _missing_keys(node, prefix: str = ""):
    """Dotted keys of the mandatory values (???) nobody set."""
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield full
        elif OmegaConf.is_config(node[key]) and not OmegaConf.is_list(node[key]):
            yield from _missing_keys(node[key], full + ".")


def _plain(cfg: DictConfig) -> dict:
    """`cfg` as plain containers, interpolations resolved; one that cannot be is an FRError naming its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = e.full_key or "?"
        written = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            written = written.get(part) if isinstance(written, dict) else None
        raise FRError(f"bad configuration: {key}={written} cannot be resolved ({str(e.msg).splitlines()[0]}): "
                      f"fix the interpolation or set a value") from None
