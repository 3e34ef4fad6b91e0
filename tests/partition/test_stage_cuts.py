"""Uniform and explicit partitions of a block list."""


from __future__ import annotations

import pytest

from fr_dist import FRError
from fr_dist.partition import stage_cuts


def test_uniform_partition_covers_blocks_in_order():
    assert stage_cuts(11, 2, "uniform") == [0, 6, 11]
    assert stage_cuts(5, 4, "uniform") == [0, 2, 3, 4, 5]
    assert stage_cuts(4, 1, "uniform") == [0, 4]


def test_explicit_partition():
    assert stage_cuts(5, 2, [3]) == [0, 3, 5]
    with pytest.raises(FRError, match=r"partition=\[5\] must be 1 strictly increasing cut indices"):
        stage_cuts(5, 2, [5])
    with pytest.raises(FRError, match=r"partition=\[2, 2\]"):
        stage_cuts(5, 3, [2, 2])


def test_more_stages_than_blocks():
    with pytest.raises(FRError, match=r"splits=6 is larger than the model's 5 blocks"):
        stage_cuts(5, 6, "uniform")
