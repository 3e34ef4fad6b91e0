"""Models, evaluation, lr(batch id), user models: issue-level behaviour of real training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from fr_dist import FRError, checkpoint, data as datasets
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


def test_evaluation_counts_every_test_sample_once(tmp_path):
    """test_acc equals the accuracy of the final weights over all test samples (13 = 8 + 5)."""
    overrides = MLP + COMMON + ["algo=fr", "model.dropout=0.0"]
    states, _, summary = distributed(3, overrides, tmp_path)
    c = validate(compose(["splits=3", *overrides]), world_size=3)
    data = datasets.load(c.data, c.batch_size, c.seed)
    model = nn.Sequential(*build_blocks(c.model, data.in_shape, data.classes))
    merged = {}
    for k, state in enumerate(states):
        start = torch.load(checkpoint.latest(tmp_path) / f"stage{k}.pt", weights_only=False)["meta"]["blocks"][0]
        for name, value in state.items():
            index, rest = name.split(".", 1)
            merged[f"{int(index) + start}.{rest}"] = value
    model.load_state_dict(merged)
    model.eval()
    with torch.no_grad():
        correct = int((model(data.test_x).argmax(1) == data.test_y).sum())  # synthetic: not normalised
    assert len(data.test_y) % c.batch_size != 0
    assert summary["test_acc"] == correct / len(data.test_y)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "test_acc" in r]
    assert [r["step"] for r in evals] == [7, 14]  # after epoch 1 (between iterations) and after the drain
    assert summary["best_test_acc"] == max(r["test_acc"] for r in evals)


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
