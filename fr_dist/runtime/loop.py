"""A rank's iterations: schedule, evaluation, logging, checkpoints, preemption, failures.

Every rank runs the same loop over iterations t; what differs is the actions
its algorithm's schedule gives it. Evaluations and checkpoints happen between
iterations at points every rank computes alike, so they need no agreement.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from fr_dist.runtime import checkpoint, diagnostic
from fr_dist.runtime.actions import eval_schedule, in_flight

PREEMPT_CHECK_EVERY = 10  # iterations between (non-blocking) checks for SIGTERM on any rank


class Preempted(Exception):
    """SIGTERM reached a rank: every rank wrote a checkpoint and stops."""


class PeerFailed(Exception):
    """This rank stops because another one failed (it reported it already, or we did)."""


@dataclass
class Job:
    """What one rank needs to train: built once by train.py."""

    c: object  # config.Config
    rt: object  # dist.Runtime
    run_dir: object
    algo: object  # the algorithm module
    engine: object
    module: torch.nn.Module
    optimizer: object
    T: int  # training batches
    steps_per_epoch: int
    test_batches: int
    test_size: int
    lr_of: object
    reporter: object  # metrics.Reporter on the last stage, else None
    meta: dict  # what a checkpoint must match to be resumed
    cuts: list = field(default_factory=list)  # block boundaries of all stages
    t: int = 0  # the iteration this rank is in (batch t enters the pipeline in it)
    train_s: float = 0.0
    best_test_acc: float = 0.0
    test_acc: float | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=50))  # last losses: final_train_loss


def save(job: Job, t: int, finished: bool = False) -> None:
    """Checkpoint after iteration t-1 (t batches trained), all ranks in lockstep."""
    k, K = job.rt.rank, job.rt.world
    directory = checkpoint.step_dir(job.run_dir, t)
    if k == 0:
        directory.mkdir(parents=True, exist_ok=True)
    tdist.barrier(group=job.rt.control)
    pending = [] if finished else in_flight(job.algo, k, K, t - 1, job.T)
    if len(pending) > 1:
        raise RuntimeError(f"{len(pending)} gradients in flight on one link: the checkpoint cut is not supported")
    g_out = job.engine.links.get("g_out")
    state = {
        "meta": dict(job.meta, step=t, finished=finished),
        "model": job.module.state_dict(),
        "optimizer": job.optimizer.state_dict() if job.optimizer else None,
        "worker": job.engine.worker.state_dict(),
        "in_flight": (pending[0], g_out.buffer.clone()) if pending else None,
        "rng": {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(job.rt.device) if job.rt.device.type == "cuda" else None},
        "report": {"recent": list(job.recent), "best_test_acc": job.best_test_acc, "test_acc": job.test_acc,
                   "train_s": job.train_s},
    }
    checkpoint.atomic_save(state, directory / f"stage{k}.pt")
    tdist.barrier(group=job.rt.control)  # every stage's file is durable
    if k == 0:
        checkpoint.mark_complete(directory, job.c.ckpt_keep)


def restore(job: Job, state: dict) -> int:
    """Load a stage checkpoint; the iteration to continue from."""
    job.module.load_state_dict(state["model"])
    if job.optimizer:
        job.optimizer.load_state_dict(state["optimizer"])
    job.engine.worker.load_state_dict(state["worker"])
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], job.rt.device)
    report = state["report"]
    job.recent.extend(report["recent"])
    job.best_test_acc, job.test_acc, job.train_s = report["best_test_acc"], report["test_acc"], report["train_s"]
    if state["in_flight"] is not None:  # the receiver posts for it in the next iteration
        batch, grad = state["in_flight"]
        job.engine.links["g_out"].send(grad.to(job.rt.device), batch)
    step = state["meta"]["step"]
    k, K = job.rt.rank, job.rt.world
    return job.algo.iterations(k, K, job.T) if state["meta"]["finished"] else step


def evaluate(job: Job, step: int) -> None:
    """Forward the whole test set through the pipeline with the current weights."""
    k, K, engine = job.rt.rank, job.rt.world, job.engine
    busy = engine.busy_s
    engine.correct = 0
    for e in range(job.test_batches):
        engine.run(eval_schedule(k, K, e))
    engine.busy_s = busy  # busy_frac is about training
    if job.reporter:
        job.test_acc = engine.correct / job.test_size
        job.best_test_acc = max(job.best_test_acc, job.test_acc)
        job.reporter.log({"step": step, "epoch": step / job.steps_per_epoch, "test_acc": job.test_acc,
                          "time_s": round(job.train_s, 3)})


def run(job: Job, start: int) -> None:
    """Iterations start.. of this rank, then the final evaluation and checkpoint."""
    from tqdm import tqdm

    c, rt, algo, engine = job.c, job.rt, job.algo, job.engine
    k, K, T = rt.rank, rt.world, job.T
    term = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: term.update(flag=True))
    vote = None  # (iteration it decides at, async all-reduce work, flag tensor)
    bar = tqdm(total=T, initial=min(start, T), disable=job.reporter is None or not c.progress, unit="batch",
               dynamic_ncols=True, file=sys.stderr)
    window_start, logged = time.perf_counter(), min(start, T)
    try:
        for t in range(start, algo.iterations(k, K, T)):
            job.t = t
            began = time.perf_counter()
            actions = algo.schedule(k, K, t, T)
            if c.diag_every and (t + 1) % c.diag_every == 0 and t < T:
                # Every update computed, none applied: measure, then step.
                engine.run([a for a in actions if a.op != "step"])
                job.train_s += time.perf_counter() - began
                row = diagnostic.measure(job, t)
                if row:
                    job.reporter.log(row)
                began = time.perf_counter()
                actions = [a for a in actions if a.op == "step"]
            engine.run(actions)
            job.train_s += time.perf_counter() - began
            step = t + 1
            if job.reporter and t < T:
                bar.update(1)
                if step % c.log_every == 0 or step == T:
                    window_start, logged = log(job, step, t, bar, window_start, logged)
            if t >= T - 1:
                continue  # drain: no evaluation, checkpoint or preemption until the end
            if step % job.steps_per_epoch == 0 and (step // job.steps_per_epoch) % c.eval_every == 0:
                evaluate(job, step)
            stop = False
            if vote is not None and vote[0] == t:
                vote[1].wait()
                stop, vote = bool(vote[2].item()), None
            if vote is None and step % PREEMPT_CHECK_EVERY == 0:
                # Started now, read PREEMPT_CHECK_EVERY iterations later: no rank waits for it.
                flag = torch.tensor([int(term["flag"])])
                vote = (t + PREEMPT_CHECK_EVERY, tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=rt.control,
                                                                  async_op=True), flag)
            if stop or (c.ckpt_every and step % c.ckpt_every == 0):
                check_finite(job, step)
                save(job, step)
            if stop:
                raise Preempted(step)
        if vote is not None:
            vote[1].wait()
        for link in engine.links.values():
            link.close()
        bar.close()
        evaluate(job, T)  # after the drain: every batch applied
        check_finite(job, T)
        save(job, T, finished=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()


def log(job: Job, step: int, t: int, bar, window_start: float, logged: int):
    """One metrics row from the losses since the last row (one device sync)."""
    losses = torch.stack(job.engine.losses).tolist()
    job.engine.losses.clear()
    job.recent.extend(losses)
    loss = sum(losses) / len(losses)
    if not math.isfinite(loss):
        raise NonFinite(f"non-finite training loss ({loss}) at step {step}")
    now = time.perf_counter()
    rate = (step - logged) * job.c.batch_size / max(now - window_start, 1e-9)
    lr = job.lr_of(t)
    job.reporter.log({"step": step, "epoch": step / job.steps_per_epoch, "loss": loss, "lr": lr,
                      "samples_per_s": rate, "time_s": round(job.train_s, 3)})
    bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.4g}")
    return now, step


class NonFinite(Exception):
    """A loss or a parameter stopped being a finite number."""


def check_finite(job: Job, step: int) -> None:
    """Before a checkpoint: never save non-finite weights over a good checkpoint."""
    if job.reporter and job.engine.losses:
        losses = torch.stack(job.engine.losses)
        if not torch.isfinite(losses).all():
            raise NonFinite(f"non-finite training loss before step {step}")
    for name, p in job.module.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFinite(f"parameter {name} is not finite at step {step}")
