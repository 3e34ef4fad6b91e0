"""Which model chunks a rank holds when a pipelining schedule runs V virtual stages per rank.

The model is cut into K x V chunks (pipeline stages 0..KV-1 in model order).
Looped placement (interleaved schedules): rank r holds chunks r, r + K, r + 2K, ...
V placement (ZBV, DualPipeV; V = 2): rank r holds chunks r and 2K - 1 - r, so the
first and the last chunk share rank 0 and the turn of the V (chunks K-1, K) stays on
rank K-1 without a transfer. Both agree with torch's own stage-to-rank mapping
(`generate_stage_to_rank_mapping`, styles "loop" and "v").
"""

from __future__ import annotations

PLACEMENTS = ("loop", "v")


def owner(chunk: int, K: int, placement: str) -> int:
    """The rank that holds `chunk`."""
    if placement == "loop":
        return chunk % K
    if placement == "v":
        return chunk if chunk < K else 2 * K - 1 - chunk
    raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def chunks_of(rank: int, K: int, V: int, placement: str) -> list[int]:
    """The chunks rank `rank` holds, in model order."""
    return [c for c in range(K * V) if owner(c, K, placement) == rank]
