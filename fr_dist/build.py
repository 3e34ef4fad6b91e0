"""Everything a rank does before its first iteration; a user error stops every rank here.

Start-up joins nothing itself (train.py did): it makes the run directory, loads
the data where it is needed (stage 0 inputs, last stage labels), builds the
whole model on every rank from the same seed and keeps the stage's blocks,
agrees on link shapes with the neighbours, and assembles the plan, the stage
and the reporter the loop runs with.
"""

from __future__ import annotations

import dataclasses
import sys
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed
import torch.nn as nn
from omegaconf import OmegaConf

from fr_dist import algos, data as datasets
from fr_dist.algos.pipe import Chunk
from fr_dist.config import Config, check_synth
from fr_dist.errors import FRError
from fr_dist.models import build_blocks, check_options as check_model
from fr_dist.models.probes import output_spec
from fr_dist.optim import make_lr, make_optimizer
from fr_dist.partition import stage_cuts
from fr_dist.runtime.compiled import compile_module, compile_seconds, replayed_dropout, warm_up
from fr_dist.runtime.diagnostic import TrueGradient
from fr_dist.runtime.engine import Engine
from fr_dist.runtime.failures import together
from fr_dist.runtime.groups import Runtime
from fr_dist.runtime.links import Link, negotiate_shapes
from fr_dist.runtime.metrics import Reporter
from fr_dist.runtime.replicas import GradientAverager, average_now
from fr_dist.runtime.resume import FORMAT
from fr_dist.runtime.state import Plan, Stage


def stage_seed(seed: int, stage: int, replica: int = 0) -> int:
    """Seed of stage k's global RNG (dropout) after the shared model init; each replica draws its own masks."""
    return seed + 1000 * (stage + 1) + 1_000_003 * replica


def make_run_dir(rt: Runtime, run_dir: str | None) -> Path:
    """The job's run directory: chosen once by rank 0, the same on every rank.

    Under torchrun the choice is kept in the agent's store, so a restarted job
    (``--max-restarts``) finds its run directory, and its checkpoints, again.
    """
    box = [None]
    if rt.rank == 0:
        box[0] = run_dir or datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S")
        if run_dir is None:  # the agent's store lives as long as the torchrun job
            box[0] = rt.record("run_dir", box[0], per_attempt=False) or box[0]
    torch.distributed.broadcast_object_list(box, src=0, group=rt.control)
    path = Path(box[0]).resolve()

    def create():
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = path / f".write_test_{rt.rank}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise FRError(f"cannot write the run directory {path}: {e.strerror}; choose another with hydra.run.dir=PATH")
        return path

    return together(rt, create)


def stage_blocks(rt: Runtime, c: Config, in_shape, classes: int, tokens: bool) -> tuple[nn.Module, list[int], list]:
    """This rank's blocks (built whole on every rank from the seed, for an identical init), every cut and the
    rank's chunks as (chunk index, its blocks).

    A rank holds one chunk, its stage, except with a pipelining schedule of V virtual stages per rank:
    then the model is cut into K x V chunks and the rank's blocks are its chunks' in model order.
    """
    V = getattr(c.algo, "virtual", 1)

    def build():
        if c.data.name == "custom":  # validate could not check the model against the data's shape: known now
            check_model(c.model, in_shape, tokens)
        torch.manual_seed(c.seed)
        blocks = build_blocks(c.model, in_shape, classes, tokens)
        if V > 1 and len(blocks) < c.splits * V:
            raise FRError(f"algo={c.algo.name} cuts the model into splits x algo.virtual = {c.splits * V} chunks, "
                          f"but it has {len(blocks)} blocks: lower splits or algo.virtual, or use a deeper model")
        # partition=profiled: the same checks (K <= blocks) on every rank; rank 0 measures the cuts below
        cuts = stage_cuts(len(blocks), c.splits * V, "uniform" if c.partition == "profiled" else c.partition)
        if c.compile and c.algo.name == "fr" and c.splits > 1:
            # the blocks of stages 0..K-2, which replay (profiled cuts are not known yet: all but the last block)
            found = replayed_dropout(blocks, len(blocks) - 1 if c.partition == "profiled" else cuts[-2])
            if found:
                raise FRError(f"compile=true with algo=fr and dropout in a replayed stage ({found}): the replay must "
                              f"draw the forward's dropout masks again, and a compiled module draws them in two "
                              f"different graphs (the no-grad forward, the replay) whose masks torch does not promise "
                              f"to repeat; set model.dropout=0 (or remove the dropout) or compile=false")
        return blocks, cuts

    blocks, cuts = together(rt, build)
    if c.partition == "profiled":
        cuts = profiled_cuts(rt, blocks, in_shape, c, classes if tokens else None)
    k = rt.stage
    mine = algos.PIPELINES[c.algo.name].chunks_of(k, c.splits, V) if c.algo.name in algos.PIPELINES else [k]
    chunks = [(i, nn.Sequential(*blocks[cuts[i]:cuts[i + 1]]).to(rt.device)) for i in mine]
    return nn.Sequential(*(b for _, chunk in chunks for b in chunk)), cuts, chunks


