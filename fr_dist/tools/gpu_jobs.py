"""What the GPU check (tools/gpu_check.py) measures with: training jobs, references, a plain loop.

- `run_job`: one `python -m fr_dist.launch` job in its own process group, killed whole at
  its deadline; its summary, losses and final checkpoint states.
- `reference`: the same run in the single-process CPU simulator (fr_dist/reference.py), from
  the same config, data, initial blocks, rates and stage seeds (as tests/support.py does).
- `compare`: two lists of stage states, bit for bit and within a tolerance.
- `plain_loop`: a hand-written PyTorch training loop (no fr_dist in the loop) on the model,
  batches and SGD a config describes; run in a fresh process (`python -m
  fr_dist.tools.gpu_jobs JSON`) so it starts as cold as a job does.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def run_job(overrides: list[str], run_dir: Path, timeout: float, env: dict | None = None) -> dict:
    """Run one job of `overrides` into `run_dir` for at most `timeout` s; what it left.

    {"rc", "seconds", "summary" (or None), "losses", "error" (the last lines of its log)}.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fr_dist.launch", "progress=false", "wandb.mode=disabled", "resume=null",
           *overrides, f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    rc = run_capped(cmd, run_dir / "job.log", timeout, env)
    out = {"rc": rc, "seconds": round(time.perf_counter() - started, 2), "summary": None, "losses": []}
    summary = run_dir / "summary.json"
    if summary.exists():
        out["summary"] = json.loads(summary.read_text())
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        out["losses"] = [r["loss"] for r in rows if "loss" in r]
        out["rows"] = [r for r in rows if "loss" in r and "time_s" in r]
    if rc != 0 or out["summary"] is None or out["summary"].get("status") != "ok":
        lines = (run_dir / "job.log").read_text(errors="replace").splitlines()
        errors = [line for line in lines if "error" in line.lower()]
        out["error"] = " | ".join((errors or lines)[-3:])[-600:] or f"exit {rc}"
    return out


def run_capped(cmd: list[str], log: Path, timeout: float, env: dict | None = None, cwd=None) -> int | str:
    """Run `cmd` with output to `log`; its exit code, or "timeout" after `timeout` s (its whole group killed)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return "timeout"


def kill_group(proc: subprocess.Popen) -> None:
    """End `proc` and everything it started: its process group, and every descendant.

    torchrun starts each rank in a session of its own, out of reach of the group's kill:
    the tree is found through /proc (Linux), stopped (so nothing new starts) and killed.
    """
    stopped: list[int] = []
    for _ in range(2):  # a second look finds children started while the first was stopping
        for pid in _tree(proc.pid):
            if pid not in stopped:
                stopped.append(pid)
                _signal(pid, signal.SIGSTOP)
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/*/stat (just `pid` where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def job_ok(job: dict, device: str) -> bool:
    s = job["summary"]
    return job["rc"] == 0 and s is not None and s.get("status") == "ok" and s.get("device") == device \
        and bool(job["losses"]) and all(math.isfinite(v) for v in job["losses"])


def final_states(run_dir: Path, K: int) -> list[dict]:
    """Every stage's model state of the run's final checkpoint, on the CPU."""
    import torch

    from fr_dist.runtime import checkpoint

    final = checkpoint.latest(run_dir)
    if final is None:
        raise RuntimeError(f"no complete checkpoint in {run_dir}")
    return [torch.load(final / f"stage{k}.pt", map_location="cpu", weights_only=False)["model"] for k in range(K)]


def _inputs(K: int, overrides: list[str]):
    """(config, data, stages) of a run of `overrides`, built as the ranks build them."""
    import torch
    import torch.nn as nn

    from fr_dist import data as datasets
    from fr_dist.compose import compose
    from fr_dist.config import validate
    from fr_dist.models import build_blocks
    from fr_dist.partition import stage_cuts

    c = validate(compose([f"splits={K}", *overrides]), world_size=K)
    data = datasets.load(c.data, c.batch_size, c.seed)
    torch.manual_seed(c.seed)
    blocks = build_blocks(c.model, data.in_shape, data.classes)
    cuts = stage_cuts(len(blocks), K, c.partition)
    return c, data, [nn.Sequential(*blocks[a:b]) for a, b in zip(cuts, cuts[1:])]


def _sgd(o):
    import torch

    return lambda params: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                          weight_decay=o.weight_decay)


def reference(K: int, overrides: list[str]) -> tuple[list[dict], list[dict], list[float]]:
    """(initial states, final states, losses) of `overrides` in the CPU simulator, one thread.

    K = 1 is plain backprop; K > 1 Features Replay. One thread, as the CPU ranks run
    with threads_per_rank=1: the same reduction order.
    """
    import copy

    import torch

    from fr_dist.build import stage_seed
    from fr_dist.optim import make_lr
    from fr_dist.reference import backprop, features_replay

    c, data, stages = _inputs(K, overrides)
    initial = [copy.deepcopy(s.state_dict()) for s in stages]
    T = c.epochs * data.steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * data.steps_per_epoch)
    batches = [(data.inputs(b, prefetch=False), data.labels(b)) for b in range(T)]
    lr_of = make_lr(c.optim, data.steps_per_epoch, T)
    seeds = [stage_seed(c.seed, k) for k in range(K)]
    torch.set_num_threads(1)
    if K == 1:
        losses = backprop(stages[0], batches, lr_of, _sgd(c.optim), seeds[0])
    else:
        losses = features_replay(stages, batches, lr_of, _sgd(c.optim), seeds)
    return initial, [s.state_dict() for s in stages], losses


def compare(got: list[dict], want: list[dict], rtol: float, atol: float) -> dict:
    """`got` against `want`, tensor by tensor: bitwise, and within |g - w| <= rtol * max|w| + atol.

    "worst_rel": the largest max|g - w| / max|w| over the floating-point tensors.
    """
    import torch

    bitwise, close, worst, where = True, True, 0.0, None
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.keys() != w.keys():
            return {"bitwise": False, "close": False, "worst_rel": None, "where": f"stage {k}: other tensors"}
        for name, want_t in w.items():
            got_t = g[name].to(want_t.device)
            if torch.equal(got_t, want_t):
                continue
            bitwise = False
            if not want_t.is_floating_point():  # e.g. BatchNorm's num_batches_tracked: exact or wrong
                close, where = False, f"stage {k} {name}"
                continue
            diff = (got_t.double() - want_t.double()).abs().max().item()
            scale = want_t.double().abs().max().item()
            if diff > rtol * scale + atol:
                close = False
            rel = diff / max(scale, 1e-30)
            if rel > worst:
                worst, where = rel, f"stage {k} {name}"
    return {"bitwise": bitwise, "close": close, "worst_rel": float(f"{worst:.3g}"), "where": where}


def plain_loop(overrides: list[str], device: str, threads: int) -> dict:
    """Train the run of `overrides` (K = 1) with a hand-written loop; its samples/s.

    The model from fr_dist.models.build_blocks, the same SGD and per-batch rates, the same
    synthetic batches in the same order (pinned host tensors, copied asynchronously as the
    trainer's prefetched inputs are). "samples_per_s" counts every step, like summary.json;
    "steady_samples_per_s" the steps after the first `log_every`, like the metrics rows.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from fr_dist.optim import make_lr

    torch.set_num_threads(threads)
    c, data, stages = _inputs(1, overrides)
    dev = torch.device(device)
    model = nn.Sequential(*stages).to(dev)
    optimizer = _sgd(c.optim)(model.parameters())
    T = c.epochs * data.steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * data.steps_per_epoch)
    lr_of = make_lr(c.optim, data.steps_per_epoch, T)
    pin = dev.type == "cuda"
    batches = [(data.inputs(b, prefetch=False), data.labels(b)) for b in range(T)]
    if pin:
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]

    def sync():
        if pin:
            torch.cuda.synchronize(dev)

    warm = min(c.log_every, T - 1)
    model.train()
    sync()
    start = time.perf_counter()
    for b, (x, y) in enumerate(batches):
        if b == warm:
            sync()
            warm_at = time.perf_counter()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr_of(b)
        optimizer.step()
        optimizer.zero_grad()
    sync()
    end = time.perf_counter()
    return {"steps": T, "seconds": round(end - start, 4),
            "samples_per_s": round(T * c.batch_size / (end - start), 2),
            "steady_samples_per_s": round((T - warm) * c.batch_size / (end - warm_at), 2),
            "final_loss": loss.item()}


