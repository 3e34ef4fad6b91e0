"""What the multi-rank tests share: small seeded configs, the reference run, the distributed run, checks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

import fr_dist.reference as simulators
from fr_dist import data as datasets
from fr_dist.build import stage_seed
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.models import build_blocks
from fr_dist.optim import make_lr
from fr_dist.partition import stage_cuts
from fr_dist.reference import backprop, features_replay
from fr_dist.runtime import checkpoint
from tests.ranks import run_ranks

ROOT = Path(__file__).resolve().parent.parent  # the checkout: subprocesses run from here

# Small and seeded: 2 epochs, so the run crosses an epoch boundary (with an
# evaluation in between) and has more batches than the deepest pipeline.
MLP = ["model=mlp", "model.hidden=[12,10,8]", "model.dropout=0.25", "data.shape=[1,5,5]", "data.classes=4",
       "data.train_size=56", "data.test_size=13", "batch_size=8", "epochs=2"]
RESNET8 = ["model=resnet8", "model.width=4", "data.shape=[3,8,8]", "data.classes=3", "data.train_size=40",
           "data.test_size=11", "batch_size=8", "epochs=2", "optim.nesterov=true"]
COMMON = ["seed=3", "log_every=1", "threads_per_rank=1", "optim.lr=0.05"]


def simulation_inputs(K: int, overrides: list[str]):
    """What a distributed run of `overrides` computes with: stages, batches, rates, seeds."""
    c = validate(compose([f"splits={K}", *overrides]), world_size=K)
    data = datasets.load(c.data, c.batch_size, c.seed)
    torch.manual_seed(c.seed)
    blocks = build_blocks(c.model, data.in_shape, data.classes)
    cuts = stage_cuts(len(blocks), K, c.partition)
    stages = [nn.Sequential(*blocks[a:b]) for a, b in zip(cuts, cuts[1:])]
    T = c.epochs * data.steps_per_epoch
    batches = [(data.inputs(b), data.labels(b)) for b in range(T)]
    lr_of = make_lr(c.optim, data.steps_per_epoch, T)
    o = c.optim

    def make_optimizer(params):
        if o.name == "adamw":  # no embeddings in these models: the weight matrices and kernels decay, 1-D ones not
            params = list(params)
            groups = [{"params": [p for p in params if p.ndim >= 2]},
                      {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
            return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)

    def make_synth_optimizer(params):  # dni's default: the stage's rate, momentum and Nesterov, no decay
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)

    seeds = [stage_seed(c.seed, k) for k in range(K)]
    return c, data, stages, batches, lr_of, make_optimizer, make_synth_optimizer, seeds


def staleness(c, steps_per_epoch: int) -> dict:
    """The simulators' keywords for the staleness compensations that `c.algo` (fr or ddg) turns on."""
    a = c.algo
    warmup = None if a.delay_warmup_epochs is None else a.delay_warmup_epochs * steps_per_epoch
    options = {"spike": a.spike_compensation, "warmup_batches": warmup, "shrink": a.grad_shrink}
    if a.name == "fr":
        options.update(prediction=a.weight_prediction, replay_chunks=a.replay_chunks)
    return options


def reference(K: int, overrides: list[str]):
    """Per-stage state dicts and losses of the single-process simulator (in the run's precision)."""
    c, data, stages, batches, lr_of, make_optimizer, _, seeds = simulation_inputs(K, overrides)
    torch.set_num_threads(1)  # the ranks run one thread each: same reduction order
    clip = c.optim.clip_grad_norm
    if K == 1:
        losses = backprop(stages[0], batches, lr_of, make_optimizer, seeds[0], precision=c.precision,
                          clip_grad_norm=clip)
    else:
        losses = features_replay(stages, batches, lr_of, make_optimizer, seeds, precision=c.precision,
                                 clip_grad_norm=clip, **staleness(c, data.steps_per_epoch))
    return [s.state_dict() for s in stages], losses


def first_gradient_norms(K: int, overrides: list[str]) -> list[float]:
    """Each stage's gradient norm for batch 0 at the initial weights: the first gradient every stage applies
    (FR's stage k too: it is unchanged until then). For a model without dropout."""
    _, _, stages, batches, _, _, _, _ = simulation_inputs(K, overrides)
    x, y = batches[0]
    nn.functional.cross_entropy(nn.Sequential(*stages)(x), y).backward()
    return [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in s.parameters()])).item() for s in stages]


