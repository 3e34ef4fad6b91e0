"""Step 1 of the benchmark: profile the model, choose the cuts, predict every configuration."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from fr_dist.tools.bench.configs import PRED


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
    """Profile while a second process (``python -m fr_dist.bench --burn``) keeps the other core busy."""
    proc = subprocess.Popen([sys.executable, "-m", "fr_dist.bench", "--burn", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)  # its imports and first iterations
        return profile(a.model, a.shape, a.batch_size, a.warmup, a.iters)
    finally:
        proc.terminate()
        proc.wait()


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


@dataclass
class Plan:
    """What the runs need from the profile, and the profile's section of bench.json (`summary`)."""

    costs: list
    mb_costs: list
    links: list
    fr_cuts: list
    pipe_cuts: list
    predicted: dict
    fill: dict  # what the configurations' overrides and labels leave open: {fr_cut}, {pipe_cut}, {M}
    summary: dict


def half_block_fr2(costs, links):
    """What a finer partition could give: every block split into two equal halves, a cut
    inside a block carrying the features and the residual (twice the link). (s/iter, cuts)."""
    from fr_dist.partition import profiled_cuts
    from fr_dist.tools.simulate import predict

    half = [(f / 2, b / 2) for f, b in costs for _ in range(2)]
    half_links = [0.0] * (2 * len(costs) + 1)
    for i in range(len(costs)):
        half_links[2 * i] = links[i]
        half_links[2 * i + 1] = 2 * links[i + 1] if i + 1 < len(costs) else 2 * links[i]
    half_links[-1] = 0.0
    half_cuts = profiled_cuts(half, 2, half_links)
    return predict(half, 2, half_links, "fr", cuts=half_cuts), half_cuts


def plan(a, names) -> Plan:
    """Profile `a.model` at the batch and micro-batch sizes, choose the cuts, predict `names` (prints as it goes)."""
    from fr_dist.partition import pipeline_cuts, predicted_stage_costs, profiled_cuts
    from fr_dist.partition.profile import link_model
    from fr_dist.tools.simulate import predict

    M = a.microbatches
    print(f"[bench] profiling {a.model} at batch {a.batch_size} and {a.batch_size // M} (1 thread)", flush=True)
    prof = profile(a.model, a.shape, a.batch_size, a.warmup, a.iters)
    prof_mb = profile(a.model, a.shape, a.batch_size // M, a.warmup, a.iters)
    costs, mb_costs, links = prof.costs, prof_mb.costs, prof.link_costs()
    fr_cuts = profiled_cuts(costs, 2, links)
    pipe_cuts = pipeline_cuts(costs, 2, links)
    predicted = predictions(names, costs, mb_costs, links, fr_cuts, pipe_cuts, M)
    bp1 = sum(f + b for f, b in costs)
    all_cuts = {c: predict(costs, 2, links, "fr", cuts=[0, c, len(costs)]) for c in range(1, len(costs))}
    half_s, half_cuts = half_block_fr2(costs, links)
    summary = {"half_block_fr2_s": half_s, "half_block_cut": half_cuts[1] / 2, "costs": costs,
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
        c_costs = contended_profile(a).costs
        summary["contended_costs"] = c_costs
        summary["contended_fr2_s"] = predict(c_costs, 2, links, "fr", cuts=fr_cuts)
        summary["contended_slowdown"] = sum(f + b for f, b in c_costs) / bp1
        print(f"[bench] with both cores busy a block costs {summary['contended_slowdown']:.2f}x; "
              f"FR K=2 then predicted {summary['contended_fr2_s']:.3f} s/batch", flush=True)
    fill = {"fr_cut": fr_cuts[1], "pipe_cut": pipe_cuts[1], "M": M}
    return Plan(costs, mb_costs, links, fr_cuts, pipe_cuts, predicted, fill, summary)
