"""Split a list of blocks into K contiguous stages."""

from __future__ import annotations

from fr_dist.errors import FRError


def stage_cuts(n_blocks: int, splits: int, partition, costs=None, link_s=0.0) -> list[int]:
    """Boundaries [0, c_1, ..., c_{K-1}, n_blocks]: stage k gets blocks[c_k:c_{k+1}].

    `partition` is "uniform" (block counts differ by at most one, the extra
    blocks going to the first stages), "profiled" (needs `costs`, the measured
    per-block (f, b) seconds, and optionally `link_s`: see `profiled_cuts`) or a
    list of K-1 increasing cut indices.
    """
    if splits > n_blocks:
        raise FRError(
            f"splits={splits} is larger than the model's {n_blocks} blocks: "
            f"use splits <= {n_blocks} or a deeper model"
        )
    if partition == "uniform":
        base, extra = divmod(n_blocks, splits)
        cuts = [0]
        for k in range(splits):
            cuts.append(cuts[-1] + base + (k < extra))
        return cuts
    if partition == "profiled":
        if costs is None:
            raise FRError("partition=profiled is not available yet: use partition=uniform or a list of cut indices")
        if len(costs) != n_blocks:
            raise ValueError(f"costs has {len(costs)} entries for {n_blocks} blocks")
        return profiled_cuts(costs, splits, link_s)
    if not isinstance(partition, (list, tuple)) or not all(isinstance(c, int) for c in partition):
        raise FRError(f"partition={partition!r}: use uniform or a list of {splits - 1} cut indices, e.g. partition=[3]")
    cuts = [0, *partition, n_blocks]
    if len(partition) != splits - 1 or any(a >= b for a, b in zip(cuts, cuts[1:])):
        raise FRError(
            f"partition={list(partition)} must be {splits - 1} strictly increasing cut indices "
            f"between 1 and {n_blocks - 1} for splits={splits} and {n_blocks} blocks"
        )
    return cuts


# ---------------------------------------------------------------------------------------
# Partition by measured cost (partition=profiled)
#
# Cost model of one FR iteration (DESIGN.md section 6): a stage other than the last
# costs 2F + B (forward without graph + replay), the last F + B, where F and B sum
# the blocks' (f, b); each stage adds the transfer cost of the cut on each of its
# sides (its input features / output gradient, its output features / input
# gradient). With equal links a middle stage thus pays DESIGN.md's "two link
# latencies". This is an upper bound of the steady-state period: the event
# simulation (fr_dist.tools.simulate) equals max_k stage compute when links are free
# and lies between that and this model otherwise, because sends are
# non-blocking and a busy neighbour hides part of a transfer. For two stages the
# exact period is max(C_0, C_1, (C_0 + C_1 + 2L) / 2).


def _link_at(link_s, c: int, n: int) -> float:
    """Cost of the cut before block c; `link_s` is a number or a sequence indexed by cut (length n+1)."""
    if c <= 0 or c >= n:
        return 0.0
    if isinstance(link_s, (int, float)):
        return float(link_s)
    if len(link_s) != n + 1:
        raise ValueError(f"link_s must be a number or a list of n+1={n + 1} per-cut costs, got length {len(link_s)}")
    return float(link_s[c])


def _check(costs, K: int) -> int:
    n = len(costs)
    if K < 1:
        raise FRError(f"splits={K} must be a positive integer")
    if K > n:
        raise FRError(f"splits={K} is larger than the model's {n} blocks: use splits <= {n} or a deeper model")
    return n


def fr_stage_cost(costs, a: int, b: int, link_s=0.0, last: bool | None = None) -> float:
    """FR cost of one iteration of the stage holding blocks [a, b), its links included."""
    n = len(costs)
    F = sum(c[0] for c in costs[a:b])
    B = sum(c[1] for c in costs[a:b])
    last = b == n if last is None else last
    return (F + B if last else 2 * F + B) + _link_at(link_s, a, n) + _link_at(link_s, b, n)


def predicted_stage_costs(costs, cuts, link_s=0.0) -> list[float]:
    """Seconds per iteration of each FR stage for boundaries `cuts` = [0, c1, .., n] under the cost model."""
    n = len(costs)
    if cuts[0] != 0 or cuts[-1] != n or any(a >= b for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts {cuts} must rise strictly from 0 to {n}")
    return [fr_stage_cost(costs, a, b, link_s) for a, b in zip(cuts, cuts[1:])]


def best_cuts(n: int, K: int, stage_cost) -> list[int]:
    """Contiguous split of n blocks into K stages minimising max_k stage_cost(a, b, last).

    Dynamic programming over (stages used, blocks covered): O(K n^2) calls.
    Among equal maxima the first found (earliest cuts) wins.
    """
    INF = float("inf")
    # best[j][b]: smallest max cost of j stages (none of them last) covering blocks [0, b)
    best = [[INF] * (n + 1) for _ in range(K)]
    arg = [[-1] * (n + 1) for _ in range(K)]
    best[0][0] = 0.0
    for j in range(1, K):
        for b in range(j, n - (K - j) + 1):
            for a in range(j - 1, b):
                if best[j - 1][a] == INF:
                    continue
                v = max(best[j - 1][a], stage_cost(a, b, False))
                if v < best[j][b]:
                    best[j][b], arg[j][b] = v, a
    # the last stage covers [a, n)
    top, start = INF, -1
    for a in range(K - 1, n):
        if best[K - 1][a] == INF:
            continue
        v = max(best[K - 1][a], stage_cost(a, n, True))
        if v < top:
            top, start = v, a
    cuts = [n, start]
    for j in range(K - 1, 0, -1):
        cuts.append(arg[j][cuts[-1]])
    return cuts[::-1]


def profiled_cuts(costs, K: int, link_s=0.0) -> list[int]:
    """Boundaries [0, c1, .., n] minimising the largest FR stage cost (see above).

    `costs`: per-block (f, b) seconds (fr_dist.partition.profile.profile_model(...).costs); `link_s`:
    one number for every cut, or a list of n+1 per-cut costs indexed by cut c (the
    features entering block c; Profile.link_costs gives it).
    """
    n = _check(costs, K)
    return best_cuts(n, K, lambda a, b, last: fr_stage_cost(costs, a, b, link_s, last))


def pipeline_cuts(costs, K: int, link_s=0.0) -> list[int]:
    """Best boundaries for BP / GPipe / 1F1B: minimise the largest F + B of a stage plus its links."""
    n = _check(costs, K)
    return best_cuts(n, K, lambda a, b, last: sum(f + bb for f, bb in costs[a:b]) + _link_at(link_s, a, n)
                     + _link_at(link_s, b, n))
