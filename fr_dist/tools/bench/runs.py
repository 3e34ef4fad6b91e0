"""Step 2 of the benchmark: run every configuration as a torchrun job, round after round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fr_dist.tools.bench.configs import BY_NAME, common_overrides
from fr_dist.tools.bench.profiling import plain_loop, predictions, profile


def _cpu_seconds():
    """(machine busy CPU seconds incl. steal, CPU seconds of our finished children), or None off Linux."""
    import resource

    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (user + nice + system + irq + softirq + steal) / tick, ru.ru_utime + ru.ru_stime


def idle_cores(seconds: float = 1.0) -> float | None:
    """Cores left idle by everything on the machine over `seconds` (Linux /proc/stat), else None."""
    a = _cpu_seconds()
    time.sleep(seconds)
    b = _cpu_seconds()
    if a is None or b is None:
        return None
    return round((os.cpu_count() or 1) - (b[0] - a[0]) / seconds, 2)


def wait_idle(max_wait: float) -> float | None:
    """Wait (up to `max_wait` s) until nothing else uses the cores; the idle cores seen last."""
    deadline = time.time() + max_wait
    while True:
        idle = idle_cores()
        if idle is None or idle >= (os.cpu_count() or 1) - 0.3 or time.time() > deadline:
            return idle
        time.sleep(2.0)


def disturbed(row: dict, max_foreign: float) -> bool:
    return row.get("foreign_cores") is not None and row["foreign_cores"] > max_foreign


def run_one(name: str, overrides: list[str], run_dir: Path, timeout: float, batch_size: int,
            max_wait: float = 0.0) -> dict:
    """One torchrun job via fr_dist.launch; its measurements (or the error).

    `foreign_cores`: CPU used by processes outside this benchmark during the job
    (machine busy time from /proc/stat, hypervisor steal included, minus the job's
    own CPU time), per second of the job: 0 on a quiet machine.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    idle = wait_idle(max_wait)
    if idle is not None and idle < (os.cpu_count() or 1) - 0.3:
        print(f"[bench] warning: only {idle} of {os.cpu_count()} cores idle before {name}: "
              f"something else is running, timings will suffer", file=sys.stderr, flush=True)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fr_dist.launch", *overrides, f"hydra.run.dir={run_dir}"]
    before = _cpu_seconds()
    started = time.perf_counter()
    with open(run_dir / "bench.log", "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - started
    after = _cpu_seconds()
    foreign = None
    if before and after:
        foreign = round(max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall, 3)
    row = {"name": name, "rc": rc, "job_wall_s": round(wall, 2), "dir": str(run_dir),
           "idle_cores_before": idle, "foreign_cores": foreign}
    summary = run_dir / "summary.json"
    if rc != 0 or not summary.exists():
        tail = (run_dir / "bench.log").read_text().splitlines()[-5:]
        row["error"] = " | ".join(tail)
        print(f"[bench] {name}: failed (rc {rc}): {row['error']}", file=sys.stderr, flush=True)
        return row
    s = json.loads(summary.read_text())
    row.update(samples_per_s=s["samples_per_s"], status=s["status"], partition=s.get("partition"),
               busy_frac=[st.get("busy_frac") for st in s.get("stages", [])],
               peak_mem_bytes=[st.get("peak_mem_bytes") for st in s.get("stages", [])],
               steady_samples_per_s=steady_rate(run_dir / "metrics.jsonl", batch_size))
    return row


def steady_rate(metrics: Path, batch_size: int):
    """Samples/s from the logged rows after the first one (its window holds the first iterations)."""
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    rows = [r for r in rows if "loss" in r and "time_s" in r]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    dt = last["time_s"] - first["time_s"]
    if dt <= 0:
        return None
    return round((last["step"] - first["step"]) * batch_size / dt, 2)


def run_config(a, name: str, overrides: list[str], run_dir: Path) -> dict:
    """One configuration's run of a round, rerun (`a.retries` times) while other processes disturb it.

    `run_dir` gets the attempt's number appended. A run that stays disturbed keeps its
    throughput as `measured_samples_per_s`, out of the medians.
    """
    for attempt in range(1 + a.retries):
        row = run_one(name, overrides, Path(f"{run_dir}_{attempt}"), a.timeout, a.batch_size, a.wait_idle)
        if not disturbed(row, a.max_foreign):
            break
        print(f"[bench] {name}: other processes used {row['foreign_cores']} cores during the run; "
              f"{'running it again' if attempt < a.retries else 'left out of the medians'}",
              file=sys.stderr, flush=True)
    if disturbed(row, a.max_foreign):
        row["disturbed"] = True
        row["measured_samples_per_s"] = row.pop("samples_per_s", None)
    return row


def run_rounds(a, names, plan, labels, workdir: Path):
    """`a.repeats` rounds of every configuration in `names`: (rounds, predictions per round, profiles per round).

    Each round starts on idle cores, optionally with a fresh profile (the machine's speed
    drifts by several % over minutes, so each round is predicted from its own) and a plain
    PyTorch loop (the baseline of fr_dist's overhead).
    """
    M = a.microbatches
    base = common_overrides(a)
    rounds, round_predicted, round_profiles = [], [], []
    for rep in range(a.repeats):
        wait_idle(a.wait_idle)
        if a.profile_every_round:
            rp, rp_mb = (profile(a.model, a.shape, bs, a.warmup, a.iters) for bs in (a.batch_size, a.batch_size // M))
            round_predicted.append(predictions(names, rp.costs, rp_mb.costs, plan.links, plan.fr_cuts,
                                               plan.pipe_cuts, M))
            round_profiles.append({"costs": rp.costs, "mb_costs": rp_mb.costs})
        else:
            round_predicted.append(plan.predicted)
        rnd = {}
        if a.plain_loop:
            secs = plain_loop(a.model, a.shape, a.batch_size)
            rnd["plain"] = {"name": "plain", "samples_per_s": round(a.batch_size / secs, 2), "busy_frac": [],
                            "peak_mem_bytes": []}
            round_predicted[-1]["plain"] = round_predicted[-1].get("bp1")
            print(f"[bench] round {rep + 1}/{a.repeats} plain PyTorch loop: {rnd['plain']['samples_per_s']} samples/s",
                  flush=True)
        for name in names:
            overrides = base + [o.format(**plan.fill) for o in BY_NAME[name][2]]
            row = rnd[name] = run_config(a, name, overrides, workdir / f"{rep}_{name}")
            if row.get("samples_per_s"):
                print(f"[bench] round {rep + 1}/{a.repeats} {labels[name]}: {row['samples_per_s']} samples/s "
                      f"(busy {row['busy_frac']}, job {row['job_wall_s']} s)", flush=True)
        rounds.append(rnd)
    return rounds, round_predicted, round_profiles
