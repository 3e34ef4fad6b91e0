"""A user's datasets for the tests (data=custom data._target_=tests.data.userdata.FN): map-style, read by index."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from fr_dist.data.synthetic import make_synthetic


class Pairs(Dataset):
    """(x, y) pairs of two tensors, as a user's Dataset gives them: y a Python int; sample `fail_at` cannot be read."""

    def __init__(self, x, y, fail_at: int | None = None):
        self.x, self.y, self.fail_at = x, y, fail_at

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise ValueError(f"sample {i} is unreadable")
        return self.x[i], int(self.y[i])


def synthetic(shape, classes: int, train_size: int, test_size: int, seed: int, fail_at: int | None = None):
    """The tensors data=synthetic trains on with the same options, as two Datasets."""
    train_x, train_y, test_x, test_y = make_synthetic(tuple(shape), classes, train_size, test_size, seed)
    return Pairs(train_x, train_y, fail_at), Pairs(test_x, test_y)


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3), 0


class Returns(Dataset):
    """A dataset whose every sample is `value`."""

    def __init__(self, value, n: int = 16):
        self.value, self.n = value, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.value


def broken(kind: str):
    """A user's fn that gets something wrong, one way per `kind`."""
    good = Returns((torch.zeros(3), 1))
    if kind == "raises":
        raise OSError("no such folder: /nowhere")
    return {
        "one": good,
        "iterable": (Stream(), good),
        "empty_test": (good, Returns((torch.zeros(3), 1), n=0)),
        "small": (Returns((torch.zeros(3), 1), n=4), good),
        "unreadable": (Pairs(torch.zeros(16, 3), torch.zeros(16), fail_at=0), good),
        "not_a_pair": (Returns({"x": torch.zeros(3), "y": 1}), good),
        "x_list": (Returns(([0.0, 1.0, 2.0], 1)), good),
        "x_float64": (Returns((np.zeros(3), 1)), good),
        "y_float": (Returns((torch.zeros(3), 0.5)), good),
        "y_range": (good, Returns((torch.zeros(3), 7))),
        "test_shape": (good, Returns((torch.zeros(4), 1))),
    }[kind]


class Windows(Dataset):
    """Token windows (x, y) with a target per position, as a user's text dataset gives them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i].long(), self.y[i].long()


def text(root: str, seq_len: int):
    """data=python_docs' windows of the corpus at `root`, as two Datasets (read through the DataLoader path)."""
    from fr_dist.data.text import read_corpus, windows

    train, val = read_corpus(root)
    return Windows(*windows(train, seq_len)), Windows(*windows(val, seq_len))
