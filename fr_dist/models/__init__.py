"""Models as lists of blocks: the unit that partitions split into stages."""

from __future__ import annotations

import torch.nn as nn

from fr_dist.errors import FRError
from fr_dist.models.mlp import mlp_blocks
from fr_dist.models.resnet import RESNET_DEPTHS, resnet_blocks

MODELS = ("mlp",) + tuple(f"resnet{d}" for d in RESNET_DEPTHS)


def build_blocks(model: dict, in_shape: tuple[int, ...], classes: int) -> list[nn.Module]:
    """Build the model named by `model` (a config dict) as an ordered list of blocks.

    Composing the blocks in order gives the whole model. A user's model is a
    config with ``_target_`` (``model=custom model._target_=pkg.fn +model.KEY=V``),
    called with ``in_shape`` and ``classes`` plus its own keys, that returns a list
    of modules (or an nn.Sequential). A ``_target_`` added to a built-in model's
    config (``+model._target_=...`` over model=mlp) is refused: that model's keys
    would be passed to it.
    """
    model = dict(model)
    if "_target_" in model:
        from hydra.utils import instantiate

        if model.get("name") in MODELS:
            keys = ", ".join(k for k in model if k != "_target_")
            raise FRError(f"model._target_={model['_target_']!r} was added to model={model['name']}, whose keys "
                          f"({keys}) would be passed to it: use model=custom model._target_={model['_target_']} "
                          f"and +model.KEY=VALUE for its own arguments")
        try:
            blocks = instantiate(model, in_shape=tuple(in_shape), classes=classes)
        except Exception as e:  # user code: report, don't trace through fr_dist
            raise FRError(f"model._target_={model['_target_']!r} failed to build: {e}") from None
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise FRError(f"model._target_={model['_target_']!r} must return a non-empty list of nn.Module blocks")
        return blocks
    name = model.pop("name")
    if name not in MODELS:
        raise FRError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}, "
                      f"or your own with model=custom model._target_=pkg.fn")
    try:
        if name == "mlp":
            return mlp_blocks(in_shape, classes, **model)
        return resnet_blocks(int(name[len("resnet"):]), in_shape, classes, **model)
    except TypeError as e:
        raise FRError(f"model={name}: {e}") from None