def steady_rate(job: dict) -> float | None:
    """Samples/s of a job's metrics windows after the first, which holds the first iterations.

    A row's samples_per_s covers the wall clock from the previous row to this one, each
    taken after the row's device sync (runtime/loop.py `log`): on a GPU it counts the work
    still queued, which summary.json's training time leaves out. The windows are combined
    as total samples over total time.
    """
    rows = job.get("rows") or []
    windows = [(b["step"] - a["step"], b["samples_per_s"]) for a, b in zip(rows, rows[1:])
               if b.get("samples_per_s") and b["step"] > a["step"]]
    if not windows:
        return None
    steps = sum(n for n, _ in windows)
    return round(steps / sum(n / rate for n, rate in windows), 2)  # n steps at rate r last n * B / r s


def refusal(overrides: list[str], key: str) -> tuple[str, str] | None:
    """How this fr_dist's config takes `overrides`: None (accepted), ("unknown", msg) when it has no
    `key`, ("refused", msg) for any other refusal."""
    from fr_dist.compose import compose
    from fr_dist.config import validate
    from fr_dist.errors import FRError

    try:
        validate(compose(overrides), world_size=1)
    except FRError as e:
        msg = str(e)
        unknown = f"Could not override '{key}'" in msg or (f"{key}=" in msg and "is not a configuration key" in msg)
        return ("unknown" if unknown else "refused"), msg
    return None


def plain_loop_in_process(overrides: list[str], device: str, threads: int, out: Path, timeout: float,
                          env: dict | None = None) -> dict:
    """`plain_loop` in a fresh Python process (cold, like a job); its result or {"error": ...}."""
    args = json.dumps({"overrides": overrides, "device": device, "threads": threads, "out": str(out)})
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", "1")  # as fr_dist.launch starts a rank, which then sets its threads
    rc = run_capped([sys.executable, "-m", "fr_dist.tools.gpu_jobs", args], out.with_suffix(".log"), timeout, env)
    if rc == 0 and out.exists():
        return json.loads(out.read_text())
    lines = out.with_suffix(".log").read_text(errors="replace").splitlines()
    return {"error": f"plain loop: exit {rc}: " + " | ".join(lines[-3:])[-600:]}


if __name__ == "__main__":  # the plain loop's own process: python -m fr_dist.tools.gpu_jobs JSON
    a = json.loads(sys.argv[1])
    result = plain_loop(a["overrides"], a["device"], a["threads"])
    Path(a["out"]).write_text(json.dumps(result) + "\n")
