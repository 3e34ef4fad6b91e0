"""Models, evaluation, lr(batch id), user models: issue-level behaviour of real training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from fr_dist import FRError, data as datasets
from fr_dist.runtime import checkpoint
from fr_dist.tools import evaluate, export
from fr_dist.config import validate
from fr_dist.models import MODELS, build_blocks
from fr_dist.config import compose
from tests.ranks import run_ranks
from tests.test_fr_distributed import COMMON, MLP, assert_states_equal, distributed, reference


def weighted_layers(blocks) -> int:
    """Convolutions on the main path plus linear layers: the depth in He et al.'s count."""
    n = 0
    for block in blocks:
        for name, m in block.named_modules():
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and "shortcut" not in name):
                n += 1
    return n


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_models_build_and_compose(name, shape):
    torch.manual_seed(0)
    blocks = build_blocks({"name": name}, shape, 10)
    x = torch.randn(2, *shape)
    for block in blocks:
        x = block(x)
    assert x.shape == (2, 10)
    if name != "mlp":
        depth = int(name[len("resnet"):])
        assert weighted_layers(blocks) == depth
        per = 9 if depth == 164 else 6
        assert len(blocks) == 3 * (depth - 2) // per + 2  # stem, residual blocks, head


def test_resnet20_parameter_count_by_hand():
    # He et al.'s ResNet-20 with projection shortcuts, counted by hand:
    # convs 3x3: 16*3*9 + 6*16*16*9 + (16*32*9 + 5*32*32*9) + (32*64*9 + 5*64*64*9)
    convs = 432 + 13824 + (4608 + 46080) + (18432 + 184320)
    shortcuts = 16 * 32 + 32 * 64
    bn = 2 * (16 * 7 + 32 * 7 + 64 * 7)  # weight and bias; groups 2, 3 have a shortcut BN
    fc = 64 * 10 + 10
    blocks = build_blocks({"name": "resnet20"}, (3, 32, 32), 10)
    assert sum(p.numel() for b in blocks for p in b.parameters()) == convs + shortcuts + bn + fc


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


def test_export_refuses_a_run_without_checkpoint(tmp_path, capsys):
    assert export.main([str(tmp_path)]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err


def test_step_schedule_uses_the_rate_of_the_replayed_batch(tmp_path):
    """A stage replaying batch t-(K-1-k) uses lr(t-(K-1-k)), drain included: against the reference."""
    overrides = MLP + COMMON + ["algo=fr", "optim.schedule.name=step", "optim.schedule.milestones=[1]",
                                "optim.schedule.gamma=0.2", "optim.momentum=0.0"]
    want_states, want_losses = reference(3, overrides)
    got_states, got_losses, _ = distributed(3, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)


def tiny_net(in_shape, classes, width: int = 6):
    """A user's model: a list of blocks built from the data's shape (used through _target_)."""
    c = in_shape[0]
    return [nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Flatten(), nn.Linear(width * in_shape[1] * in_shape[2], classes))]


def test_user_target_model_trains_with_two_stages(tmp_path):
    ranks = run_ranks(2, ["~model", "+model._target_=tests.test_training.tiny_net", "+model.width=5",
                          "data.shape=[2,6,6]", "data.train_size=64", "data.test_size=16", "batch_size=16",
                          "epochs=3", "optim.lr=0.05", f"hydra.run.dir={tmp_path}"])
    assert all(r.returncode == 0 for r in ranks), ranks[-1].err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"] == "tests.test_training.tiny_net"
    assert [len(s["blocks"]) for s in summary["stages"]] == [1, 1]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "loss" in line]
    assert losses[-1] < losses[0]


def test_user_target_model_errors():
    with pytest.raises(FRError, match="failed to build"):
        build_blocks({"_target_": "tests.test_training.no_such_function"}, (1, 4, 4), 3)


def test_profiled_partition_is_chosen_once_and_used_by_every_rank(tmp_path):
    ranks = run_ranks(2, ["model=resnet8", "model.width=4", "data.shape=[3,8,8]", "data.train_size=64",
                          "batch_size=16", "partition=profiled", f"hydra.run.dir={tmp_path}"])
    assert all(r.returncode == 0 for r in ranks), ranks[0].err[-2000:]
    announced = [line for r in ranks for line in r.err.splitlines() if "partition=profiled: cuts" in line]
    assert len(announced) == 1 and announced[0].startswith("[stage 0]")
    summary = json.loads((tmp_path / "summary.json").read_text())
    (cut,) = summary["partition"]
    assert f"cuts [{cut}]" in announced[0] and 1 <= cut <= 4  # resnet8: 5 blocks
    assert [s["blocks"] for s in summary["stages"]] == [list(range(cut)), list(range(cut, 5))]
