"""The benchmark's command line, ``python -m fr_dist.bench``: its flags and its steps in order."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fr_dist.tools.bench.configs import BY_NAME, CONFIGS
from fr_dist.tools.bench.profiling import burn, plan, profile
from fr_dist.tools.bench.report import fr_ratios, machine, report, summarise
from fr_dist.tools.bench.runs import run_rounds


def parse(argv):
    from fr_dist.tools import bench

    p = argparse.ArgumentParser(prog="python -m fr_dist.bench", description=bench.__doc__.split("\n")[0])
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
    p.add_argument("--frontier", action="store_true",
                   help="the frontier instead: throughput against peak activation memory of FR (replay chunks) "
                        "and every pipelining schedule, K = 2 (writes frontier.json and frontier.png)")
    p.add_argument("--frontier-m", default=None,
                   help="M of the frontier: micro-batches or replay chunks (default 1,2,4,8,16; quick 1,2)")
    p.add_argument("--frontier-algos", default="fr,gpipe,1f1b,interleaved1f1b,zb,zbv,dualpipev",
                   help="the algorithms on the frontier")
    p.add_argument("--burn", type=float, default=None, help=argparse.SUPPRESS)  # the contended profile's load
    a = p.parse_args(argv)
    if a.frontier:  # one run per point (no rounds), no contended profile
        a.no_contention = True
        a.steps = a.steps or (8 if a.quick else 24)
        a.out = "frontier.json" if a.out == "bench.json" else a.out
        a.frontier_m = a.frontier_m or ("1,2" if a.quick else "1,2,4,8,16")
        if a.quick:
            a.scaling_models = ""
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


def replica_rows(model: str, a, p, rows) -> list[dict]:
    """FR's predicted throughput with K stages x D replicas (simulate.predict_replicas), the all-reduce
    priced by the same loopback link model the profile uses."""
    from fr_dist.partition.profile import link_model
    from fr_dist.tools.bench.profiling import build
    from fr_dist.tools.simulate import predict_replicas

    link = link_model("cpu")
    block_bytes = [4 * sum(q.numel() for q in b.parameters()) for b in build(model, a.shape)]
    out = []
    for row in rows:
        K = row["K"]
        if K not in (1, 2, 4):
            continue
        cuts = [0, *row["fr_cuts"], len(block_bytes)]
        grad_bytes = [sum(block_bytes[i:j]) for i, j in zip(cuts, cuts[1:])]
        for D in (1, 2, 4):
            s = predict_replicas(p.costs, K, D, grad_bytes, link.latency_s, link.bytes_per_s, p.link_costs(), cuts)
            out.append({"K": K, "D": D, "s_per_global_batch": s, "samples_per_s": D * a.batch_size / s})
    return out


def scaling(a) -> dict:
    """Step 4: the simulator's FR speedup for K = 1..8 on each of `a.scaling_models`, from their profiles."""
    from fr_dist.tools.simulate import scaling_table

    out = {}
    for model in [m for m in a.scaling_models.split(",") if m]:
        print(f"[bench] profiling {model} for the predicted scaling", flush=True)
        p = profile(model, a.shape, a.batch_size, 1, 3)
        rows = scaling_table(p.costs, p.link_costs(), range(1, 9))
        out[model] = {"rows": rows, "costs": p.costs, "replicas": replica_rows(model, a, p, rows)}
    return out


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.burn is not None:
        burn(a.burn)
        return 0
    if a.frontier:
        from fr_dist.tools.bench import frontier

        return frontier.run(a)
    names = [n for n in a.configs.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"[bench] error: unknown configurations {unknown}: choose from {', '.join(BY_NAME)}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "args": {k: v for k, v in vars(a).items() if k != "burn"}}

    # 1. profile
    pl = plan(a, names)
    out["profile"] = pl.summary

    # 2. runs
    workdir = Path(a.workdir or datetime.now().strftime("outputs/bench/%Y-%m-%d_%H-%M-%S")).resolve()
    labels = {n: BY_NAME[n][1].format(**pl.fill) for n in names}
    rounds, round_predicted, round_profiles = run_rounds(a, names, pl, labels, workdir)
    if round_profiles:
        out["round_profiles"] = round_profiles
    out["rounds"] = rounds
    out["round_predicted"] = round_predicted

    # 3. the table
    base_name = "bp1" if "bp1" in names else names[0]
    if a.plain_loop:
        names, labels = ["plain", *names], dict(labels, plain="plain PyTorch loop, 1 thread (in-process)")
    rows = summarise(rounds, names, a.batch_size, round_predicted, base_name)
    out["table"] = rows
    ratios = out["ratios"] = fr_ratios(rounds, names)

    # 4. predicted scaling
    out["scaling"] = scaling(a)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    text = report(out, rows, labels, ratios, out["scaling"], a, base_name)
    print(text, flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"[bench] wrote {a.out}; run directories in {workdir}", flush=True)
    failed = [r for rnd in rounds for r in rnd.values() if r.get("error")]
    return 1 if failed else 0
