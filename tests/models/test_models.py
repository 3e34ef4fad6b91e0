"""Models as blocks: the ResNet family by hand, and a user's own model."""


from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn as nn

from fr_dist import FRError
from fr_dist.models import MODELS, OPTION_CHECKS, build_blocks, options, probe
from tests.ranks import run_ranks


def weighted_layers(blocks) -> int:
    """Convolutions on the main path plus linear layers: the depth in He et al.'s count."""
    n = 0
    for block in blocks:
        for name, m in block.named_modules():
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and "shortcut" not in name):
                n += 1
    return n


@pytest.mark.parametrize("name", [m for m in MODELS if m != "gpt"])  # gpt reads token ids: below
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


def tiny_net(in_shape, classes, width: int = 6):
    """A user's model: a list of blocks built from the data's shape (used through _target_)."""
    c = in_shape[0]
    return [nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Flatten(), nn.Linear(width * in_shape[1] * in_shape[2], classes))]


def test_user_target_model_trains_with_two_stages(tmp_path):
    ranks = run_ranks(2, ["~model", "+model._target_=tests.models.test_models.tiny_net", "+model.width=5",
                          "data.shape=[2,6,6]", "data.train_size=64", "data.test_size=16", "batch_size=16",
                          "epochs=3", "optim.lr=0.05", f"hydra.run.dir={tmp_path}"])
    assert all(r.returncode == 0 for r in ranks), ranks[-1].err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"] == "tests.models.test_models.tiny_net"
    assert [len(s["blocks"]) for s in summary["stages"]] == [1, 1]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "loss" in line]
    assert losses[-1] < losses[0]


def test_user_target_model_errors():
    with pytest.raises(FRError, match="failed to build"):
        build_blocks({"_target_": "tests.models.test_models.no_such_function"}, (1, 4, 4), 3)


class Pair(nn.Module):
    def forward(self, x):
        return x, x


def odd_net(in_shape, classes, fault: str):
    """A user's model with one fault: a block that fails, a tuple between blocks, or a head of the wrong width."""
    width = math.prod(in_shape)
    first = {"fails": nn.Linear(3, 3), "tuple": Pair(), "head": nn.Flatten()}[fault]
    return [first, nn.Sequential(nn.Flatten(), nn.Linear(width, classes + 1))]


@pytest.mark.parametrize("fault,message", [
    ("fails", ("block 0 fails on inputs of shape (2, 1, 4, 4): RuntimeError: mat1 and mat2 shapes cannot be "
               "multiplied")),
    ("tuple", "block 0 returns a tuple; every block must return one tensor"),
    ("head", "the last block returns shape (2, 4) for 2 samples; it must return (2, classes=3) scores"),
])
def test_user_model_is_probed_at_build(fault, message):
    with pytest.raises(FRError, match=re.escape(f"model._target_='tests.models.test_models.odd_net': {message}")):
        build_blocks({"_target_": "tests.models.test_models.odd_net", "fault": fault}, (1, 4, 4), 3)


def test_probe_changes_nothing():
    """The probe of a user's model draws no random number and leaves modes and BatchNorm statistics alone."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Dropout(0.5)),
              nn.Sequential(nn.Flatten(), nn.Linear(32, 3))]
    blocks[1].eval()
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    rng = torch.get_rng_state()
    probe(blocks, (1, 4, 4), 3, "model")
    assert torch.equal(torch.get_rng_state(), rng)
    assert [b.training for b in blocks] == [True, False]
    for b, saved in zip(blocks, before):
        assert all(torch.equal(v, saved[k]) for k, v in b.state_dict().items())


def test_every_builtin_option_is_checked():
    """config.validate refuses a bad value of every keyword option of the built-in models."""
    assert options("mlp") == ["hidden", "dropout"] and options("resnet20") == ["width"]
    assert {key for name in MODELS for key in options(name)} == set(OPTION_CHECKS)


def test_gpt_blocks_and_parameter_count_by_hand():
    """[embedding, n_layer blocks, head] maps (N, T) ids to (N, T, V) logits; parameters counted by hand:
    embeddings V*C + P*C; per block 2 LayerNorms (2 * 2C), qkv (3C*C + 3C), projection (C*C + C), MLP
    (4C*C + 4C + 4C*C + C); head LayerNorm 2C and an untied, bias-free C*V."""
    V, P, C, L = 256, 8, 16, 2
    blocks = build_blocks({"name": "gpt", "n_layer": L, "n_head": 2, "n_embd": C, "block_size": P}, (P,), V)
    assert len(blocks) == L + 2
    assert blocks[-1](blocks[1](blocks[0](torch.randint(0, V, (3, 5))))).shape == (3, 5, V)  # T < block_size
    per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C + 4 * C * C + C)
    want = V * C + P * C + L * per_block + 2 * C + C * V
    assert sum(p.numel() for b in blocks for p in b.parameters()) == want
