"""Models as lists of blocks: the unit that partitions split into stages."""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from fr_dist.checks import int_list, integer, probability, reason, show
from fr_dist.errors import FRError
from fr_dist.models.gpt import gpt_blocks
from fr_dist.models.mlp import mlp_blocks
from fr_dist.models.resnet import RESNET_DEPTHS, resnet_blocks

MODELS = ("mlp", "gpt") + tuple(f"resnet{d}" for d in RESNET_DEPTHS)
BUILDERS = {"mlp": mlp_blocks, "gpt": gpt_blocks}  # the ResNets: resnet_blocks(depth, ...)

# The checks of each built-in option (its keyword argument of mlp_blocks or resnet_blocks).
OPTION_CHECKS = {
    "hidden": lambda v: int_list("model.hidden", v, [64, 64, 64]),
    "dropout": lambda v: probability("model.dropout", v, 0.1),
    "width": lambda v: integer("model.width", v),
    "n_layer": lambda v: integer("model.n_layer", v),
    "n_head": lambda v: integer("model.n_head", v),
    "n_embd": lambda v: integer("model.n_embd", v),
    "block_size": lambda v: integer("model.block_size", v),
}


def options(name: str) -> list[str]:
    """The keys model=NAME takes besides `name`: the keyword arguments of its builder."""
    fn = BUILDERS.get(name, resnet_blocks)
    return [p for p in inspect.signature(fn).parameters if p not in ("depth", "in_shape", "classes")]


def check_options(model: dict, in_shape: tuple[int, ...] | None, tokens: bool = False) -> None:
    """Refuse a built-in model's unknown or bad options, or inputs it cannot take (config.validate calls it).

    A user's model (``_target_``) is checked when it is built; the input shape
    of a user's data (None here) when it is loaded (build.stage_blocks).
    """
    if "_target_" in model:
        return
    name = model["name"]
    if name not in MODELS:
        raise FRError(f"unknown model {show(name)}: choose one of {', '.join(MODELS)}, or give model._target_")
    known = options(name)
    for key, value in model.items():
        if key == "name":
            continue
        if key not in known:
            raise FRError(f"model.{key}={show(value)} is not an option of model={name} "
                          f"(its options: {', '.join(known)}): remove it")
        OPTION_CHECKS[key](value)
    if name == "gpt":
        if in_shape is not None:  # a user's data: checked once loaded (build.stage_blocks)
            _check_gpt(model, in_shape, tokens)
        return
    if tokens and in_shape is not None:
        raise FRError(f"model={name} takes float features, but the data are token ids: use model=gpt for text")
    if name != "mlp" and in_shape is not None and len(in_shape) != 3:
        raise FRError(f"model={name} needs images (C, H, W), but the data's shape is {show(list(in_shape))}: "
                      f"set data.shape=[C,H,W] (e.g. data.shape=[3,32,32]) or use model=mlp")


def _check_gpt(model: dict, in_shape: tuple[int, ...], tokens: bool) -> None:
    if not tokens:
        raise FRError("model=gpt reads token ids, but the data are float features: use a text dataset "
                      "(data=python_docs) or your own data of token ids")
    defaults = inspect.signature(gpt_blocks).parameters
    value = {key: model.get(key, defaults[key].default) for key in ("n_head", "n_embd", "block_size")}
    if value["n_embd"] % value["n_head"]:
        raise FRError(f"model.n_embd={value['n_embd']} must be a multiple of model.n_head={value['n_head']} "
                      f"(each head gets n_embd / n_head features): change one of them")
    if in_shape[0] > value["block_size"]:
        raise FRError(f"windows of data.seq_len={in_shape[0]} tokens are longer than model.block_size="
                      f"{value['block_size']} positions: set data.seq_len <= {value['block_size']} or "
                      f"model.block_size={in_shape[0]}")


def probe(blocks: list[nn.Module], in_shape, classes: int, what: str, tokens: bool = False) -> None:
    """Run a user's blocks once on two zero samples (eval mode, no gradient, the global RNG untouched).

    A block that fails, or an output that is no (2, classes) tensor ((2, T, classes) for a sequence model on
    token ids, `tokens`), is one FRError at start-up instead of a traceback at the first step.
    """
    x = torch.zeros(2, *in_shape, dtype=torch.int64 if tokens else torch.float32)  # token id 0 is a valid id
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for i, block in enumerate(blocks):
            training = block.training
            block.eval()
            try:
                x = block(x)
            except Exception as e:
                raise FRError(f"{what}: block {i} fails on inputs of shape {tuple(x.shape)}: "
                              f"{type(e).__name__}: {reason(e)}") from None
            finally:
                block.train(training)
            if not isinstance(x, torch.Tensor):
                raise FRError(f"{what}: block {i} returns a {type(x).__name__}; every block must return one tensor")
    want = (2, *in_shape, classes) if tokens else (2, classes)
    if tuple(x.shape) != want:
        shape = "(2, T, classes=" if tokens else "(2, classes="
        raise FRError(f"{what}: the last block returns shape {tuple(x.shape)} for 2 samples; it must return "
                      f"{shape}{classes}) scores")


def feature_dims(model: dict) -> int | None:
    """Dimensions of the features between stages, batch included: 2 (mlp), 3 (gpt), 4 (ResNets), None (a user's
    model)."""
    if "_target_" in model:
        return None
    return {"mlp": 2, "gpt": 3}.get(model["name"], 4)


def build_blocks(model: dict, in_shape: tuple[int, ...], classes: int, tokens: bool = False) -> list[nn.Module]:
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
        probe(blocks, in_shape, classes, f"model._target_={model['_target_']!r}", tokens)
        return blocks
    name = model.pop("name")
    if name not in MODELS:
        raise FRError(f"unknown model {show(name)}: choose one of {', '.join(MODELS)}, "
                      f"or your own with model=custom model._target_=pkg.fn")
    try:
        if name in BUILDERS:
            return BUILDERS[name](in_shape, classes, **model)
        return resnet_blocks(int(name[len("resnet"):]), in_shape, classes, **model)
    except TypeError as e:
        raise FRError(f"model={name}: {e}") from None
    except (RuntimeError, MemoryError) as e:  # sizes beyond this machine's memory
        sizes = " ".join(f"model.{k}={show(v)}" for k, v in model.items()) or "its defaults"
        raise FRError(f"model={name} with {sizes} does not fit in memory ({reason(e)}): "
                      f"lower its sizes") from None
