"""The sufficient-direction diagnostic against values known by hand."""

from __future__ import annotations

import json
import math

import pytest

from fr_dist.algos import fr
from fr_dist.diagnostic import stepped_batches
from tests.test_fr_distributed import COMMON, MLP, RESNET8, distributed


def test_stepped_batches_follow_the_schedule():
    # K = 3, iteration 4 of 10: stage k applies batch 4-(2-k).
    assert stepped_batches(fr, 3, 4, 10) == {0: 2, 1: 3, 2: 4}
    assert stepped_batches(fr, 3, 1, 10) == {1: 0, 2: 1}  # stage 0 has nothing to replay yet


def diag_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "sigma" in r]


@pytest.mark.parametrize("K,model", [(1, "mlp"), (2, "mlp"), (3, "resnet8")])
def test_fresh_gradients_have_sigma_one(K, model, tmp_path):
    """The last stage's update is plain backprop with the current weights: sigma = cos = 1.

    With K = 1 that is the whole model. Earlier stages use a stale error
    gradient: their sigma is measured, finite, and (here, small steps) positive.
    """
    overrides = (MLP + ["model.dropout=0.0"] if model == "mlp" else RESNET8) + COMMON + ["algo=fr", "diag_every=4"]
    _, losses, _ = distributed(K, overrides, tmp_path)
    rows = diag_rows(tmp_path)
    assert [r["step"] for r in rows] == [s for s in range(4, len(losses) + 1, 4)]
    for r in rows:
        assert r[f"sigma_{K - 1}"] == pytest.approx(1.0, abs=1e-5)
        assert r[f"cos_{K - 1}"] == pytest.approx(1.0, abs=1e-5)
        for k in range(K - 1):
            if f"sigma_{k}" in r:
                assert math.isfinite(r[f"sigma_{k}"]) and r[f"sigma_{k}"] > 0
    # The diagnostic changes nothing: the losses are those of a run without it.
    _, plain, _ = distributed(K, [o for o in overrides if not o.startswith("diag_every")], tmp_path / "plain")
    assert losses == plain
