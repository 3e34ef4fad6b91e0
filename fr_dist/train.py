"""Train one job: ``torchrun --nproc_per_node=K -m fr_dist.train algo=fr splits=K model=mlp``.

Rank k runs stage k. Start-up composes and validates the config (every rank,
no communication), joins the process groups, loads data, builds the model on
every rank from the same seed and keeps its own blocks, agrees on link shapes,
then executes the algorithm's schedule iteration by iteration.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed
import torch.nn as nn
from omegaconf import OmegaConf

from fr_dist import algos, data as datasets
from fr_dist.runtime import checkpoint, groups as dist, loop
from fr_dist.runtime.links import Link, negotiate_shapes
from fr_dist.config import CONF_DIR, Config, compose, validate
from fr_dist.runtime.engine import Engine
from fr_dist.errors import FRError
from fr_dist.optim import make_lr
from fr_dist.runtime.metrics import Reporter
from fr_dist.models import build_blocks
from fr_dist.partition import stage_cuts

def stage_seed(seed: int, stage: int) -> int:
    """Seed of stage k's global RNG (dropout) after the shared model init."""
    return seed + 1000 * (stage + 1)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CONF_DIR.parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class Stop(Exception):
    """Start-up failed somewhere; the failing rank already printed why."""


def together(rt: dist.Runtime, fn, *args):
    """Run a start-up step on every rank; if any rank fails, all stop together.

    Only the first failing rank prints, so a user sees one message.
    """
    error, result = None, None
    try:
        result = fn(*args)
    except FRError as e:
        error = str(e)
    errors = dist.agree(rt, error)
    failed = [r for r, e in enumerate(errors) if e is not None]
    if failed:
        if rt.rank == failed[0]:
            print(f"[stage {rt.rank}] error: {errors[rt.rank]}", file=sys.stderr, flush=True)
        raise Stop
    return result


def make_run_dir(rt: dist.Runtime, run_dir: str | None) -> Path:
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
            path.mkdir(parents=True, exist_ok=True)
            (path / "checkpoints").mkdir(exist_ok=True)
            probe = path / f".write_test_{rt.rank}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise FRError(f"cannot write the run directory {path}: {e.strerror}; choose another with hydra.run.dir=PATH")
        return path

    return together(rt, create)


def build_blocks_and_cuts(c: Config, in_shape, classes: int):
    """The whole model's blocks (the same on every rank) and the stage boundaries.

    For partition=profiled the boundaries are None here: rank 0 measures them.
    """
    torch.manual_seed(c.seed)  # every rank builds the whole model: identical init
    blocks = build_blocks(c.model, in_shape, classes)
    if c.partition == "profiled":
        stage_cuts(len(blocks), c.splits, "uniform")  # the same checks (K <= blocks) on every rank
        return blocks, None
    return blocks, stage_cuts(len(blocks), c.splits, c.partition)


