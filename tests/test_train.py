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


# Found after the process groups are up: the start-up step that finds them speaks once, for every rank.
SMALL = ["data.shape=[2,4,4]", "data.train_size=32", "data.test_size=8", "batch_size=8", "threads_per_rank=1"]


def test_partition_beyond_the_blocks(tmp_path):
    # model.hidden=[8,8]: three blocks, so the one cut must lie in 1..2 (known once the model is built)
    ranks = run_ranks(2, [*SMALL, "model.hidden=[8,8]", "partition=[5]", f"hydra.run.dir={tmp_path}"], timeout=60)
    assert_one_clear_error(ranks, "partition=[5] must be 1 strictly increasing cut indices between 1 and 2 "
                                  "for splits=2 and 3 blocks")


def test_user_model_that_fails_on_the_data(tmp_path):
    ranks = run_ranks(2, [*SMALL, "~model", "+model._target_=tests.models.test_models.tiny_net", "+model.width=0",
                          f"hydra.run.dir={tmp_path}"], timeout=60)
    assert_one_clear_error(ranks, "model._target_='tests.models.test_models.tiny_net': block 0 fails on inputs "
                                  "of shape (2, 2, 4, 4): RuntimeError")


def test_dni_synth_that_does_not_fit_a_user_model(tmp_path):
    # tiny_net's first stage sends (N, C, H, W) features: a linear synthetic-gradient model cannot take them
    ranks = run_ranks(2, [*SMALL, "~model", "+model._target_=tests.models.test_models.tiny_net", "algo=dni",
                          "algo.synth=linear", f"hydra.run.dir={tmp_path}"], timeout=60)
    assert_one_clear_error(ranks, "algo.synth=linear makes a linear synthetic-gradient model, which needs (N, D) "
                                  "or (N, T, D) features, but model=tests.models.test_models.tiny_net sends 4-D ones")
