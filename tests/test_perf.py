"""Performance tooling: profiled partition (DP), timeline simulator, profiler, benchmark report."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn as nn

from fr_dist import FRError
from fr_dist.partition import (fr_stage_cost, pipeline_cuts, predicted_stage_costs, profiled_cuts, stage_cuts)
from fr_dist.partition import profile
from fr_dist.partition.profile import LinkModel, fit_link, link_model, link_seconds, profile_model
from fr_dist.tools.simulate import predict, scaling_table, simulate


# ---------------------------------------------------------------------------------------
# Partition by cost


def brute_force(n, K, cost):
    """Smallest max stage cost over all contiguous splits."""
    best = float("inf")
    for inner in itertools.combinations(range(1, n), K - 1):
        cuts = [0, *inner, n]
        best = min(best, max(cost(a, b, b == n) for a, b in zip(cuts, cuts[1:])))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_dp_partition_equals_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    costs = [(rng.uniform(0.01, 1), rng.uniform(0.01, 2)) for _ in range(n)]
    link = rng.uniform(0, 0.3) if seed % 2 else [rng.uniform(0, 0.3) for _ in range(n + 1)]
    for K in range(1, min(4, n) + 1):
        cuts = profiled_cuts(costs, K, link)
        assert cuts[0] == 0 and cuts[-1] == n and len(cuts) == K + 1
        assert all(a < b for a, b in zip(cuts, cuts[1:]))
        got = max(predicted_stage_costs(costs, cuts, link))
        want = brute_force(n, K, lambda a, b, last: fr_stage_cost(costs, a, b, link, last))
        assert got == pytest.approx(want, rel=1e-12)
        pc = pipeline_cuts(costs, K, link)
        from fr_dist.partition.cuts import _link_at

        def pipe_cost(a, b, last):
            return sum(f + bb for f, bb in costs[a:b]) + _link_at(link, a, n) + _link_at(link, b, n)

        got = max(pipe_cost(a, b, b == n) for a, b in zip(pc, pc[1:]))
        assert got == pytest.approx(brute_force(n, K, pipe_cost), rel=1e-12)


def test_fr_cost_model_by_hand():
    costs = [(1.0, 2.0), (1.0, 2.0), (2.0, 4.0)]
    # stage 0 = blocks 0..1: 2F + B = 2*2 + 4 = 8, plus the link at cut 2; last = 2 + 4 = 6 plus that link
    assert predicted_stage_costs(costs, [0, 2, 3], 0.5) == [8.5, 6.5]
    assert predicted_stage_costs(costs, [0, 1, 2, 3], 0.5) == [4.5, 5.0, 6.5]
    assert profiled_cuts(costs, 2, 0.5) == [0, 2, 3]
    assert profiled_cuts(costs, 1) == [0, 3]


def test_profiled_partition_errors_and_stage_cuts():
    costs = [(1.0, 2.0)] * 3
    with pytest.raises(FRError, match=r"splits=4 is larger than the model's 3 blocks"):
        profiled_cuts(costs, 4)
    with pytest.raises(FRError, match="splits=4 is larger"):
        stage_cuts(3, 4, "profiled", costs=costs)
    with pytest.raises(FRError, match="partition=profiled is not available"):
        stage_cuts(3, 2, "profiled")  # without costs
    assert stage_cuts(3, 2, "profiled", costs=[(1.0, 1.0), (1.0, 1.0), (5.0, 5.0)]) == [0, 2, 3]


# ---------------------------------------------------------------------------------------
# Simulator


def test_bp_is_the_sum_and_model_parallel_adds_links():
    costs = [(1.0, 2.0), (0.5, 1.0), (2.0, 3.0), (1.0, 1.0)]
    assert predict(costs, 1, 0.3, "bp") == pytest.approx(11.5)
    assert predict(costs, 2, 0.3, "bp", cuts=[0, 2, 4]) == pytest.approx(11.5 + 2 * 0.3)
    assert predict(costs, 4, 0.3, "bp") == pytest.approx(11.5 + 6 * 0.3)
    for algo in ("fr", "gpipe", "1f1b"):  # one stage: plain backprop
        assert predict(costs, 1, 0.3, algo) == pytest.approx(11.5)


def test_fr_equal_costs_period_is_max_stage_cost_plus_links():
    # Four equal blocks (f=1, b=2) on K=2 at cut 2: stage 0 = 2*2 + 4 = 8, stage 1 = 2 + 4 = 6.
    assert predict([(1.0, 2.0)] * 4, 2, 0.0, "fr", cuts=[0, 2, 4]) == pytest.approx(8.0)
    # Balanced stages (both cost 3): period = 3 + L.
    assert predict([(1.0, 1.0), (1.0, 2.0)], 2, 0.25, "fr") == pytest.approx(3.25)
    # K = 4, equal stages of one block each under the FR model with free links: max stage cost.
    costs = [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.5, 1.5)]
    assert predict(costs, 4, 0.0, "fr", cuts=[0, 1, 2, 3, 4]) == pytest.approx(3.0)


def test_fr_two_stage_timeline_by_hand():
    # Stage 0: f0 = 1, b0 = 2 (iteration = F + replay = 1 + 3 = 4); stage 1: f1 = b1 = 1 (loss: 2); link 0.5.
    # stage 0: F0 [0,1] x0 arrives 1.5; F1 [1,2] (x1 arrives 2.5); R0 waits for g0:
    # stage 1: FB0 [1.5,3.5], g0 arrives 4.0 -> R0 [4,7]; F2 [7,8]; FB1 [3.5,5.5], g1 at 6.0 -> R1 [8,11];
    # F3 [11,12], FB2 [8.5,10.5] (x2 sent at 8), g2 at 11 -> R2 [12,15]: from here every 4 s.
    r = simulate([(1.0, 2.0), (1.0, 1.0)], 2, 0.5, "fr", cuts=[0, 1, 2], T=8)
    assert r.marks[0][:4] == pytest.approx([1.0, 7.0, 11.0, 15.0])
    assert r.marks[1][:4] == pytest.approx([3.5, 5.5, 10.5, 14.5])
    assert r.period == pytest.approx(4.0)
    # Both stages cost 3, link 0.25: the link is hidden every other iteration.
    # stage 0: F0 [0,1], F1 [1,2], R0 [4.5,6.5] (g0 at 4.5 after FB0 [1.25,4.25]), F2 [6.5,7.5],
    # R1 [7.5,9.5] (FB1 [4.25,7.25]: x1 was waiting), F3, R2 [11,13] (FB2 [7.75,10.75]), F4, R3 [14,16]:
    # iterations alternate 3.5 and 3 s, period (C0 + C1 + 2L) / 2 = 3.25.
    r = simulate([(1.0, 1.0), (1.0, 2.0)], 2, 0.25, "fr", cuts=[0, 1, 2], T=8)
    assert r.marks[0][:5] == pytest.approx([1.0, 6.5, 9.5, 13.0, 16.0])
    assert r.period == pytest.approx(3.25)


@pytest.mark.parametrize("seed", range(30))
def test_fr_simulation_between_compute_bound_and_cost_model(seed):
    rng = random.Random(100 + seed)
    n = rng.randint(1, 8)
    K = rng.randint(1, min(5, n))
    costs = [(rng.uniform(0.1, 1), rng.uniform(0.1, 2)) for _ in range(n)]
    link = [rng.uniform(0, 0.4) for _ in range(n + 1)]
    cuts = profiled_cuts(costs, K, link)
    compute = max(predicted_stage_costs(costs, cuts, 0.0))
    assert predict(costs, K, 0.0, "fr", cuts=cuts) == pytest.approx(compute)
    assert compute - 1e-9 <= predict(costs, K, link, "fr", cuts=cuts) <= max(
        predicted_stage_costs(costs, cuts, link)) + 1e-9
    if K == 2:  # exact: max(C0, C1, (C0 + C1 + 2L) / 2)
        c0, c1 = predicted_stage_costs(costs, cuts, 0.0)
        L = link[cuts[1]]
        assert predict(costs, 2, link, "fr", cuts=cuts) == pytest.approx(max(c0, c1, (c0 + c1 + 2 * L) / 2))


def test_gpipe_and_1f1b_by_hand():
    # Two equal stages of f = 2, b = 4 per batch, M = 2: a micro-batch costs 1 + 2 per stage.
    # GPipe: F F on stage 0 [0,2], stage 1 [1,3]; stage 1 B B [3,7]; stage 0 B B [5,9]: 9 = (M+K-1)(f+b)/M.
    costs = [(2.0, 4.0), (2.0, 4.0)]
    assert predict(costs, 2, 0.0, "gpipe", M=2) == pytest.approx(9.0)
    assert predict(costs, 2, 0.0, "1f1b", M=2) == pytest.approx(9.0)
    # Large M approaches the compute bound f + b of a stage; checkpointing adds one forward.
    assert predict(costs, 2, 0.0, "gpipe", M=32) == pytest.approx(6.0 * 33 / 32)
    assert predict(costs, 2, 0.0, "gpipe", M=2, checkpoint=True) == pytest.approx(3 * 4.0)
    # Links (0.5 s for the batch, 0.25 s for a micro-batch): the first micro-batch's features
    # and the first gradient cross on the critical path: 9 + 2 * 0.25.
    assert predict(costs, 2, 0.5, "gpipe", M=2) == pytest.approx(9.5)


def test_scaling_table_rows():
    costs = [(1.0, 2.0)] * 12
    rows = scaling_table(costs, 0.0, range(1, 5))
    assert [r["K"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["fr_speedup"] == pytest.approx(1.0)
    # Equal blocks, free links, K = 2: cut c gives stage 0 c * (2f + b) = 4c and the last stage
    # (12 - c) * 3; the best is c = 5 (20 and 21): period 21, speedup 36/21.
    assert rows[1]["fr_s"] == pytest.approx(21.0)
    assert rows[1]["fr_speedup"] == pytest.approx(36 / 21)
    assert all(r["fr_speedup"] <= r["K"] for r in rows)


# ---------------------------------------------------------------------------------------
# Profiler


def _net():
    torch.manual_seed(0)
    return [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))]


def fixed_link(monkeypatch, latency=1e-4, bandwidth=1e9) -> list:
    """Replace the measured link model by `latency + bytes / bandwidth`; the devices asked for."""
    asked = []
    monkeypatch.setattr(profile, "link_model", lambda device="cpu": asked.append(device) or
                        LinkModel(latency, bandwidth, "fixed"))
    return asked


def test_profile_positive_and_leaves_state_untouched(monkeypatch):
    blocks = _net()
    blocks[1].eval()  # a mode of its own must survive
    state = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    grads_before = [p.grad for b in blocks for p in b.parameters()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    costs = profile_model(blocks, (3, 8, 8), 4, "cpu", warmup=1, iters=2).costs
    assert len(costs) == 3 and all(f > 0 and b > 0 for f, b in costs)
    assert torch.equal(torch.get_rng_state(), rng)
    for b, saved in zip(blocks, state):
        for k, v in b.state_dict().items():
            assert torch.equal(v, saved[k]), k  # BatchNorm statistics and batch counters included
    assert all(p.grad is None for b in blocks for p in b.parameters()) and all(g is None for g in grads_before)
    assert blocks[0].training and not blocks[1].training and blocks[2].training
    prof = profile_model(blocks, (3, 8, 8), 4, "cpu", warmup=0, iters=1)
    assert prof.out_shapes == [(4, 8, 8, 8), (4, 8, 8, 8), (4, 10)]
    fixed_link(monkeypatch, 1e-4, 1e9)
    # cuts 1 and 2 carry a 4x8x8x8 float32 tensor, 8192 bytes: 1e-4 + 8192 / 1e9 s; none at 0 and 3
    assert prof.link_costs() == pytest.approx([0.0, 1.08192e-4, 1.08192e-4, 0.0], rel=1e-12, abs=0)


def test_link_seconds_counts_the_bytes(monkeypatch):
    asked = fixed_link(monkeypatch, 1e-4, 1e9)
    assert link_seconds((1,), torch.float32) == pytest.approx(1.00004e-4, rel=1e-12)  # 4 bytes
    assert link_seconds((128, 16, 32, 32), torch.float32) == pytest.approx(8.488608e-3, rel=1e-12)  # 8 MiB
    assert link_seconds((100,), torch.float64) == pytest.approx(1.008e-4, rel=1e-12)
    assert link_seconds((100,), torch.float16) == pytest.approx(1.002e-4, rel=1e-12)
    assert link_seconds((2, 3), torch.int64, device=torch.device("cpu")) == pytest.approx(1.00048e-4, rel=1e-12)
    assert asked == ["cpu"] * 5


def test_link_fit_recovers_latency_and_bandwidth():
    # timings of an exact link of 40 us and 2.5 GB/s: 8 B in 40.0032 us, 8 MiB in 3395.4432 us
    m = fit_link(8, 40.0032e-6, 8 << 20, 3395.4432e-6, "synthetic")
    assert m.latency_s == pytest.approx(40e-6, rel=1e-9)
    assert m.bytes_per_s == pytest.approx(2.5e9, rel=1e-9)
    assert m.seconds(1_000_000) == pytest.approx(440e-6, rel=1e-9) and m.how == "synthetic"


def test_link_fit_clamps_where_noise_breaks_the_line():
    # The large message measured no slower than the small one: the time difference is floored
    # at 1 ns, so the bandwidth is (8 MiB - 8 B) / 1 ns and the latency the small message's time.
    for t_large in (100e-6, 90e-6):
        m = fit_link(8, 100e-6, 8 << 20, t_large)
        assert m.bytes_per_s == pytest.approx(8388600 / 1e-9, rel=1e-12)
        assert m.latency_s == pytest.approx(100e-6 - 8e-9 / 8388600, rel=1e-12)
    # A line through (8 B, 1 us) and (800 B, 200 us) has bandwidth 792 / 199e-6 = 3.98 MB/s and
    # crosses 0 at -1.01 us: the latency is clamped to 0, the bandwidth kept.
    m = fit_link(8, 1e-6, 800, 200e-6)
    assert m.latency_s == 0.0
    assert m.bytes_per_s == pytest.approx(3979899.497, rel=1e-9)
    assert m.seconds(792) == pytest.approx(199e-6, rel=1e-9)  # no latency: 792 B at that bandwidth


def test_measured_link_is_a_real_loopback():
    m = link_model("cpu")
    assert m.how == "loopback TCP in-process + one tensor copy"
    assert m.latency_s < 0.01  # a small message over loopback TCP takes microseconds, not 10 ms
    assert m.bytes_per_s < 1e13  # 8 MiB took measurably longer than 8 bytes: the 1 ns floor did not engage
    assert m.seconds(8 << 20) < 1.0  # and under a second


# ---------------------------------------------------------------------------------------
# Benchmark report (on fake measurements: the real runs take minutes)


def test_bench_table_on_fake_measurements():
    from fr_dist.tools.bench import report

    def run(name, sps, busy):
        return {"name": name, "samples_per_s": sps, "busy_frac": busy, "peak_mem_bytes": [2**20] * len(busy),
                "partition": [], "steady_samples_per_s": sps}

    rounds = [{"bp1": run("bp1", 100.0, [0.99]), "fr2": run("fr2", 150.0, [0.9, 0.8]),
               "gpipe2": run("gpipe2", 140.0, [0.8, 0.8])},
              {"bp1": run("bp1", 110.0, [0.99]), "fr2": run("fr2", 154.0, [0.92, 0.8]),
               "gpipe2": run("gpipe2", 120.0, [0.8, 0.8])},
              {"bp1": run("bp1", 90.0, [0.99]), "fr2": {"name": "fr2", "rc": 1, "error": "x"},
               "gpipe2": run("gpipe2", 99.0, [0.8, 0.8])}]
    predicted = {"bp1": 1.2, "fr2": 0.8}
    rows = report.summarise(rounds, ["bp1", "fr2", "gpipe2"], 128, predicted)
    fr = rows[1]
    assert fr["runs"] == 2 and fr["samples_per_s"] == pytest.approx(152.0)
    assert fr["vs_bp1"] == pytest.approx((1.5 + 1.4) / 2)  # within-round ratios, median
    assert fr["s_per_iter"] == pytest.approx(128 / 152)
    assert fr["efficiency"] == pytest.approx((0.8 / (128 / 150) + 0.8 / (128 / 154)) / 2)  # per round
    assert fr["predicted_vs_bp1"] == pytest.approx(1.5)
    # one prediction per round (a fresh profile before each)
    per_round = [{"bp1": 1.2, "fr2": 0.8}, {"bp1": 1.1, "fr2": 0.8}, {"bp1": 1.0, "fr2": 0.7}]
    fr = report.summarise(rounds, ["bp1", "fr2"], 128, per_round)[1]
    assert fr["predicted_s_per_iter"] == pytest.approx(0.8)
    assert fr["predicted_vs_bp1"] == pytest.approx(1.0 / 0.7)  # median of 1.5, 1.375, 1.43
    assert fr["busy_frac"] == pytest.approx([0.91, 0.8])
    assert report.pair_ratio(rounds, "fr2", "gpipe2") == pytest.approx((150 / 140 + 154 / 120) / 2)
    text = report.format_table(rows, {"fr2": "FR K=2"})
    assert "| FR K=2 | 2 | 152.0 | 0.842 | 1.45x | 1.50x | 0.800 | 95% | 0.91/0.80 | 1/1 |" in text
    assert text.count("\n") == 5


def test_bench_arguments():
    from fr_dist.tools.bench import cli, configs

    a = cli.parse(["--quick"])
    assert a.repeats == 1 and a.steps == 8 and a.scaling_models == "" and a.no_contention
    assert not a.profile_every_round
    a = cli.parse([])
    assert a.repeats == 3 and a.steps == 40 and a.model == "resnet20" and a.batch_size == 128
    over = configs.common_overrides(a)
    assert "max_steps=40" in over and "data.shape=[3,32,32]" in over and "ckpt_every=0" in over
    assert cli.main(["--configs", "nope"]) == 1


def test_bench_report_on_fake_profile():
    from fr_dist.tools.bench import cli, report

    costs = [(1.0, 2.0)] * 6
    a = cli.parse(["--quick"])
    out = {"date": "2026-11-25T14:00:00+00:00", "machine": "2 cores test",
           "profile": {"fr_cuts": [0, 3, 6], "fr_stage_costs": [12.0, 9.0], "bp1_s": 18.0,
                       "fr2_by_cut": {3: 12.0}, "link_costs": [0.0] * 7, "half_block_fr2_s": 11.0,
                       "half_block_cut": 2.5, "contended_slowdown": 1.2, "contended_fr2_s": 14.4}}
    rows = [{"name": "fr2", "runs": 2, "samples_per_s": 10.0, "s_per_iter": 12.8, "vs_bp1": 1.4,
             "predicted_vs_bp1": 1.5,
             "predicted_s_per_iter": 12.0,
             "efficiency": 0.94, "busy_frac": [0.9, 0.7], "peak_mem_bytes": [2**21, 2**20]}]
    scaling = {"resnet-fake": {"rows": scaling_table(costs, 0.0, range(1, 4))}}
    text = report.report(out, rows, {"fr2": "FR K=2"}, {"FR K=2 / BP 1 thread": 1.4}, scaling, a)
    assert "| FR K=2 | 2 | 10.0 | 12.800 | 1.40x | 1.50x | 12.000 | 94% | 0.90/0.70 | 2/1 |" in text
    assert "FR K=2 / BP 1 thread 1.40x" in text and "1.64x BP" in text and "resnet-fake" in text
    assert "| 3 | [2, 4] |" in text
