"""Throughput benchmark: FR against BP, GPipe and 1F1B on this machine, as ratios.

    python -m fr_dist.bench                 # defaults: ResNet-20, batch 128, 3x32x32 synthetic, CPU
    python -m fr_dist.bench --quick         # smoke test: few steps, one repeat
    python -m fr_dist.bench --out bench.json --repeats 5 --steps 60

What it does, in one process tree:
1. Profiles the model's blocks in this process (``fr_dist.partition.profile``, one thread, as
   each rank runs) at the batch size and at the micro-batch size, measures the link
   model, and picks FR's boundary with ``partition.profiled_cuts`` and the pipeline
   peers' with ``partition.pipeline_cuts`` (passed to the jobs as explicit cuts).
   Optionally (default on) it profiles again while a second process keeps the other
   core busy with the same kind of work: the per-rank cost when two ranks share the
   machine, which is what a 2-rank job really pays.
2. Runs every configuration (one torchrun job each, ``python -m fr_dist.launch``
   in a subprocess, its own run directory) `repeats` times, round-robin so that
   drift hits all alike, and reads ``samples_per_s`` (training only: start-up and
   evaluation excluded), ``busy_frac`` and ``peak_mem_bytes`` from ``summary.json``.
3. Prints a table of medians; ratios are taken within each round (one run of each
   configuration) and their median reported. Efficiency = the simulator's predicted
   ideal time (``fr_dist.tools.simulate`` with the profiled costs) / measured time.
4. Profiles deeper models (default ResNet-56 and ResNet-110, same batch and shape)
   and prints the simulator's predicted FR speedup over one-worker BP for K = 2..8.
Everything goes to ``bench.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# (name, label, overrides) -- {fr_cut} / {pipe_cut} are filled in from the profile
CONFIGS = [
    ("bp1", "BP 1 proc x 1 thread", ["algo=bp", "splits=1", "threads_per_rank=1"]),
    ("bp2", "BP 1 proc x 2 threads", ["algo=bp", "splits=1", "threads_per_rank=2"]),
    ("fr2", "FR K=2 (2 x 1 thread)", ["algo=fr", "splits=2", "threads_per_rank=1", "partition=[{fr_cut}]"]),
    ("gpipe2", "GPipe K=2 M={M}", ["algo=gpipe", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                   "partition=[{pipe_cut}]"]),
    ("1f1b2", "1F1B K=2 M={M}", ["algo=1f1b", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                 "partition=[{pipe_cut}]"]),
    ("gpipe2c", "GPipe K=2 M={M} ckpt", ["algo=gpipe", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                         "algo.checkpoint=true", "partition=[{pipe_cut}]"]),
    ("1f1b2c", "1F1B K=2 M={M} ckpt", ["algo=1f1b", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                       "algo.checkpoint=true", "partition=[{pipe_cut}]"]),
]
PRED = {"bp1": ("bp", 1, False), "bp2": None, "fr2": ("fr", 2, False), "gpipe2": ("gpipe", 2, False),
        "1f1b2": ("1f1b", 2, False), "gpipe2c": ("gpipe", 2, True), "1f1b2c": ("1f1b", 2, True)}


def common_overrides(a) -> list[str]:
    steps_per_epoch = 16
    return [f"model={a.model}", "data=synthetic", f"data.shape=[{','.join(map(str, a.shape))}]",
            f"data.train_size={steps_per_epoch * a.batch_size}", f"batch_size={a.batch_size}",
            f"max_steps={a.steps}", f"epochs={-(-a.steps // steps_per_epoch) + 1}", "eval_every=100000",
            "ckpt_every=0", "resume=null", "wandb.mode=disabled", "progress=false", f"log_every={a.log_every}",
            f"seed={a.seed}"]


# ---------------------------------------------------------------------------------------
# Profiling


def build(model: str, shape, classes: int = 10, seed: int = 0):
    import torch

    from fr_dist.models import build_blocks

    torch.manual_seed(seed)
    return build_blocks({"name": model}, tuple(shape), classes)


def profile(model: str, shape, batch_size: int, warmup: int, iters: int):
    """Profile of `model`'s blocks with one thread (as each rank of a K=2 job runs)."""
    import torch

    from fr_dist.partition.profile import profile_model

    torch.set_num_threads(1)
    return profile_model(build(model, shape), shape, batch_size, "cpu", warmup, iters)


