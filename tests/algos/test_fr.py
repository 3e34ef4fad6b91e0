"""Distributed Features Replay on gloo against the single-process reference, bit for bit."""

from __future__ import annotations

import pytest

from tests.support import COMMON, MLP, RESNET8, assert_states_equal, distributed, reference


@pytest.mark.parametrize("K,model", [(1, "mlp"), (1, "resnet8"), (2, "mlp"), (3, "mlp"), (4, "mlp"),
                                     (2, "resnet8"), (3, "resnet8"), (4, "resnet8")])
def test_distributed_fr_equals_reference(K, model, tmp_path):
    """Bit for bit: the same arithmetic in the same order, one thread per rank.

    K = 1 is compared with plain backprop; parameters and BatchNorm buffers of
    every stage after the drain, and every per-step loss.
    """
    overrides = (MLP if model == "mlp" else RESNET8) + COMMON + ["algo=fr"]
    want_states, want_losses = reference(K, overrides)
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["status"] == "ok" and summary["steps"] == len(want_losses) and summary["splits"] == K
    assert [s["rank"] for s in summary["stages"]] == list(range(K))
    assert 0 <= summary["test_acc"] <= 1