def profiled_cuts(rt: dist.Runtime, blocks, in_shape, c: Config) -> list[int]:
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
        prof = profile_model(blocks, in_shape, c.batch_size, rt.device)
        links = prof.link_costs(rt.device)
        cuts = best(prof.costs, c.splits, links)
        costs = ", ".join(f"{x * 1e3:.1f}" for x in predicted_stage_costs(prof.costs, cuts, links))
        print(f"[stage 0] partition=profiled: cuts {cuts[1:-1]}, predicted stage costs {costs} ms per iteration",
              file=sys.stderr, flush=True)
        box[0] = cuts
    torch.distributed.broadcast_object_list(box, src=0, group=rt.control)
    return box[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    overrides = [a for a in argv if not a.startswith("hydra.run.dir=")]
    rank = dist.rank()
    try:
        raw = compose(overrides)
        c = validate(raw, dist.world_size())
        dist.check_devices()
    except FRError as e:  # the same on every rank: rank 0 speaks for all
        if rank == 0:
            print(f"[stage 0] error: {e}", file=sys.stderr, flush=True)
        return 1
    rt = dist.init(c.fail_timeout_s)
    try:
        train(c, raw, rt, run_dir, overrides)
        return 0
    except Stop:
        return 1
    except loop.Preempted as e:
        if rt.rank == 0:
            print(f"[stage 0] stopped by SIGTERM: checkpoint of step {e.args[0]} written; "
                  f"the same command with resume=auto continues", file=sys.stderr, flush=True)
        return 143
    finally:
        dist.shutdown()


def setup(c: Config, raw, rt: dist.Runtime, run_dir: str | None, overrides: list[str]) -> loop.Job:
    """Everything before the first iteration; a user error stops every rank here."""
    k, K, device = rt.rank, rt.world, rt.device
    last = k == K - 1
    torch.set_num_threads(c.threads_per_rank)
    path = make_run_dir(rt, run_dir)
    if k == 0:
        (path / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(raw, path / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")

    # Data: stage 0 needs inputs, the last stage labels; both use one sampler.
    data = together(rt, lambda: datasets.load(c.data, c.batch_size, c.seed) if k in (0, K - 1) else None)
    box = [(data.in_shape, data.classes, data.steps_per_epoch, data.test_batches, len(data.test_y))
           if k == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, group=rt.control)
    in_shape, classes, steps_per_epoch, test_batches, test_size = box[0]

    blocks, cuts = together(rt, build_blocks_and_cuts, c, in_shape, classes)
    if cuts is None:
        cuts = profiled_cuts(rt, blocks, in_shape, c)
    module = nn.Sequential(*blocks[cuts[k]:cuts[k + 1]]).to(device)
    del blocks
    torch.manual_seed(stage_seed(c.seed, k))

    @torch.no_grad()
    def output_spec(spec):
        module.eval()  # eval mode: the probe must not touch BatchNorm statistics or the RNG
        out = module(torch.zeros(spec[0], dtype=spec[1], device=device))
        module.train()
        return tuple(out.shape), out.dtype

    in_spec, out_spec = negotiate_shapes(rt, ((c.batch_size, *in_shape), torch.float32), output_spec)
    links = {}
    if k > 0:
        links["x_in"] = Link(f"x {k-1}->{k}", rt.groups[(k - 1, k)], k - 1, *in_spec, device)
        links["g_out"] = Link(f"g {k}->{k-1}", rt.groups[(k, k - 1)], k - 1, *in_spec, device)
    if not last:
        links["x_out"] = Link(f"x {k}->{k+1}", rt.groups[(k, k + 1)], k + 1, *out_spec, device)
        links["g_in"] = Link(f"g {k+1}->{k}", rt.groups[(k + 1, k)], k + 1, *out_spec, device)

    T = c.epochs * steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * steps_per_epoch)
    lr_of = make_lr(c.optim, steps_per_epoch, T)
    params = list(module.parameters())
    optimizer = torch.optim.SGD(params, lr=c.optim.lr, momentum=c.optim.momentum, nesterov=c.optim.nesterov,
                                weight_decay=c.optim.weight_decay) if params else None
    algo = algos.ALGOS[c.algo.name]
    # Algorithm options come from the algo section, or the top level (microbatches).
    options = {key: getattr(c.algo, key) if hasattr(c.algo, key) else getattr(c, key)
               for key in getattr(algo, "OPTIONS", ())}
    worker = algo.Worker(module, k, K, device, optimizer, lr_of, in_spec, **options)
    reporter = None
    if last:
        name = f"{c.algo.name}-K{K}-{c.model.get('name', 'custom')}-s{c.seed}"
        reporter = together(rt, Reporter, path, c.wandb, dataclasses.asdict(c), name)
    else:
        together(rt, lambda: None)
    meta = {"algo": c.algo.name, "splits": K, "model": dict(c.model), "stage": k, "blocks": [cuts[k], cuts[k + 1]],
            "batch_size": c.batch_size, "steps": T, "in_shape": list(in_shape), "classes": classes}
    return loop.Job(c, rt, path, algo, Engine(worker, data, links, device), module, optimizer, T, steps_per_epoch,
                    test_batches, test_size, lr_of, reporter, meta, cuts)


def resume_from(job: loop.Job) -> int:
    """The iteration to start from: 0, or where the checkpoint `resume` names left off.

    With resume=auto an unreadable checkpoint (a stage file corrupt or missing
    on any rank) is skipped for the previous complete one.
    """
    c, rt = job.c, job.rt
    expect = {key: job.meta[key] for key in ("algo", "splits", "model", "stage", "blocks", "batch_size", "steps")}
    tried = together(rt, checkpoint.candidates, c.resume, job.run_dir)
    for i, directory in enumerate(tried):
        state, problem = None, None
        try:
            state = checkpoint.load_stage(directory, rt.rank, expect)
        except checkpoint.Unreadable as e:
            problem = ("unreadable", str(e))
        except FRError as e:
            problem = ("refused", str(e))
        problems = dist.agree(rt, problem)
        failed = [r for r, p in enumerate(problems) if p is not None]
        if not failed:
            break
        first = problems[failed[0]]
        fall_back = c.resume == "auto" and i + 1 < len(tried) and all(problems[r][0] == "unreadable" for r in failed)
        if rt.rank == failed[0]:
            if fall_back:
                print(f"[stage {rt.rank}] warning: {first[1]}; resuming from the previous one, {tried[i + 1]}",
                      file=sys.stderr, flush=True)
            else:
                print(f"[stage {rt.rank}] error: {first[1]}", file=sys.stderr, flush=True)
        if not fall_back:
            raise Stop
    else:
        return 0
    if job.reporter:
        job.reporter.truncate(state["meta"]["step"])  # rows logged after the checkpoint are redone
    start = loop.restore(job, state)
    if rt.rank == 0:
        print(f"[stage 0] resumed from step {state['meta']['step']} ({directory})", file=sys.stderr, flush=True)
    return start


def train(c: Config, raw, rt: dist.Runtime, run_dir: str | None, overrides: list[str]) -> None:
    started = time.perf_counter()
    job = setup(c, raw, rt, run_dir, overrides)
    k, K = rt.rank, rt.world
    summary = {"algo": c.algo.name, "splits": K, "model": c.model.get("name", c.model.get("_target_")),
               "data": c.data.name, "seed": c.seed, "status": "running"}
    try:
        loop.run(job, resume_from(job))
        summary["status"] = "ok"
    except Stop:  # a user error at resume, already reported
        raise
    except loop.Preempted:
        summary["status"] = "preempted"
        raise
    except Exception as e:
        summary["status"] = f"error: {e}"
        fail(job, e)
        raise Stop from None
    finally:
        if job.reporter and summary["status"] != "ok":  # on success the summary comes below
            if summary["status"] != "running":
                job.reporter.summary(summary)
            job.reporter.close()
    worker, cuts = job.engine.worker, job.cuts
    stage = {"rank": k, "blocks": list(range(cuts[k], cuts[k + 1])),
             "params": sum(p.numel() for p in job.module.parameters()),
             "busy_frac": round(job.engine.busy_s / max(job.train_s, 1e-9), 4),
             "peak_mem_bytes": worker.peak_mem_bytes}
    if rt.device.type == "cuda":
        stage["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(rt.device)
    stages = [None] * K
    torch.distributed.all_gather_object(stages, stage, group=rt.control)
    if job.reporter:
        summary.update({
            "steps": job.T, "epochs": -(-job.T // job.steps_per_epoch),
            "final_train_loss": sum(job.recent) / len(job.recent) if job.recent else None,
            "test_acc": job.test_acc, "best_test_acc": job.best_test_acc,
            "wall_s": round(time.perf_counter() - started, 3),
            "samples_per_s": round(job.T * c.batch_size / max(job.train_s, 1e-9), 2),
            "versions": {"torch": torch.__version__, "fr_dist": git_revision()},
            "device": rt.device.type, "threads_per_rank": c.threads_per_rank,
            "partition": cuts[1:-1], "stages": stages,
        })
        job.reporter.summary(summary)
        job.reporter.close()
        print(f"[stage {k}] done: {job.T} steps, test_acc {job.test_acc:.4f}, "
              f"{summary['samples_per_s']} samples/s; outputs in {job.run_dir}", flush=True)


def fail(job: loop.Job, e: Exception) -> None:
    """One message per failure: the rank where it began speaks, the others stay quiet.

    A rank that loses a peer (a closed connection, or no answer within
    fail_timeout_s) speaks only if nobody reported a failure before it: then
    the peer died without a word (killed, out of memory).
    """
    k, engine = job.rt.rank, job.engine
    where = f"at step {job.t}"
    peer = isinstance(e, torch.distributed.DistError) or "Connection" in str(e) or "Timed out" in str(e)
    if peer:
        link = next((l for l in engine.links.values() if l.pending or l.expected is not None), None)
        who = f"stage {link.peer}" if link else "a peer"
        mine = f"stage {k}: lost {who} {where}"
        if job.rt.record("failure", mine) in (None, mine):
            print(f"[stage {k}] error: {who} failed or stopped responding {where} "
                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); stopping", file=sys.stderr, flush=True)
        return
    job.rt.record("failure", f"stage {k}: {e}")
    if isinstance(e, (FRError, loop.NonFinite)):
        print(f"[stage {k}] error: {e}; the last complete checkpoint is kept in {job.run_dir / 'checkpoints'}",
              file=sys.stderr, flush=True)
    else:  # a bug: show where, and the schedule around the failing action
        print(f"[stage {k}] internal error {where}: {e}\n[stage {k}] last actions: "
              f"{' '.join(map(str, engine.history))}", file=sys.stderr, flush=True)
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
