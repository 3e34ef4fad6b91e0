"""CIFAR-10/100 loader for the python-pickle archives (folder, .tar.gz, or a download)."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import torch

from fr_dist.data.fetch import download
from fr_dist.errors import FRError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

URL = "https://www.cs.toronto.edu/~kriz/"
CACHE_DIR = os.path.join("~", ".cache", "fr_dist", "cifar")
# classes -> (folder, archive, train files, test files, label key)
_LAYOUT = {
    10: ("cifar-10-batches-py", "cifar-10-python.tar.gz",
         [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], b"fine_labels"),
}


_download = download  # one name per module, so tests can replace it


def _extract(archive: str, dest: str) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FRError(
            f"cannot extract CIFAR archive {archive!r} ({type(e).__name__}: {e}); "
            "it is damaged or not a .tar.gz: delete it and download it again"
        ) from None


def _read_batch(path: str, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch as (uint8 [N, 3, 32, 32], int64 [N]); FRError if it is not one."""
    key = _LAYOUT[classes][4]
    bad = f"CIFAR-{classes} batch file {path!r}"
    fix = f"replace it with the file from {URL}{_LAYOUT[classes][1]}"
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise FRError(f"{bad} is missing; the extracted folder is incomplete: {fix}") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on garbage bytes
        raise FRError(f"{bad} cannot be unpickled ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(d, dict) or b"data" not in d or key not in d:
        have = ", ".join(sorted(map(repr, d))[:8]) if isinstance(d, dict) else f"a {type(d).__name__}"
        hint = ""
        if isinstance(d, dict) and classes == 10 and b"fine_labels" in d:
            hint = " (it looks like a CIFAR-100 file: use data=cifar100)"
        elif isinstance(d, dict) and classes == 100 and b"labels" in d:
            hint = " (it looks like a CIFAR-10 file: use data=cifar10)"
        raise FRError(f"{bad} is not a CIFAR-{classes} batch: needs keys b'data' and {key!r}, has {have}{hint}; {fix}")
    x, y = np.asarray(d[b"data"]), np.asarray(d[key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
        raise FRError(
            f"{bad} has data {x.dtype} {list(x.shape)} and labels {list(y.shape)}; expected "
            f"uint8 [N, 3072] and [N]; {fix}"
        )
    if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= classes)):
        raise FRError(f"{bad} has labels outside 0..{classes - 1}; {fix}")
    return torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y.astype(np.int64))


def _load(folder: str, names: list[str], classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(os.path.join(folder, n), classes) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def load_cifar(
    data_root: str | None, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 (``classes=10``) or CIFAR-100 (``classes=100``, fine labels).

    Returns ``(train_x, train_y, test_x, test_y)``: ``train_x`` uint8 ``[50000, 3, 32, 32]``,
    ``train_y`` int64 ``[50000]``, ``test_x`` uint8 ``[10000, 3, 32, 32]``, ``test_y`` int64.
    Uses ``data_root/<folder>`` (or ``data_root`` itself if it is that folder), else
    extracts ``data_root/<archive>.tar.gz``, else downloads the archive into ``data_root``
    (or ``~/.cache/fr_dist/cifar``); raises FRError when all of these fail.
    """
    if classes not in _LAYOUT:
        raise FRError(f"CIFAR has 10 or 100 classes, got classes={classes}; use data=cifar10 or data=cifar100")
    folder_name, archive_name, train, test, _ = _LAYOUT[classes]
    root = os.path.expanduser(str(data_root)) if data_root else os.path.expanduser(CACHE_DIR)
    folder, archive = os.path.join(root, folder_name), os.path.join(root, archive_name)
    candidates = [folder, root]
    found = next((c for c in candidates if all(os.path.isfile(os.path.join(c, n)) for n in train + test)), None)
    if found is None:
        if not os.path.isfile(archive):
            try:
                os.makedirs(root, exist_ok=True)
                _download(URL + archive_name, archive)
            except Exception as e:  # offline, DNS, HTTP error, read-only dir ...
                where = f"data.data_root={data_root!r}" if data_root else f"the cache {root!r} (data.data_root not set)"
                raise FRError(
                    f"CIFAR-{classes} not found: looked for the folder {folder!r} and the archive "
                    f"{archive!r} in {where}, and downloading {URL}{archive_name} failed "
                    f"({type(e).__name__}: {e}). Fix: set data.data_root=DIR to a folder holding "
                    f"{folder_name}/ or {archive_name}, or go online and run again"
                ) from None
        _extract(archive, root)
        found = folder
    train_x, train_y = _load(found, train, classes)
    test_x, test_y = _load(found, test, classes)
    return train_x, train_y, test_x, test_y
