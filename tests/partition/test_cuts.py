"""Partition by measured cost: the DP against brute force, the FR cost model by hand, stage_cuts."""

from __future__ import annotations

import itertools
import random

import pytest

from fr_dist import FRError
from fr_dist.partition import fr_stage_cost, pipeline_cuts, predicted_stage_costs, profiled_cuts, stage_cuts
from fr_dist.partition.cuts import _link_at


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
