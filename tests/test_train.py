"""The entry point's start-up errors: one message, every rank non-zero."""

from __future__ import annotations

from tests.ranks import run_ranks
from tests.support import assert_one_clear_error


def test_splits_not_world_size(tmp_path):
    ranks = run_ranks(3, ["model=mlp", f"hydra.run.dir={tmp_path}"], world=2, timeout=60)
    assert_one_clear_error(ranks, "splits=3 but the world size is 2")


def test_unknown_model(tmp_path):
    ranks = run_ranks(2, ["model.name=vgg", f"hydra.run.dir={tmp_path}"], timeout=60)
    assert_one_clear_error(ranks, "unknown model 'vgg'")


def test_more_splits_than_blocks(tmp_path):
    ranks = run_ranks(3, ["model=mlp", "model.hidden=[8]", "data.shape=[1,4,4]", f"hydra.run.dir={tmp_path}"],
                      timeout=60)
    assert_one_clear_error(ranks, "splits=3 is larger than the model's 2 blocks")