def profiled_cuts(rt: Runtime, blocks, in_shape, c: Config, vocab: int | None) -> list[int]:
    """Rank 0 times every block on its device and picks the boundaries; all ranks get them.

    It chooses the cuts that minimise the largest stage cost under the FR cost
    model (non-last stage 2f+b, last f+b, plus the boundary transfers).
    """
    from fr_dist.partition import predicted_stage_costs, profiled_cuts as best
    from fr_dist.partition.profile import profile_model

    box = [None]
    if rt.rank == 0:
        for block in blocks:
            block.to(rt.device)
        prof = profile_model(blocks, in_shape, c.batch_size, rt.device, vocab=vocab)
        links = prof.link_costs(rt.device)
        cuts = best(prof.costs, c.splits, links)
        costs = ", ".join(f"{x * 1e3:.1f}" for x in predicted_stage_costs(prof.costs, cuts, links))
        print(f"[stage 0] partition=profiled: cuts {cuts[1:-1]}, predicted stage costs {costs} ms per iteration",
              file=sys.stderr, flush=True)
        box[0] = cuts
    torch.distributed.broadcast_object_list(box, src=0, group=rt.control)
    return box[0]


def make_autocast(precision: str, device: torch.device):
    """The context every compute action but the optimizer step runs in (engine.py): bf16 autocast or nothing."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def link_spec(spec, precision: str):
    """The (shape, dtype) a stage boundary carries, from the probed output spec: floating features become
    bfloat16 in bf16 runs; integer tensors (token ids) and fp32 runs keep the probed dtype."""
    shape, dtype = spec
    if precision == "bf16" and dtype.is_floating_point:
        return shape, torch.bfloat16
    return shape, dtype


def check_precision_device(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FRError(f"precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support: "
                      f"use precision=fp32")


def make_links(rt: Runtime, in_spec, out_spec) -> dict[str, Link]:
    """The stage's four links (fewer at the ends) in its replica: activations in and out, error gradients in and out.

    gloo with CUDA stages stages every payload through host memory (gloo moves CPU tensors only).
    """
    k, K, device = rt.stage, rt.stages, rt.device
    staged = rt.backend == "gloo" and device.type == "cuda"
    links = {}

    def link(kind: str, src: int, dst: int, spec) -> Link:
        peer = dst if src == k else src
        return Link(f"{kind} {src}->{dst}", rt.groups[(src, dst)], rt.global_rank(peer), *spec, device, staged, peer)

    if k > 0:
        links["x_in"], links["g_out"] = link("x", k - 1, k, in_spec), link("g", k, k - 1, in_spec)
    if k < K - 1:
        links["x_out"], links["g_in"] = link("x", k, k + 1, out_spec), link("g", k + 1, k, out_spec)
    return links

def chunk_specs(rt: Runtime, chunks, cuts, holder, first_input, precision: str, autocast) -> dict:
    """{chunk i: the (shape, dtype) chunk i takes} for every chunk, and the output's at index KV (the loss's input).

    The chunks' holders (`holder(i)`: the stage holding chunk i) probe them in model order, each telling
    every rank what the next chunk takes (a boundary's dtype is the link's in bf16 runs).
    """
    mine = dict(chunks)
    n = len(cuts) - 1
    specs = {0: first_input}
    for i in range(n):
        box = [None]
        if i in mine:
            with autocast():
                out = output_spec(mine[i], specs[i], rt.device)
            box[0] = link_spec(out, precision) if i < n - 1 else out
        torch.distributed.broadcast_object_list(box, src=rt.global_rank(holder(i)), group=rt.control)
        specs[i + 1] = box[0]
    return specs


def build(c: Config, raw, rt: Runtime, run_dir: str | None, overrides: list[str]):
    """(plan, stage, reporter): the reporter on the last stage, else None."""
    k, K, device = rt.stage, rt.stages, rt.device
    torch.set_num_threads(c.threads_per_rank)
    path = make_run_dir(rt, run_dir)
    if rt.rank == 0:
        (path / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(raw, path / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")

    # Data: stage 0 needs inputs, the last stage labels; both use one sampler (data/order.py).
    def load():
        if k not in (0, K - 1):
            return None
        batches = datasets.load(c.data, c.batch_size, c.seed)
        if rt.replicas > 1:
            batches.shard(rt.replica, rt.replicas)
        return batches

    data = together(rt, load)
    box = [(data.in_shape, data.in_dtype, data.classes, data.steps_per_epoch, data.test_batches, data.tokens)
           if k == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, group=rt.control)
    in_shape, in_dtype, classes, steps_per_epoch, test_batches, tokens = box[0]
    test_batches = min(test_batches, c.eval_batches or test_batches)
    if data is not None:
        data.pin = device.type == "cuda"

    together(rt, check_precision_device, c.precision, device)
    autocast = make_autocast(c.precision, device)
    module, cuts, chunks = stage_blocks(rt, c, in_shape, classes, tokens)
    torch.manual_seed(stage_seed(c.seed, k, rt.replica))

    def spec_of(spec):
        """This stage's output spec, probed under the run's autocast; a boundary's dtype is the link's (bf16 runs)."""
        with autocast():
            out = output_spec(module, spec, device)
        return link_spec(out, c.precision) if k < K - 1 else out

    # Stage 0's input is the data as loaded (fp32 features or int64 token ids; its ring slots too): autocast casts
    # features where an op wants bf16.
    first_input = ((c.batch_size, *in_shape), in_dtype)
    virtual = c.algo.name in algos.PIPELINES and not algos.PIPELINES[c.algo.name].through_engine
    if virtual:
        holder = algos.PIPELINES[c.algo.name].holder
        specs = chunk_specs(rt, chunks, cuts, lambda i: holder(i, K), first_input, c.precision, autocast)
        in_spec, out_spec = specs[chunks[0][0]], specs[chunks[-1][0] + 1]
    else:
        in_spec, out_spec = negotiate_shapes(rt, first_input, spec_of)
    if c.compile:  # after the probe, which runs rank after rank: the warm-up below compiles on all ranks at once
        compile_module(module)

    T = c.epochs * steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * steps_per_epoch)
    lr_of = make_lr(c.optim, steps_per_epoch, T)
    optimizer = make_optimizer(c.optim, module)
    name = c.algo.name
    if name == "dni":  # a user's model: its synthetic-gradient model must fit the features it sends
        together(rt, check_synth, c.algo.synth, len(out_spec[0]) if k < K - 1 else None, c.model.get("_target_"))
    algo = algos.PIPELINES.get(name) or algos.ALGOS[name]
    worker = algo.Worker(module, k, K, device, optimizer, lr_of, in_spec, c.algo, c.optim.clip_grad_norm,
                         steps_per_epoch=steps_per_epoch)
    probe = TrueGradient(module, k, device) if c.diag_every else None
    links = {} if virtual else make_links(rt, in_spec, out_spec)  # virtual stages: pipelining moves everything
    engine = Engine(worker, data, links, device, probe, autocast)
    if rt.replicas > 1 and optimizer is not None:
        engine.averager = GradientAverager(module.parameters(), rt.data_parallel, rt.replicas)
        worker.average = lambda params: average_now(params, rt.data_parallel, rt.replicas)
    pipeline = None
    if name in algos.PIPELINES:
        if not virtual:
            specs = {k: in_spec, k + 1: out_spec}
        pieces = [Chunk(i, chunk, specs[i], specs[i + 1]) for i, chunk in chunks]
        pipeline = algo.pipeline(module, pieces, k, K, device, optimizer, lr_of, c.algo, c.microbatches, data,
                                 autocast, c.optim.clip_grad_norm)
    meta = {"format": FORMAT, "algo": name, "splits": K, "replicas": rt.replicas, "replica": rt.replica,
            "model": dict(c.model), "stage": k, "blocks": [cuts[k], cuts[k + 1]],
            "batch_size": c.batch_size, "steps": T, "in_shape": list(in_shape), "classes": classes, "tokens": tokens}
    if virtual:  # the rank's blocks are its chunks' ([start, end) each; "blocks": the first), not one range
        meta["chunks"] = [[cuts[i], cuts[i + 1]] for i, _ in chunks]
        meta["algo.virtual"] = c.algo.virtual  # a resume with another V would load other chunks
    plan = Plan(algo, T, steps_per_epoch, test_batches, cuts, path, meta, in_shape[-1] if tokens else 0)
    stage = Stage(rt, module, optimizer, engine, lr_of, pipeline)
    if c.compile:  # every graph compiled now, on every rank at once: none of it is training time
        stage.compile_s = together(rt, warm_up, plan, stage, c.diag_every > 0)
        stage.compile_clock = compile_seconds()
    reporter = None
    if k == K - 1 and rt.replica == 0:
        run_name = f"{name}-K{K}-{c.model.get('name', 'custom')}-s{c.seed}"
        reporter = together(rt, Reporter, path, c.wandb, dataclasses.asdict(c), run_name)
    else:
        together(rt, lambda: None)
    return plan, stage, reporter