def clipping(K: int, overrides: list[str]) -> list[str]:
    """`overrides` with optim.clip_grad_norm at half the smallest stage's first gradient norm: every stage clips
    at least its first step."""
    norms = first_gradient_norms(K, overrides)
    clip = float(f"{min(norms) / 2:.4g}")
    assert all(norm > clip for norm in norms), (norms, clip)
    return [*overrides, f"optim.clip_grad_norm={clip}"]


def distributed(K: int, overrides: list[str], run_dir, env: dict | None = None):
    ranks = run_ranks(K, [*overrides, f"hydra.run.dir={run_dir}"], env=env)
    for r, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {r} failed:\n{rank.err[-3000:]}"
    final = checkpoint.latest(run_dir)
    states = [torch.load(final / f"stage{k}.pt", map_location="cpu", weights_only=False)["model"] for k in range(K)]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return states, [r["loss"] for r in rows if "loss" in r], summary


def assert_states_equal(got, want):
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys()
        for name in w:
            assert torch.equal(g[name], w[name]), f"stage {k} {name}: max diff {(g[name] - w[name]).abs().max()}"


def assert_one_clear_error(ranks, match: str):
    """Every rank exits non-zero, exactly one prints the message, no traceback through fr_dist."""
    for r, rank in enumerate(ranks):
        assert rank.returncode != 0, f"rank {r} exited 0"
    messages = [line for rank in ranks for line in rank.err.splitlines() if "error:" in line]
    assert len(messages) == 1, messages
    assert match in messages[0], messages[0]
    assert messages[0].startswith("[stage ")
    assert not any("Traceback" in rank.err for rank in ranks), [rank.err for rank in ranks]


def program(algo, stage: int, K: int, T: int) -> list[str]:
    """A stage's schedule as printed actions, one string per iteration."""
    return [" ".join(map(str, algo.schedule(stage, K, t, T))) for t in range(algo.iterations(stage, K, T))]


def synth_models(stages, c, in_shape, in_dtype=torch.float32) -> list[nn.Module]:
    """DNI's default synthetic-gradient models, written out plainly: one zero layer per boundary (a linear one
    acts on the last dimension: per position for (N, T, D) features)."""
    models, x = [], torch.zeros(c.batch_size, *in_shape, dtype=in_dtype)
    with torch.no_grad():
        for stage in stages[:-1]:
            stage.eval()  # shape probe: no statistics, no RNG
            x = stage(x)
            stage.train()
            m = nn.Conv2d(x.shape[1], x.shape[1], 3, padding=1) if x.dim() == 4 else nn.Linear(x.shape[-1], x.shape[-1])
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
            models.append(m)
    return models


def run_reference(algo: str, K: int, overrides: list[str]):
    c, data, stages, batches, lr_of, make_optimizer, make_synth_optimizer, seeds = simulation_inputs(K, overrides)
    torch.set_num_threads(1)  # the ranks run one thread each: same reduction order
    if K == 1:
        losses = simulators.backprop(stages[0], batches, lr_of, make_optimizer, seeds[0])
    elif algo == "ddg":
        losses = simulators.ddg(stages, batches, lr_of, make_optimizer, seeds, **staleness(c, data.steps_per_epoch))
    elif algo == "dni":
        losses = simulators.dni(stages, synth_models(stages, c, data.in_shape, data.in_dtype), batches, lr_of, make_optimizer,
                               make_synth_optimizer, seeds)
    elif algo == "fr":
        losses = simulators.features_replay(stages, batches, lr_of, make_optimizer, seeds)
    return [s.state_dict() for s in stages], losses


def overrides_for(algo: str, model: str) -> list[str]:
    return (MLP if model == "mlp" else RESNET8) + COMMON + [f"algo={algo}"]


def write_corpus(root: Path, sizes=(150, 170, 100), seed: int = 0) -> Path:
    """A tiny UTF-8 text corpus of len(sizes) files (sorted names: the last one is validation)."""
    import random

    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while python imports its modules".split()
    root.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        text = ""
        while len(text) < size:
            text += rng.choice(words) + rng.choice(" \n")
        (root / f"doc{i}.txt").write_text(text[:size])
    return root


def gpt_overrides(corpus: Path) -> list[str]:
    """A tiny GPT with dropout on a tiny corpus: 2 epochs of a few batches, crossing an evaluation."""
    return [f"data=python_docs", f"data.data_root={corpus}", "data.seq_len=8", "model=gpt", "model.n_layer=2",
            "model.n_embd=16", "model.n_head=2", "model.block_size=8", "model.dropout=0.1", "batch_size=4",
            "epochs=2"]
