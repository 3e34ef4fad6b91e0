"""The timeline simulator: BP, FR, GPipe and 1F1B timelines by hand, bounds, the scaling table."""

from __future__ import annotations

import random

import pytest

from fr_dist.errors import FRError
from fr_dist.partition import predicted_stage_costs, profiled_cuts
from fr_dist.tools.simulate import predict, scaling_table, simulate


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


def test_replicas_add_the_exposed_all_reduce_by_hand():
    from fr_dist.tools.simulate import allreduce_seconds, predict_replicas

    assert allreduce_seconds(1000, 1, 1e-3, 1e6) == 0.0
    # D = 4: 6 steps of 250 bytes at 1e6 B/s plus 1 ms each: 6 x 1.25 ms
    assert allreduce_seconds(1000, 4, 1e-3, 1e6) == pytest.approx(6 * (1e-3 + 250e-6))
    costs = [(1.0, 2.0)]  # one stage: period f + b = 3 s, busy the whole period
    assert predict_replicas(costs, 1, 1, [4000], 0.0, 1e3) == pytest.approx(3.0)
    # D = 2: 2 steps of 2000 bytes at 1e3 B/s = 4 s of all-reduce after the 3 s of compute
    assert predict_replicas(costs, 1, 2, [4000], 0.0, 1e3) == pytest.approx(7.0)


# --- the schedules with virtual stages, run in torch's own order -------------------------------
# Anchors from the schedules' papers, with equal chunks of forward f and backward b per micro-batch
# and free links: interleaved 1F1B's batch takes M V (f + b) + (K - 1)(f + b) (Narayanan et al.
# 2021, the bubble (K - 1)/V of a 1F1B stage's); ZB-V has no bubble when a forward, an input
# gradient and a weight gradient cost the same (Qi et al. 2024), so a batch is M V (f + b).


@pytest.mark.parametrize("K,M", [(2, 2), (2, 4), (2, 8), (4, 4), (4, 8), (4, 16)])
def test_interleaved_1f1b_has_the_megatron_bubble(K, M):
    V, f, b = 2, 1.0, 2.0
    costs = [(f * M, b * M)] * (K * V)  # one block per chunk; the batch's costs, M micro-batches of them
    assert predict(costs, K, 0.0, "interleaved1f1b", M=M, V=V) == pytest.approx(M * V * (f + b) + (K - 1) * (f + b))


@pytest.mark.parametrize("K,M", [(2, 4), (2, 8), (4, 8), (4, 16)])
def test_zbv_has_no_bubble_when_f_i_and_w_cost_the_same(K, M):
    V, f, b = 2, 1.0, 2.0  # w_share 0.5: I = W = b / 2 = f
    costs = [(f * M, b * M)] * (K * V)
    assert predict(costs, K, 0.0, "zbv", M=M, V=V) == pytest.approx(M * V * (f + b))
    # the zero-bubble schedules are between that and interleaved 1F1B, which cannot split its backward
    for algo in ("zb", "dualpipev"):
        s = predict(costs, K, 0.0, algo, M=M, V=V)
        assert M * V * (f + b) - 1e-9 <= s <= M * V * (f + b) + (K - 1) * (f + b) + 1e-9


@pytest.mark.parametrize("K,M", [(2, 4), (3, 6), (4, 8), (2, 2)])
def test_gpipe_in_torchs_order_equals_the_hand_written_program(K, M):
    rng = random.Random(K * 10 + M)
    costs = [(rng.uniform(0.5, 1.5), rng.uniform(1.0, 3.0)) for _ in range(8)]
    cuts = pipeline_cuts_for(costs, K)
    by_hand = simulate(costs, K, 0.0, "gpipe", M, cuts=cuts)
    torchs = simulate(costs, K, 0.0, "gpipe", M, cuts=cuts, torch_order=True)
    assert torchs.period == pytest.approx(by_hand.period, rel=1e-12)


def pipeline_cuts_for(costs, K):
    from fr_dist.partition import pipeline_cuts

    return pipeline_cuts(costs, K)


def test_virtual_schedules_refuse_what_torch_refuses():
    costs = [(1.0, 2.0)] * 8
    with pytest.raises(ValueError, match="DualPipeV requires at least as many microbatches"):
        predict(costs, 2, 0.0, "dualpipev", M=2, V=2)
    with pytest.raises(FRError, match="3 blocks"):
        predict([(1.0, 2.0)] * 3, 2, 0.0, "zbv", M=4, V=2)  # 4 chunks of 3 blocks


def test_chunked_replay_costs_the_slices():
    # stage 0 = blocks 0..2: forward 3, replay in 4 slices of 3 x (0.5 + 1) = 4 x 4.5 = 18; stage 1 = 5 x 3
    costs, mb = [(1.0, 2.0)] * 8, [(0.5, 1.0)] * 8
    assert predict(costs, 2, 0.0, "fr", cuts=[0, 3, 8], replay_chunks=4, mb_costs=mb) == pytest.approx(21.0)
    assert predict(costs, 2, 0.0, "fr", cuts=[0, 3, 8], replay_chunks=4) == pytest.approx(15.0)  # scaled: 3 + 9
