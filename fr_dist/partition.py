"""Split a list of blocks into K contiguous stages."""

from __future__ import annotations

from fr_dist.errors import FRError


def stage_cuts(n_blocks: int, splits: int, partition) -> list[int]:
    """Boundaries [0, c_1, ..., c_{K-1}, n_blocks]: stage k gets blocks[c_k:c_{k+1}].

    `partition` is "uniform" (block counts differ by at most one, the extra
    blocks going to the first stages) or a list of K-1 increasing cut indices.
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
        raise FRError("partition=profiled is not available yet: use partition=uniform or a list of cut indices")
    if not isinstance(partition, (list, tuple)) or not all(isinstance(c, int) for c in partition):
        raise FRError(f"partition={partition!r}: use uniform or a list of {splits - 1} cut indices, e.g. partition=[3]")
    cuts = [0, *partition, n_blocks]
    if len(partition) != splits - 1 or any(a >= b for a, b in zip(cuts, cuts[1:])):
        raise FRError(
            f"partition={list(partition)} must be {splits - 1} strictly increasing cut indices "
            f"between 1 and {n_blocks - 1} for splits={splits} and {n_blocks} blocks"
        )
    return cuts
