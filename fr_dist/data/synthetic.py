"""Deterministic random data with a learnable rule, for tests and benchmarks."""

from __future__ import annotations

import math

import torch


def make_synthetic(shape, classes: int, train_size: int, test_size: int, seed: int):
    """(train_x, train_y, test_x, test_y): x ~ N(0, 1) of `shape`, y = argmax(W x).

    The labels of a fixed random linear teacher W make the task learnable. The
    same seed gives the same tensors on every rank.
    """
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(classes, math.prod(shape), generator=g)
    x = torch.randn(train_size + test_size, *shape, generator=g)
    y = (x.flatten(1) @ teacher.T).argmax(1)
    return x[:train_size], y[:train_size], x[train_size:], y[train_size:]
