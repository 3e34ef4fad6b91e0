"""Checkpoints at a consistent cut of the pipeline, and exact resume from them.

The files and their atomic writing are runtime/checkpoint.py; this module
decides what a stage's checkpoint holds and how a run continues from one.
"""

from __future__ import annotations

import hashlib
import sys

import torch
import torch.distributed as tdist

from fr_dist.errors import FRError
from fr_dist.runtime import checkpoint
from fr_dist.runtime.actions import in_flight
from fr_dist.runtime.failures import Stop, together
from fr_dist.runtime.groups import agree
from fr_dist.runtime.state import Plan, Progress, Stage

# What a checkpoint must share with the run that resumes it.
IDENTITY = ("format", "algo", "algo.virtual", "splits", "replicas", "model", "stage", "blocks", "batch_size",
            "steps")  # algo.virtual: only the schedules with virtual stages record it
FORMAT = 2  # 2: the receiver holds the error gradient that crosses the cut (1: its sender did)

def save(plan: Plan, stage: Stage, progress: Progress, keep: int, t: int, finished: bool = False) -> None:
    """Checkpoint after iteration t-1 (t batches trained), all ranks in lockstep, after the cut's take_g."""
    rt, engine = stage.rt, stage.engine
    directory = checkpoint.step_dir(plan.run_dir, t)
    if rt.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
    tdist.barrier(group=rt.control)
    k, K = rt.stage, rt.stages
    crossing = [] if finished or k == K - 1 else in_flight(plan.algo, k + 1, K, t - 1, plan.T)
    if sorted(engine.held) != sorted(crossing):
        raise RuntimeError(f"checkpoint of step {t}: holding the gradients of {sorted(engine.held)}, "
                           f"but {crossing} cross the cut")
    state = {
        "meta": dict(plan.meta, step=t, finished=finished),
        # What every replica of the stage shares is saved once, by replica 0.
        "model": stage.module.state_dict() if rt.replica == 0 else None,
        "optimizer": stage.optimizer.state_dict() if stage.optimizer and rt.replica == 0 else None,
        "worker": engine.worker.state_dict(),
        "held": {b: g.cpu() for b, g in engine.held.items()},
        "weights_digest": digest(stage.module),  # every replica's: equal unless the replicas diverged
        "rng": {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None},
        "report": progress.state_dict(),
    }
    checkpoint.atomic_save(state, directory / checkpoint.stage_file(k, rt.replica))
    tdist.barrier(group=rt.control)  # every stage's file is durable
    if rt.rank == 0:
        checkpoint.mark_complete(directory, keep)


def digest(module: torch.nn.Module) -> str:
    """A hash of the module's parameters and buffers, bit for bit."""
    h = hashlib.sha1()
    for tensor in module.state_dict().values():
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def restore(plan: Plan, stage: Stage, progress: Progress, state: dict, shared: dict) -> int:
    """Load a stage checkpoint (`shared`: replica 0's, with the weights and optimizer); the iteration to continue from."""
    rt = stage.rt
    stage.module.load_state_dict(shared["model"])
    if stage.optimizer:
        stage.optimizer.load_state_dict(shared["optimizer"])
    stage.engine.worker.load_state_dict(state["worker"])
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], rt.device)
    progress.load_state_dict(state["report"])
    # The error gradients this stage took at the cut: its next iteration replays them.
    stage.engine.held = {b: g.to(rt.device) for b, g in state["held"].items()}
    if state["meta"]["finished"]:
        return plan.algo.iterations(rt.stage, rt.stages, plan.T)
    return state["meta"]["step"]


def resume(plan: Plan, stage: Stage, progress: Progress, reporter, resume_from: str | None) -> int:
    """The iteration to start from: 0, or where the checkpoint `resume_from` names left off.

    With resume=auto an unreadable checkpoint (a stage file corrupt or missing
    on any rank) is skipped for the previous complete one.
    """
    rt = stage.rt
    tried = together(rt, checkpoint.candidates, resume_from, plan.run_dir)
    for i, directory in enumerate(tried):
        state, shared, problem = None, None, None
        expect = {key: plan.meta.get(key) for key in IDENTITY}
        try:
            state = checkpoint.load_stage(directory, rt.stage, expect, rt.replica)
            shared = state if rt.replica == 0 else checkpoint.load_stage(directory, rt.stage, expect)
        except checkpoint.Unreadable as e:
            problem = ("unreadable", str(e))
        except FRError as e:
            problem = ("refused", str(e))
        problems = agree(rt, problem)
        failed = [r for r, p in enumerate(problems) if p is not None]
        if not failed:
            break
        first = problems[failed[0]]
        fall_back = resume_from == "auto" and i + 1 < len(tried) and all(problems[r][0] == "unreadable" for r in failed)
        if rt.rank == failed[0]:
            if fall_back:
                print(f"[{rt.name}] warning: {first[1]}; resuming from the previous one, {tried[i + 1]}",
                      file=sys.stderr, flush=True)
            else:
                print(f"[{rt.name}] error: {first[1]}", file=sys.stderr, flush=True)
        if not fall_back:
            raise Stop
    else:
        return 0
    if reporter:
        reporter.truncate(state["meta"]["step"])  # rows logged after the checkpoint are redone
    start = restore(plan, stage, progress, state, shared)
    if rt.rank == 0:
        print(f"[stage 0] resumed from step {state['meta']['step']} ({directory})", file=sys.stderr, flush=True)
    return start
