"""Train one job: ``torchrun --nproc_per_node=K -m fr_dist.train algo=fr splits=K model=mlp``.

Rank k runs stage k. Start-up composes and validates the config (every rank,
no communication), joins the process groups, then builds the run (build.py)
and executes the algorithm's schedule iteration by iteration (runtime/loop.py).
docs/DESIGN.md describes the schedule, the processes and the contracts.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed

from fr_dist.build import build
from fr_dist.compose import compose
from fr_dist.config import Config, validate
from fr_dist.errors import FRError
from fr_dist.models.objective import perplexity
from fr_dist.runtime import groups, loop
from fr_dist.runtime.failures import Preempted, Stop, report
from fr_dist.runtime.metrics import git_revision, stage_figures
from fr_dist.runtime.resume import resume
from fr_dist.runtime.state import Progress
from fr_dist.runtime.watchdog import Watchdog


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    overrides = [a for a in argv if not a.startswith("hydra.run.dir=")]
    rank = groups.rank()
    try:
        raw = compose(overrides)
        c = validate(raw, groups.world_size())
    except FRError as e:  # the same on every rank: rank 0 speaks for all
        if rank == 0:
            print(f"[stage 0] error: {e}", file=sys.stderr, flush=True)
        return 1
    try:  # what this node has: one message per node
        device, backend, warning = groups.choose_device(c.device, c.transport, groups.local_rank(),
                                                        groups.local_world_size(), torch.cuda.device_count())
    except FRError as e:
        if groups.local_rank() == 0:
            print(f"[stage {rank}] error: {e}", file=sys.stderr, flush=True)
        return 1
    if warning and groups.local_rank() == 0:
        print(f"[stage {rank}] warning: {warning}", file=sys.stderr, flush=True)
    if c.deterministic:
        groups.make_deterministic()
    try:
        rt = groups.init(c.fail_timeout_s, device, backend, c.replicas)
    except FRError as e:  # the store: a port in use, or rank 0 unreachable
        print(f"[stage {rank}] error: {e}", file=sys.stderr, flush=True)
        return 1
    aborted = False
    try:
        train(c, raw, rt, run_dir, overrides)
        return 0
    except Stop as e:
        aborted = e.aborted
        return 1
    except Preempted as e:
        if rt.rank == 0:
            print(f"[stage 0] stopped by SIGTERM: checkpoint of step {e.args[0]} written; "
                  f"the same command with resume=auto continues", file=sys.stderr, flush=True)
        return 143
    finally:
        groups.shutdown(abort=aborted)
        if aborted:  # a peer is dead or frozen: leave now, nothing may wait for it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)


def train(c: Config, raw, rt: groups.Runtime, run_dir: str | None, overrides: list[str]) -> None:
    started = time.perf_counter()
    plan, stage, reporter = build(c, raw, rt, run_dir, overrides)
    progress = Progress()

    def hung(peer: int) -> None:  # NCCL: the watchdog found a transfer that never ends
        report(rt, TimeoutError(f"Timed out: no answer within fail_timeout_s={c.fail_timeout_s}"), progress.t,
               peer, stage.engine.history, plan.run_dir / "checkpoints")
        groups.shutdown(abort=True)
        os._exit(1)

    watchdog = Watchdog(stage.engine.links.values(), c.fail_timeout_s, hung).start() if rt.backend == "nccl" else None
    summary = {"algo": c.algo.name, "splits": rt.stages, "replicas": rt.replicas, "model": c.model.get("name", c.model.get("_target_")),
               "data": c.data._target_ or c.data.name, "seed": c.seed, "status": "running"}
    try:
        loop.run(c, plan, stage, progress, reporter, resume(plan, stage, progress, reporter, c.resume))
        summary["status"] = "ok"
    except Stop:  # a user error at resume, already reported
        raise
    except Preempted:
        summary["status"] = "preempted"
        raise
    except Exception as e:
        summary["status"] = f"error: {e}"
        report(rt, e, progress.t, stage.engine.waiting_on(), stage.engine.history, plan.run_dir / "checkpoints")
        raise Stop(aborted=True) from None
    finally:
        if watchdog:
            watchdog.stop()
        if reporter and summary["status"] != "ok":  # on success the summary comes below
            if summary["status"] != "running":
                reporter.summary(summary)
            reporter.close()
    samples_per_s = plan.T * c.batch_size * rt.replicas / max(progress.train_s, 1e-9)
    stages = [None] * rt.world
    torch.distributed.all_gather_object(stages, stage_figures(stage, plan, progress), group=rt.control)
    if reporter:
        summary.update({
            "steps": plan.T, "epochs": -(-plan.T // plan.steps_per_epoch),
            "final_train_loss": sum(progress.recent) / len(progress.recent) if progress.recent else None,
            **scores(plan, progress), "wall_s": round(time.perf_counter() - started, 3),
            "samples_per_s": round(samples_per_s, 2),
            "versions": {"torch": torch.__version__, "fr_dist": git_revision()},
            "device": rt.device.type, "precision": c.precision, "compile": c.compile,
            "compile_s": max((s.get("compile_s", 0.0) for s in stages), default=0.0),
            "threads_per_rank": c.threads_per_rank,
            "partition": plan.cuts[1:-1], "stages": stages,
        })
        if plan.seq_len:
            summary["tokens_per_s"] = round(samples_per_s * plan.seq_len, 1)
        reporter.summary(summary)
        reporter.close()
        score = f"val_loss {progress.val_loss:.4f}" if plan.seq_len else f"test_acc {progress.test_acc:.4f}"
        print(f"[{rt.name}] done: {plan.T} steps, {score}, {summary['samples_per_s']} samples/s; "
              f"outputs in {plan.run_dir}", flush=True)


def scores(plan, progress: Progress) -> dict:
    """The evaluation's keys of summary.json: a language model's loss and perplexity per token, or accuracy."""
    if plan.seq_len:
        return {"val_loss": progress.val_loss, "val_ppl": perplexity(progress.val_loss),
                "best_val_loss": progress.best_val_loss}
    return {"test_acc": progress.test_acc, "best_test_acc": progress.best_test_acc}


if __name__ == "__main__":
    sys.exit(main())
