"""A user's own model: `model=custom model._target_=pkg.fn +model.KEY=V` (conf/model/custom.yaml)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from fr_dist import FRError
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.models import build_blocks
from tests.ranks import run_ranks

TARGET = "tests.models.test_custom.stem_and_head"


def stem_and_head(in_shape, classes, width: int = 4, bias: bool = True):
    """A user's model with keys of its own: a conv stem of `width` channels, then a linear head."""
    c, h, w = in_shape
    return [nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=bias), nn.ReLU()),
            nn.Sequential(nn.Flatten(), nn.Linear(width * h * w, classes))]


def test_custom_model_gets_only_its_own_keys():
    c = validate(compose(["model=custom", f"model._target_={TARGET}", "+model.width=5", "+model.bias=false"]), 1)
    assert c.model == {"_target_": TARGET, "width": 5, "bias": False}  # none of model=mlp's keys
    stem, head = build_blocks(c.model, (2, 6, 6), 3)
    assert (stem[0].in_channels, stem[0].out_channels, stem[0].bias) == (2, 5, None)
    assert (head[1].in_features, head[1].out_features) == (180, 3)  # 5 channels x 6 x 6
    assert nn.Sequential(stem, head)(torch.zeros(4, 2, 6, 6)).shape == (4, 3)
    # without keys of its own: the function's defaults
    c = validate(compose(["model=custom", f"model._target_={TARGET}"]), 1)
    assert c.model == {"_target_": TARGET}
    stem, _ = build_blocks(c.model, (1, 4, 4), 3)
    assert (stem[0].out_channels, stem[0].bias is not None) == (4, True)


def test_custom_model_needs_its_target():
    with pytest.raises(FRError, match=r"model\._target_"):
        validate(compose(["model=custom"]), 1)


def test_target_added_to_a_builtin_model_is_refused_with_the_fix():
    c = validate(compose([f"+model._target_={TARGET}"]), 1)  # over the default model=mlp
    with pytest.raises(FRError) as e:
        build_blocks(c.model, (1, 4, 4), 3)
    assert str(e.value) == (f"model._target_='{TARGET}' was added to model=mlp, whose keys (name, hidden, dropout) "
                            f"would be passed to it: use model=custom model._target_={TARGET} and +model.KEY=VALUE "
                            f"for its own arguments")


def test_custom_model_trains_on_two_stages(tmp_path):
    ranks = run_ranks(2, ["model=custom", f"model._target_={TARGET}", "+model.width=3", "data.shape=[1,4,4]",
                          "data.train_size=32", "data.test_size=8", "batch_size=8", "epochs=1", "max_steps=2",
                          f"hydra.run.dir={tmp_path}"])
    assert all(r.returncode == 0 for r in ranks), ranks[0].err[-2000:] + ranks[-1].err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"] == TARGET
    assert [s["blocks"] for s in summary["stages"]] == [[0], [1]]
