"""Train one job: ``torchrun --nproc_per_node=K -m fr_dist.train algo=fr splits=K model=mlp``.

Rank k runs stage k. Start-up composes and validates the config (every rank,
no communication), joins the process groups, loads data, builds the model on
every rank from the same seed and keeps its own blocks, agrees on link shapes,
then executes the algorithm's schedule iteration by iteration.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import traceback
from collections import deque
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed
import torch.nn as nn
from omegaconf import OmegaConf

from fr_dist import algos, data as datasets, dist
from fr_dist.algos.base import eval_schedule
from fr_dist.config import Config, validate
from fr_dist.engine import Engine
from fr_dist.errors import FRError
from fr_dist.lr import make_lr
from fr_dist.metrics import Reporter
from fr_dist.models import build_blocks
from fr_dist.partition import stage_cuts

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str]):
    """The Hydra config for command-line `overrides` (without hydra.run.dir)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        msg = str(e).split("\nConfig search path")[0].strip()
        raise FRError(f"bad configuration: {msg}") from None


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
    """The job's run directory, chosen once by rank 0 and shared with every rank."""
    box = [run_dir or datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S")]
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


def build_stage(c: Config, in_shape, classes: int, stage: int):
    """This stage's blocks as one module, plus the cut indices of all stages."""
    torch.manual_seed(c.seed)  # every rank builds the whole model: identical init
    blocks = build_blocks(c.model, in_shape, classes)
    cuts = stage_cuts(len(blocks), c.splits, c.partition)
    return nn.Sequential(*blocks[cuts[stage]:cuts[stage + 1]]), cuts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    overrides = [a for a in argv if not a.startswith("hydra.run.dir=")]
    rank = dist.rank()
    try:
        raw = compose(overrides)
        c = validate(raw, dist.world_size())
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
    finally:
        dist.shutdown()


def train(c: Config, raw, rt: dist.Runtime, run_dir: str | None, overrides: list[str]) -> None:
    k, K, device = rt.rank, rt.world, rt.device
    last = k == K - 1
    started = time.perf_counter()
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

    module, cuts = together(rt, build_stage, c, in_shape, classes, k)
    module.to(device)
    torch.manual_seed(stage_seed(c.seed, k))

    @torch.no_grad()
    def output_spec(spec):
        module.eval()  # eval mode: the probe must not touch BatchNorm statistics or the RNG
        out = module(torch.zeros(spec[0], dtype=spec[1], device=device))
        module.train()
        return tuple(out.shape), out.dtype

    in_spec, out_spec = dist.negotiate_shapes(rt, ((c.batch_size, *in_shape), torch.float32), output_spec)
    links = {}
    if k > 0:
        links["x_in"] = dist.Link(f"x {k-1}->{k}", rt.groups[(k - 1, k)], k - 1, *in_spec, device)
        links["g_out"] = dist.Link(f"g {k}->{k-1}", rt.groups[(k, k - 1)], k - 1, *in_spec, device)
    if not last:
        links["x_out"] = dist.Link(f"x {k}->{k+1}", rt.groups[(k, k + 1)], k + 1, *out_spec, device)
        links["g_in"] = dist.Link(f"g {k+1}->{k}", rt.groups[(k + 1, k)], k + 1, *out_spec, device)

    T = c.epochs * steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * steps_per_epoch)
    lr_of = make_lr(c.optim, steps_per_epoch, T)
    params = list(module.parameters())
    optimizer = torch.optim.SGD(params, lr=c.optim.lr, momentum=c.optim.momentum, nesterov=c.optim.nesterov,
                                weight_decay=c.optim.weight_decay) if params else None
    algo = algos.ALGOS[c.algo.name]
    worker = algo.Worker(module, k, K, device, optimizer, lr_of, in_spec)
    engine = Engine(worker, data, links, device)

    reporter = None
    if last:
        name = f"{c.algo.name}-K{K}-{c.model.get('name', 'custom')}-s{c.seed}"
        reporter = Reporter(path, c.wandb, dataclasses.asdict(c), name)
    summary = {"algo": c.algo.name, "splits": K, "model": c.model.get("name", c.model.get("_target_")),
               "data": c.data.name, "seed": c.seed, "status": "running"}
    try:
        result = run_schedule(c, rt, algo, engine, T, steps_per_epoch, test_batches, test_size, reporter, lr_of)
        summary["status"] = "ok"
    except Exception as e:
        summary["status"] = f"error: {e}"
        print(f"[stage {k}] failed: {e}\n[stage {k}] last actions: "
              f"{' '.join(map(str, engine.history))}", file=sys.stderr, flush=True)
        if reporter:
            reporter.summary(summary)
            reporter.close()
        raise
    torch.save({"model": module.state_dict(), "blocks": [cuts[k], cuts[k + 1]]},
               path / "checkpoints" / f"final_stage{k}.pt")
    stage = {"rank": k, "blocks": list(range(cuts[k], cuts[k + 1])),
             "params": sum(p.numel() for p in module.parameters()),
             "busy_frac": round(result["busy_s"] / max(result["train_s"], 1e-9), 4),
             "peak_mem_bytes": worker.peak_mem_bytes}
    if device.type == "cuda":
        stage["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    stages = [None] * K
    torch.distributed.all_gather_object(stages, stage, group=rt.control)
    if reporter:
        summary.update({
            "steps": T, "epochs": -(-T // steps_per_epoch),
            "final_train_loss": result["final_train_loss"], "test_acc": result["test_acc"],
            "best_test_acc": result["best_test_acc"], "wall_s": round(time.perf_counter() - started, 3),
            "samples_per_s": round(T * c.batch_size / max(result["train_s"], 1e-9), 2),
            "versions": {"torch": torch.__version__, "fr_dist": git_revision()},
            "device": device.type, "threads_per_rank": c.threads_per_rank,
            "partition": cuts[1:-1], "stages": stages,
        })
        reporter.summary(summary)
        reporter.close()
        print(f"[stage {k}] done: {T} steps, test_acc {result['test_acc']:.4f}, "
              f"{summary['samples_per_s']} samples/s; outputs in {path}", flush=True)


def run_schedule(c, rt, algo, engine, T, steps_per_epoch, test_batches, test_size, reporter, lr_of) -> dict:
    """Execute the iterations of this rank; evaluate in lockstep at epoch ends."""
    from tqdm import tqdm

    k, K = rt.rank, rt.world
    eval_s, best, test_acc = 0.0, 0.0, None
    window_start, logged = time.perf_counter(), 0
    recent = deque(maxlen=50)
    bar = tqdm(total=T, disable=reporter is None or not c.progress, unit="batch", dynamic_ncols=True, file=sys.stderr)

    def evaluate(step: int) -> None:
        nonlocal eval_s, best, test_acc
        start, busy = time.perf_counter(), engine.busy_s
        engine.correct = 0
        for e in range(test_batches):
            engine.run(eval_schedule(k, K, e))
        engine.busy_s = busy  # busy_frac is about training
        eval_s += time.perf_counter() - start
        if reporter:
            test_acc = engine.correct / test_size
            best = max(best, test_acc)
            reporter.log({"step": step, "epoch": step / steps_per_epoch, "test_acc": test_acc})
            bar.set_postfix_str(f"test_acc {test_acc:.4f}")

    start = time.perf_counter()
    for t in range(algo.iterations(k, K, T)):
        engine.run(algo.schedule(k, K, t, T))
        if reporter and t < T:
            bar.update(1)
            step = t + 1
            if step % c.log_every == 0 or step == T:
                losses = torch.stack(engine.losses).tolist()  # one sync per logged row
                engine.losses.clear()
                recent.extend(losses)
                now = time.perf_counter()
                rate = (step - logged) * c.batch_size / max(now - window_start, 1e-9)
                window_start, logged = now, step
                loss = sum(losses) / len(losses)
                reporter.log({"step": step, "epoch": step / steps_per_epoch, "loss": loss,
                              "lr": lr_of(t), "samples_per_s": rate})
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr_of(t):.4g}")
        if t < T - 1 and (t + 1) % steps_per_epoch == 0 and ((t + 1) // steps_per_epoch) % c.eval_every == 0:
            evaluate(t + 1)
            window_start = time.perf_counter()
    train_s = time.perf_counter() - start - eval_s
    for link in engine.links.values():
        link.close()
    evaluate(T)  # after the drain: every batch applied
    bar.close()
    return {"busy_s": engine.busy_s, "train_s": train_s, "test_acc": test_acc, "best_test_acc": best,
            "final_train_loss": sum(recent) / len(recent) if recent else None}


if __name__ == "__main__":
    sys.exit(main())