def plain_loop(model: str, shape, batch_size: int, steps: int = 12, warmup: int = 3) -> float:
    """Mean s/iter of a plain PyTorch training loop (1 thread, same model, batch and SGD): no fr_dist at all."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(1)
    net = nn.Sequential(*build(model, shape))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *shape, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    with torch.random.fork_rng():
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
    return (time.perf_counter() - start) / steps


def burn(seconds: float) -> None:
    """Keep one core busy with ResNet-20 forward/backward (the other rank's load)."""
    import torch
    import torch.nn as nn

    torch.set_num_threads(1)
    net = nn.Sequential(*build("resnet20", (3, 32, 32)))
    x = torch.randn(128, 3, 32, 32)
    end = time.time() + seconds
    while time.time() < end:
        net(x).sum().backward()


def contended_profile(a):
    """Profile while a second process keeps the other core busy."""
    proc = subprocess.Popen([sys.executable, "-m", "fr_dist.bench", "--burn", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)  # its imports and first iterations
        return profile(a.model, a.shape, a.batch_size, a.warmup, a.iters)
    finally:
        proc.terminate()
        proc.wait()


# ---------------------------------------------------------------------------------------
# Runs


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


# ---------------------------------------------------------------------------------------
# Report


def predictions(names, costs, mb_costs, links, fr_cuts, pipe_cuts, M) -> dict:
    """Simulated s/iter of each configuration with these costs (bp2 has no model: 2 threads in one process)."""
    from fr_dist.tools.simulate import predict

    out = {}
    for name in names:
        spec = PRED.get(name)
        if spec:
            algo, K, ckpt = spec
            cuts = fr_cuts if algo == "fr" else pipe_cuts if K > 1 else None
            out[name] = predict(costs, K, links, algo, M=M, cuts=cuts, mb_costs=mb_costs, checkpoint=ckpt)
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(rounds: list[dict[str, dict]], names: list[str], batch_size: int, predicted,
              base: str = "bp1") -> list[dict]:
    """One row per configuration: medians over rounds and within-round ratios.

    `predicted`: {name: s/iter}, or one such dict per round (a profile taken just
    before that round's runs); efficiency is then the median over rounds of that
    round's prediction / its measurement, and `predicted_vs_base` the predicted
    speedup over `base` (median over rounds).
    """
    per_round = predicted if isinstance(predicted, list) else [predicted] * len(rounds)
    rows = []
    for name in names:
        runs = [r[name] for r in rounds if name in r and r[name].get("samples_per_s")]
        sps = median([r["samples_per_s"] for r in runs])
        ratio = median([r[name]["samples_per_s"] / r[base]["samples_per_s"] for r in rounds
                        if r.get(name, {}).get("samples_per_s") and r.get(base, {}).get("samples_per_s")])
        s_iter = batch_size / sps if sps else None
        effs, pred_ratio = [], []
        for r, pr in zip(rounds, per_round):
            if pr.get(name) and r.get(name, {}).get("samples_per_s"):
                effs.append(pr[name] / (batch_size / r[name]["samples_per_s"]))
            if pr.get(name) and pr.get(base):
                pred_ratio.append(pr[base] / pr[name])
        pred = median([pr.get(name) for pr in per_round])
        row = {"name": name, "runs": len(runs), "samples_per_s": sps,
               "samples_per_s_all": [r["samples_per_s"] for r in runs],
               "steady_samples_per_s": median([r.get("steady_samples_per_s") for r in runs]),
               "s_per_iter": s_iter, f"vs_{base}": ratio, "predicted_s_per_iter": pred,
               f"predicted_vs_{base}": median(pred_ratio), "efficiency": median(effs),
               "busy_frac": [median(list(x)) for x in zip(*[r["busy_frac"] for r in runs])] if runs else None,
               "peak_mem_bytes": runs[0]["peak_mem_bytes"] if runs else None,
               "partition": runs[0].get("partition") if runs else None}
        rows.append(row)
    return rows


def pair_ratio(rounds, a: str, b) -> float | None:
    """Median over rounds of throughput(a) / throughput(best of b)."""
    b = [b] if isinstance(b, str) else list(b)
    out = []
    for r in rounds:
        if not r.get(a, {}).get("samples_per_s"):
            continue
        others = [r[x]["samples_per_s"] for x in b if r.get(x, {}).get("samples_per_s")]
        if others:
            out.append(r[a]["samples_per_s"] / max(others))
    return median(out)


def _f(v, fmt):
    return "" if v is None else format(v, fmt)


def format_table(rows: list[dict], labels: dict[str, str], base: str = "bp1") -> str:
    lines = ["| configuration | runs | samples/s | s/iter | vs BP 1 thread | predicted vs BP 1 thread "
             "| predicted s/iter | predicted/measured | busy_frac per stage | peak activations MB per stage |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        busy = "/".join(_f(b, ".2f") for b in r["busy_frac"] or [])
        mem = "/".join(_f(m / 2**20, ".0f") if m is not None else "" for m in r["peak_mem_bytes"] or [])
        vs, pvs = r.get(f"vs_{base}"), r.get(f"predicted_vs_{base}")
        lines.append(f"| {labels.get(r['name'], r['name'])} | {r.get('runs', '')} | {_f(r['samples_per_s'], '.1f')} | "
                     f"{_f(r['s_per_iter'], '.3f')} | {_f(vs, '.2f')}x | {_f(pvs, '.2f')}{'x' if pvs else ''} | "
                     f"{_f(r['predicted_s_per_iter'], '.3f')} | {_f(r['efficiency'], '.0%')} | {busy} | {mem} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m fr_dist.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 8 steps, 1 repeat, no deep-model profile")
    p.add_argument("--out", default="bench.json", help="where the results go (JSON)")
    p.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 3; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 40; quick 8)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--microbatches", type=int, default=4, help="M of GPipe / 1F1B")
    p.add_argument("--configs", default=",".join(c[0] for c in CONFIGS),
                   help="comma list of " + ", ".join(f"{c[0]} ({c[1]})" for c in CONFIGS))
    p.add_argument("--scaling-models", default="resnet56,resnet110",
                   help="models for the predicted scaling ('' = none)")
    p.add_argument("--no-contention", action="store_true", help="skip the profile with the other core busy")
    p.add_argument("--wait-idle", type=float, default=300,
                   help="before each job wait up to this many seconds for other processes to leave the cores idle")
    p.add_argument("--max-foreign", type=float, default=0.1,
                   help="a run during which other processes used more cores than this is disturbed: rerun, "
                        "and left out of the medians if it stays so")
    p.add_argument("--retries", type=int, default=2, help="reruns of a disturbed run")
    p.add_argument("--plain-loop", type=int, default=1,
                   help="1: time a plain PyTorch loop (no fr_dist) each round, the baseline of fr_dist's overhead")
    p.add_argument("--profile-every-round", type=int, default=1,
                   help="1: profile again before every round and predict that round from it (default); 0: once")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--workdir", default=None, help="run directories (default outputs/bench/DATE_TIME)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per job before it counts as failed")
    p.add_argument("--burn", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.repeats = a.repeats or 1
        a.steps = a.steps or 8
        a.scaling_models = ""
        a.no_contention = True
        a.profile_every_round = 0
        a.plain_loop = 0
        a.wait_idle, a.retries = 0, 0
        a.warmup, a.iters = 1, 2
    a.repeats = a.repeats or 3
    a.steps = a.steps or 40
    return a


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.burn is not None:
        burn(a.burn)
        return 0
    from fr_dist.partition import pipeline_cuts, predicted_stage_costs, profiled_cuts
    from fr_dist.partition.profile import link_model
    from fr_dist.tools.simulate import predict, scaling_table

    names = [n for n in a.configs.split(",") if n]
    known = {c[0]: c for c in CONFIGS}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"[bench] error: unknown configurations {unknown}: choose from {', '.join(known)}", file=sys.stderr)
        return 1
    M = a.microbatches
    started = time.perf_counter()
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "args": {k: v for k, v in vars(a).items() if k != "burn"}}

    # 1. profile
    print(f"[bench] profiling {a.model} at batch {a.batch_size} and {a.batch_size // M} (1 thread)", flush=True)
    prof = profile(a.model, a.shape, a.batch_size, a.warmup, a.iters)
    prof_mb = profile(a.model, a.shape, a.batch_size // M, a.warmup, a.iters)
    costs, mb_costs, links = prof.costs, prof_mb.costs, prof.link_costs()
    fr_cuts = profiled_cuts(costs, 2, links)
    pipe_cuts = pipeline_cuts(costs, 2, links)
    predicted = predictions(names, costs, mb_costs, links, fr_cuts, pipe_cuts, M)
    bp1 = sum(f + b for f, b in costs)
    all_cuts = {c: predict(costs, 2, links, "fr", cuts=[0, c, len(costs)]) for c in range(1, len(costs))}
    # What a finer partition could give: every block split into two equal halves, a cut
    # inside a block carrying the features and the residual (twice the link).
    half = [(f / 2, b / 2) for f, b in costs for _ in range(2)]
    half_links = [0.0] * (2 * len(costs) + 1)
    for i in range(len(costs)):
        half_links[2 * i] = links[i]
        half_links[2 * i + 1] = 2 * links[i + 1] if i + 1 < len(costs) else 2 * links[i]
    half_links[-1] = 0.0
    half_cuts = profiled_cuts(half, 2, half_links)
    half_s = predict(half, 2, half_links, "fr", cuts=half_cuts)
    out["profile"] = {"half_block_fr2_s": half_s, "half_block_cut": half_cuts[1] / 2, "costs": costs,
                      "mb_costs": mb_costs, "out_shapes": prof.out_shapes,
                      "link_model": vars(link_model("cpu")), "link_costs": links,
                      "fr_cuts": fr_cuts, "fr_stage_costs": predicted_stage_costs(costs, fr_cuts, links),
                      "pipe_cuts": pipe_cuts, "bp1_s": bp1, "fr2_by_cut": all_cuts}
    print(f"[bench] BP one worker {bp1:.3f} s/batch; FR K=2 cut {fr_cuts[1]}: stage costs "
          f"{[round(c, 3) for c in predicted_stage_costs(costs, fr_cuts, links)]} s, predicted "
          f"{predicted.get('fr2', all_cuts[fr_cuts[1]]):.3f} s/batch ({bp1 / all_cuts[fr_cuts[1]]:.2f}x BP); "
          f"GPipe/1F1B cut {pipe_cuts[1]}", flush=True)
    if not a.no_contention:
        print("[bench] profiling again with the other core busy", flush=True)
        cprof = contended_profile(a)
        c_costs = cprof.costs
        out["profile"]["contended_costs"] = c_costs
        out["profile"]["contended_fr2_s"] = predict(c_costs, 2, links, "fr", cuts=fr_cuts)
        out["profile"]["contended_slowdown"] = sum(f + b for f, b in c_costs) / bp1
        print(f"[bench] with both cores busy a block costs {out['profile']['contended_slowdown']:.2f}x; "
              f"FR K=2 then predicted {out['profile']['contended_fr2_s']:.3f} s/batch", flush=True)

    # 2. runs
    workdir = Path(a.workdir or datetime.now().strftime("outputs/bench/%Y-%m-%d_%H-%M-%S")).resolve()
    fill = {"fr_cut": fr_cuts[1], "pipe_cut": pipe_cuts[1], "M": M}
    labels = {n: known[n][1].format(**fill) for n in names}
    base = common_overrides(a)
    rounds: list[dict] = []
    round_predicted: list[dict] = []
    for rep in range(a.repeats):
        wait_idle(a.wait_idle)
        if a.profile_every_round:
            # the machine's speed drifts by several % over minutes: predict each round from a fresh profile
            rp, rp_mb = (profile(a.model, a.shape, bs, a.warmup, a.iters) for bs in (a.batch_size, a.batch_size // M))
            round_predicted.append(predictions(names, rp.costs, rp_mb.costs, links, fr_cuts, pipe_cuts, M))
            out.setdefault("round_profiles", []).append({"costs": rp.costs, "mb_costs": rp_mb.costs})
        else:
            round_predicted.append(predicted)
        rnd = {}
        if a.plain_loop:
            secs = plain_loop(a.model, a.shape, a.batch_size)
            rnd["plain"] = {"name": "plain", "samples_per_s": round(a.batch_size / secs, 2), "busy_frac": [],
                            "peak_mem_bytes": []}
            round_predicted[-1]["plain"] = round_predicted[-1].get("bp1")
            print(f"[bench] round {rep + 1}/{a.repeats} plain PyTorch loop: {rnd['plain']['samples_per_s']} samples/s",
                  flush=True)
        for name in names:
            overrides = base + [o.format(**fill) for o in known[name][2]]
            for attempt in range(1 + a.retries):
                row = run_one(name, overrides, workdir / f"{rep}_{name}_{attempt}", a.timeout, a.batch_size,
                              a.wait_idle)
                if not disturbed(row, a.max_foreign):
                    break
                print(f"[bench] {name}: other processes used {row['foreign_cores']} cores during the run; "
                      f"{'running it again' if attempt < a.retries else 'left out of the medians'}",
                      file=sys.stderr, flush=True)
            if disturbed(row, a.max_foreign):
                row["disturbed"] = True
                row["measured_samples_per_s"] = row.pop("samples_per_s", None)
            rnd[name] = row
            if row.get("samples_per_s"):
                print(f"[bench] round {rep + 1}/{a.repeats} {labels[name]}: {row['samples_per_s']} samples/s "
                      f"(busy {row['busy_frac']}, job {row['job_wall_s']} s)", flush=True)
        rounds.append(rnd)
    out["rounds"] = rounds
    out["round_predicted"] = round_predicted
    base_name = "bp1" if "bp1" in names else names[0]
    if a.plain_loop:
        names, labels = ["plain", *names], dict(labels, plain="plain PyTorch loop, 1 thread (in-process)")
    rows = summarise(rounds, names, a.batch_size, round_predicted, base_name)
    out["table"] = rows
    ratios = {}
    for other, label in (("bp1", "FR K=2 / BP 1 thread"), ("bp2", "FR K=2 / BP 2 threads"),
                         ("gpipe2", "FR K=2 / GPipe"), ("1f1b2", "FR K=2 / 1F1B"),
                         (("gpipe2", "1f1b2"), "FR K=2 / faster of GPipe, 1F1B"),
                         (("gpipe2c", "1f1b2c"), "FR K=2 / faster of GPipe, 1F1B with checkpointing")):
        if "fr2" in names and all(o in names for o in ([other] if isinstance(other, str) else other)):
            ratios[label] = pair_ratio(rounds, "fr2", other)
    out["ratios"] = ratios

    # 3. predicted scaling
    scaling = {}
    for model in [m for m in a.scaling_models.split(",") if m]:
        print(f"[bench] profiling {model} for the predicted scaling", flush=True)
        p = profile(model, a.shape, a.batch_size, 1, 3)
        scaling[model] = {"rows": scaling_table(p.costs, p.link_costs(), range(1, 9)), "costs": p.costs}
    out["scaling"] = scaling
    out["wall_s"] = round(time.perf_counter() - started, 1)
    text = report(out, rows, labels, ratios, scaling, a, base_name)
    print(text, flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"[bench] wrote {a.out}; run directories in {workdir}", flush=True)
    failed = [r for rnd in rounds for r in rnd.values() if r.get("error")]
    return 1 if failed else 0


def report(out, rows, labels, ratios, scaling, a, base_name="bp1") -> str:
    """The printed report: the table, the ratios, the profile and the predicted scaling."""
    from fr_dist.tools.simulate import format_scaling

    p = out["profile"]
    lines = [f"## fr_dist benchmark, {out['date']}",
             f"{out['machine']}; {a.model}, batch {a.batch_size}, synthetic {'x'.join(map(str, a.shape))}, "
             f"{a.steps} steps per run, median of {a.repeats} run(s); ratios within a round, median over rounds.",
             "", format_table(rows, labels, base_name)]
    if ratios:
        lines.append("Ratios (throughput, measured in the same round): " + "; ".join(
            f"{k} {_f(v, '.2f')}x" for k, v in ratios.items()))
    fr = next((r for r in rows if r["name"] == "fr2"), None)
    if fr and fr.get(f"vs_{base_name}") and fr.get(f"predicted_vs_{base_name}"):
        vs, pvs = fr[f"vs_{base_name}"], fr[f"predicted_vs_{base_name}"]
        lines.append(f"FR K=2: {vs:.2f}x BP 1 thread measured, {pvs:.2f}x predicted ({vs / pvs:.0%} of the predicted "
                     f"speedup); time efficiency (predicted / measured s/iter, per round) "
                     f"{_f(fr['efficiency'], '.0%')}.")
    fr_cut = p["fr_cuts"][1]
    lines.append(
        f"Profile (1 thread, idle machine): BP one worker {p['bp1_s']:.3f} s/batch; FR K=2 cut {fr_cut}, stage costs "
        f"{'/'.join(f'{c:.3f}' for c in p['fr_stage_costs'])} s, predicted "
        f"{p['fr2_by_cut'][fr_cut]:.3f} s/batch = {p['bp1_s'] / p['fr2_by_cut'][fr_cut]:.2f}x BP; "
        f"link {p['link_costs'][fr_cut] * 1e3:.1f} ms at the cut. A cut inside a residual block (modelled: "
        f"halves of equal cost, features + residual sent) would allow {p['half_block_fr2_s']:.3f} s/batch = "
        f"{p['bp1_s'] / p['half_block_fr2_s']:.2f}x BP (cut at block {p['half_block_cut']:g}).")
    if "contended_slowdown" in p:
        lines.append(f"With the other core busy a block costs {p['contended_slowdown']:.2f}x as much; FR K=2 predicted "
                     f"from that profile: {p['contended_fr2_s']:.3f} s/batch.")
    for model, s in scaling.items():
        lines += ["", format_scaling(s["rows"], f"Predicted scaling, {model} (simulator, profiled costs, best "
                                                f"partitions; BP = one worker):")]
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores {cpu}, torch {torch.__version__}, Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
