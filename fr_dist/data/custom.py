"""A user's datasets: `data=custom data._target_=pkg.fn data.classes=N +data.args.KEY=VALUE`.

fn(**data.args) returns (train, test), map-style torch.utils.data.Datasets of
(x, y) pairs. They are checked once at start-up on sample 0 of each, so that a
wrong dataset is one message naming the target, not a traceback at the first
step; the batches are then read by loader.DatasetBatches.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from fr_dist.checks import is_int, reason
from fr_dist.data.loader import DatasetBatches, failure
from fr_dist.errors import FRError

# What the model can take as is: float32 features, or integer token ids.
INPUT_DTYPES = (torch.float32, torch.int32, torch.int64)


def locate(target: str):
    module, _, name = target.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name) if module else None
    except Exception as e:  # ImportError, AttributeError, or the module's own import-time error
        raise FRError(f"data._target_={target!r} cannot be imported ({type(e).__name__}: {reason(e)}): give the "
                      f"dotted name of a function, module.fn, in a module on the Python path (PYTHONPATH)") from None
    if not callable(fn):
        raise FRError(f"data._target_={target!r} is not a function: give the dotted name module.fn of one that "
                      f"returns (train, test) datasets")
    return fn


def sample(dataset, which: str, what: str):
    """Sample 0 of `dataset` as (x tensor, y), checked to be an (x, y) pair fr_dist can batch."""
    try:
        pair = dataset[0]
    except Exception as e:
        raise FRError(f"{what}: reading {which} sample 0 failed: {failure(e)}; fix the dataset's __getitem__") from None
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise FRError(f"{what}: {which} sample 0 is a {type(pair).__name__}, not an (x, y) pair: make __getitem__ "
                      f"return (input, label)")
    x, y = pair
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise FRError(f"{what}: the input x of {which} sample 0 is a {type(x).__name__}: make it a torch.Tensor or "
                      f"a numpy array")
    x = torch.as_tensor(x)
    if x.dtype not in INPUT_DTYPES:
        raise FRError(f"{what}: the input x of {which} sample 0 is {x.dtype}; the model takes float32 inputs (or "
                      f"int32/int64 token ids): convert it in __getitem__, e.g. x.astype(numpy.float32) "
                      f"(raw uint8 pixels: / 255)")
    integral = is_int(y) or isinstance(y, np.integer) or (
        isinstance(y, (torch.Tensor, np.ndarray)) and y.ndim <= 1 and not torch.as_tensor(y).is_floating_point()
        and torch.as_tensor(y).dtype != torch.bool)
    if not integral:
        raise FRError(f"{what}: the label y of {which} sample 0 is {y!r:.60}; it must be an integer class index "
                      f"(an int, or a 0-d or 1-d integer tensor)")
    return x, torch.as_tensor(y)


def load_custom(data, batch_size: int, seed: int) -> DatasetBatches:
    target = data._target_
    what = f"data._target_={target!r}"
    fn = locate(target)
    try:
        made = fn(**data.args)
    except Exception as e:  # user code: report, don't trace through fr_dist
        raise FRError(f"{what} failed: {type(e).__name__}: {reason(e)}; check it and its arguments "
                      f"(+data.args.KEY=VALUE)") from None
    if not isinstance(made, (tuple, list)) or len(made) != 2:
        raise FRError(f"{what} returned a {type(made).__name__}; it must return (train, test), two map-style "
                      f"torch.utils.data.Dataset")
    for which, dataset in zip(("training", "test"), made):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise FRError(f"{what}: its {which} dataset, a {type(dataset).__name__}, has no __getitem__ and __len__: "
                          f"fr_dist reads samples by index; return a map-style torch.utils.data.Dataset")
    train, test = made
    if len(test) == 0:
        raise FRError(f"{what}: its test dataset is empty: return at least one test sample")
    x, y = sample(train, "training", what)
    test_x, test_y = sample(test, "test", what)
    if test_x.shape != x.shape or test_x.dtype != x.dtype:
        raise FRError(f"{what}: test sample 0 is {test_x.dtype} {tuple(test_x.shape)}, training sample 0 "
                      f"{x.dtype} {tuple(x.shape)}: both datasets must give inputs of one shape and dtype")
    for which, labels in (("training", y), ("test", test_y)):
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < data.classes):
            raise FRError(f"{what}: {which} sample 0 has the label {labels.tolist()}, outside [0, "
                          f"data.classes={data.classes}): set data.classes to the number of classes")
    batches = DatasetBatches(train, test, data.classes, batch_size, seed, tuple(x.shape), x.dtype, data.workers,
                             data.prefetch_factor, target)
    batches.tokens = y.ndim == 1 and x.ndim >= 1 and len(y) == x.shape[0]  # a label per position: a sequence model
    return batches
