"""The sufficient-direction diagnostic against values known by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fr_dist import reference
from fr_dist.algos import fr
from fr_dist.runtime.diagnostic import stepped_batches
from tests.support import COMMON, MLP, RESNET8, distributed, simulation_inputs


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


def test_sigma_matches_the_reference(tmp_path):
    """K = 2: sigma and cosine per stage equal those of the reference's gradients at the same steps.

    The reference gives the raw FR gradient of each stage before its step; the
    true gradient is plain backprop of that stage's batch through the
    reference's stages as they are at that moment (BatchNorm-free model).
    """
    overrides = MLP + COMMON + ["algo=fr", "model.dropout=0.0", "diag_every=3"]
    _, _, stages, batches, lr_of, make_optimizer, _, seeds = simulation_inputs(2, overrides)
    want = {}

    def before_steps(t, updates):
        if (t + 1) % 3 or t >= len(batches):
            return
        row = {}
        for k, b in updates.items():
            x, y = batches[b]
            params = list(stages[k].parameters())
            loss = F.cross_entropy(stages[1](stages[0](x)), y)
            g_bp = torch.autograd.grad(loss, params)
            g_fr = [p.grad for p in params]
            dot = sum(float((a * c).sum()) for a, c in zip(g_fr, g_bp))
            n_bp = sum(float((c * c).sum()) for c in g_bp)
            n_fr = sum(float((a * a).sum()) for a in g_fr)
            row[f"sigma_{k}"], row[f"cos_{k}"] = dot / n_bp, dot / math.sqrt(n_bp * n_fr)
        want[t + 1] = row

    torch.set_num_threads(1)
    reference.features_replay(stages, batches, lr_of, make_optimizer, seeds, before_steps)
    distributed(2, overrides, tmp_path)
    got = {r["step"]: r for r in diag_rows(tmp_path)}
    assert sorted(got) == sorted(want)
    for step, row in want.items():
        for key, value in row.items():
            assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)
    assert any(abs(row["sigma_0"] - 1) > 1e-4 for row in want.values())  # stale: not trivially 1
