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

import torch
import torch.distributed as tdist

from fr_dist.models.objective import perplexity
from fr_dist.runtime import diagnostic
from fr_dist.runtime.actions import eval_schedule, settle
from fr_dist.runtime.failures import NonFinite, Preempted
from fr_dist.runtime.replicas import average_statistics, sum_over
from fr_dist.runtime.resume import save
from fr_dist.runtime.state import Plan, Progress, Stage

PREEMPT_CHECK_EVERY = 10  # iterations between (non-blocking) checks for SIGTERM on any rank


def evaluate(plan: Plan, stage: Stage, progress: Progress, reporter, step: int) -> None:
    """Forward the test set (its first eval_batches batches when capped) through the pipelines with the
    current weights: accuracy for a classifier, loss and perplexity per token for a language model.

    Replica d scores every D-th test batch; the counts are summed, so every test
    sample is counted once.
    """
    rt, engine = stage.rt, stage.engine
    if stage.pipeline is not None and stage.pipeline.own_evaluation:  # virtual stages: through the schedule
        for e in range(plan.test_batches):
            stage.pipeline.evaluate(e)
        scores = stage.pipeline.take_scores()
    else:
        engine.timed = False  # busy_frac is about training
        try:
            for e in range(rt.replica, plan.test_batches, rt.replicas):
                engine.run(eval_schedule(rt.stage, rt.stages, e))
        finally:
            engine.timed = True
        scores = engine.take_scores()
    if rt.replicas > 1 and stage.last:
        scores = sum_over(scores, rt.stage_control)
    if not reporter:
        return
    correct, loss_sum, targets = scores.tolist()
    row = {"step": step, "epoch": step / plan.steps_per_epoch}
    if plan.seq_len:
        progress.val_loss = loss_sum / targets
        progress.best_val_loss = min(progress.val_loss, progress.best_val_loss or math.inf)
        row.update(val_loss=progress.val_loss, val_ppl=perplexity(progress.val_loss))
    else:
        progress.test_acc = correct / targets
        progress.best_test_acc = max(progress.best_test_acc, progress.test_acc)
        row["test_acc"] = progress.test_acc
    reporter.log({**row, "time_s": round(progress.train_s, 3)})


def train_iteration(c, plan: Plan, stage: Stage, t: int, reporter) -> None:
    """Iteration t of this rank: its schedule on the engine (with the diagnostic's passes when due),
    or one batch of the pipelining runner."""
    rt, engine = stage.rt, stage.engine
    k, K = rt.stage, rt.stages
    if stage.pipeline is not None:
        stage.pipeline.train_step(t)
        return
    if not (c.diag_every and (t + 1) % c.diag_every == 0 and t < plan.T):
        engine.run(plan.algo.schedule(k, K, t, plan.T))
        return
    engine.probe.stats = None
    engine.run(diagnostic.with_passes(plan.algo, k, K, t, plan.T))
    stats = [None] * K
    tdist.all_gather_object(stats, engine.probe.stats, group=rt.control)
    if reporter:
        reporter.log(diagnostic.row(t + 1, (t + 1) / plan.steps_per_epoch, stats))


