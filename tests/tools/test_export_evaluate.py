"""Export of a staged checkpoint and its evaluation in one process."""


from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fr_dist import data as datasets
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.runtime import checkpoint
from fr_dist.tools import evaluate, export
from tests.support import COMMON, MLP, distributed


def test_evaluation_counts_every_test_sample_once(tmp_path, capsys):
    """test_acc equals the accuracy of the final weights, exported into the plain model, over all 13 test samples."""
    overrides = MLP + COMMON + ["algo=fr", "model.dropout=0.0"]
    _, _, summary = distributed(3, overrides, tmp_path)
    c = validate(compose(["splits=3", *overrides]), world_size=3)
    data = datasets.load(c.data, c.batch_size, c.seed)
    model = export.plain_model(export.merge(checkpoint.latest(tmp_path)))  # loads strictly into the unsplit model
    model.eval()
    with torch.no_grad():
        correct = int((model(data.test_x).argmax(1) == data.test_y).sum())  # synthetic: not normalised
    assert len(data.test_y) % c.batch_size != 0
    assert summary["test_acc"] == correct / len(data.test_y)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "test_acc" in r]
    assert [r["step"] for r in evals] == [7, 14]  # after epoch 1 (between iterations) and after the drain
    assert summary["best_test_acc"] == max(r["test_acc"] for r in evals)
    # The command-line tools agree: export writes model.pt, evaluate scores it and the staged checkpoint.
    assert export.main([str(tmp_path)]) == 0
    assert evaluate.main([str(tmp_path / "model.pt")]) == 0
    assert evaluate.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"test_acc {correct / len(data.test_y):.4f} on 13 samples") == 2


def test_language_model_evaluation_is_the_loss_per_token(gpt_run, capsys):
    """val_loss over every validation window equals a plain loop over them and the trainer's final val_loss."""
    run_dir, overrides, summary = gpt_run
    c = validate(compose(["splits=1", *overrides]), world_size=1)
    data = datasets.load(c.data, c.batch_size, c.seed)
    model = export.plain_model(export.merge(checkpoint.latest(run_dir)))
    model.eval()
    with torch.no_grad():
        logits = model(data.test_x.long())
    want = F.cross_entropy(logits.flatten(0, 1), data.test_y.long().flatten()).item()
    assert len(data.test_y) % c.batch_size != 0  # the padded last batch is masked
    assert evaluate.validation_loss(model, data) == pytest.approx(want, rel=1e-6)
    assert summary["val_loss"] == pytest.approx(want, rel=1e-6)
    assert evaluate.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"val_loss {want:.4f} val_ppl {math.exp(want):.4f} on {data.test_y.numel()} tokens" in out


def test_export_refuses_a_run_without_checkpoint(tmp_path, capsys):
    assert export.main([str(tmp_path)]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