def run(c, plan: Plan, stage: Stage, progress: Progress, reporter, start: int) -> None:
    """Iterations start.. of this rank, then the final evaluation and checkpoint."""
    from tqdm import tqdm

    rt, algo = stage.rt, plan.algo
    k, K, T = rt.stage, rt.stages, plan.T
    term = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: term.update(flag=True))
    vote = None  # (iteration it decides at, async all-reduce work, flag tensor)
    bar = tqdm(total=T, initial=min(start, T), disable=reporter is None or not c.progress, unit="batch",
               dynamic_ncols=True, file=sys.stderr)
    window = (time.perf_counter(), min(start, T))  # (start time, step) of the current metrics row
    try:
        for t in range(start, algo.iterations(k, K, T)):
            progress.t = t
            began, diag_s = time.perf_counter(), stage.engine.diag_s
            train_iteration(c, plan, stage, t, reporter)
            progress.train_s += time.perf_counter() - began - (stage.engine.diag_s - diag_s)
            step = t + 1
            if stage.last and t < T:  # every replica of the last stage: the logged loss is their mean
                bar.update(1)
                if step % c.log_every == 0 or step == T:
                    window = log(c, plan, stage, progress, reporter, step, bar, window)
            if t >= T - 1:
                continue  # drain: no evaluation, checkpoint or preemption until the end
            evaluating = (step % plan.steps_per_epoch == 0 and (step // plan.steps_per_epoch) % c.eval_every == 0
                          or bool(c.eval_every_steps) and step % c.eval_every_steps == 0)
            stop = False
            if vote is not None and vote[0] == t:
                vote[1].wait()
                stop, vote = bool(vote[2].item()), None
            if vote is None and step % PREEMPT_CHECK_EVERY == 0:
                # Started now, read PREEMPT_CHECK_EVERY iterations later: no rank waits for it.
                flag = torch.tensor([int(term["flag"])])
                vote = (t + PREEMPT_CHECK_EVERY, tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=rt.control,
                                                                  async_op=True), flag)
            saving = stop or (c.ckpt_every and step % c.ckpt_every == 0)
            if evaluating or saving:  # a cut: no transfer may stay unmatched while it lasts
                stage.engine.run(settle(algo, k, K, t, T))
                stage.engine.check_links()
                if rt.replicas > 1:
                    average_statistics(stage.module, rt.data_parallel, rt.replicas)
            if evaluating:
                evaluate(plan, stage, progress, reporter, step)
            if saving:
                check_finite(stage, step)
                save(plan, stage, progress, c.ckpt_keep, step)
            if stop:
                raise Preempted(step)
        if vote is not None:
            vote[1].wait()
        stage.engine.close()
        bar.close()
        if rt.replicas > 1:
            average_statistics(stage.module, rt.data_parallel, rt.replicas)
        evaluate(plan, stage, progress, reporter, T)  # after the drain: every batch applied
        check_finite(stage, T)
        save(plan, stage, progress, c.ckpt_keep, T, finished=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()


def log(c, plan: Plan, stage: Stage, progress: Progress, reporter, step: int, bar, window):
    """One metrics row from the losses since the last row (one device sync); the next row's window."""
    losses = torch.stack(stage.take_losses())
    if stage.rt.replicas > 1:
        losses = sum_over(losses, stage.rt.stage_control) / stage.rt.replicas
    losses = losses.tolist()
    progress.recent.extend(losses)
    loss = sum(losses) / len(losses)
    if not math.isfinite(loss):
        raise NonFinite(f"non-finite training loss ({loss}) at step {step}")
    now = time.perf_counter()
    rate = (step - window[1]) * c.batch_size * stage.rt.replicas / max(now - window[0], 1e-9)  # the global batch
    lr = stage.lr_of(step - 1)
    if reporter:
        row = {"step": step, "epoch": step / plan.steps_per_epoch, "loss": loss, "lr": lr, "samples_per_s": rate}
        if plan.seq_len:
            row["tokens_per_s"] = rate * plan.seq_len
        reporter.log({**row, "time_s": round(progress.train_s, 3)})
        bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.4g}")
    return now, step


def check_finite(stage: Stage, step: int) -> None:
    """Before a checkpoint: never save non-finite weights over a good checkpoint (one device sync)."""
    losses = stage.engine.losses + (stage.pipeline.losses if stage.pipeline else [])
    params = list(stage.module.parameters())
    finite = torch.stack([torch.isfinite(x).all() for x in losses + params]) if losses or params else None
    if finite is None or bool(finite.all()):
        return
    if not bool(finite[:len(losses)].all()):
        raise NonFinite(f"non-finite training loss before step {step}")
    name = next(n for (n, _), ok in zip(stage.module.named_parameters(), finite[len(losses):].tolist()) if not ok)
    raise NonFinite(f"parameter {name} is not finite at step {step}")
