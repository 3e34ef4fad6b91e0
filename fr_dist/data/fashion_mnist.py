"""Fashion-MNIST loader: data root, then the Debian package folder, then a download."""

from __future__ import annotations

import os

import torch

from fr_dist.data.idx import read_idx
from fr_dist.data.fetch import download
from fr_dist.errors import FRError

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CACHE_DIR = os.path.join("~", ".cache", "fr_dist", "fashion-mnist")
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


_download = download  # one name per module, so tests can replace it


def _find(folder: str, name: str) -> str | None:
    """The path of ``name`` (or ``name`` without ``.gz``) in ``folder``, else None."""
    for n in (name, name[: -len(".gz")]):
        p = os.path.join(folder, n)
        if os.path.isfile(p):
            return p
    return None


def _complete(folder: str) -> list[str] | None:
    paths = [_find(folder, n) for n in FILES]
    return None if None in paths else paths  # type: ignore[return-value]


def _load_pair(images_path: str, labels_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise FRError(
            f"{images_path!r} is not an image file: dtype {x.dtype}, shape {list(x.shape)} "
            "(expected uint8 [N, H, W]); check the file names in the data root"
        )
    if y.dim() != 1:
        raise FRError(
            f"{labels_path!r} is not a label file: shape {list(y.shape)} (expected [N]); "
            "check the file names in the data root"
        )
    if x.shape[0] != y.shape[0]:
        raise FRError(
            f"{images_path!r} has {x.shape[0]} images but {labels_path!r} has {y.shape[0]} "
            "labels; the files come from different sets or one is damaged: replace them"
        )
    y = y.to(torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > 9):
        raise FRError(
            f"{labels_path!r} has labels in [{int(y.min())}, {int(y.max())}], expected 0..9; "
            "it is not a Fashion-MNIST label file: replace it"
        )
    return x.unsqueeze(1).contiguous(), y


def load_fashion_mnist(
    data_root: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load Fashion-MNIST as ``(train_x, train_y, test_x, test_y)``.

    ``train_x`` uint8 ``[60000, 1, 28, 28]``, ``train_y`` int64 ``[60000]``, ``test_x``
    uint8 ``[10000, 1, 28, 28]``, ``test_y`` int64 ``[10000]`` (values 0..9).
    Looks in ``data_root`` (and its ``fashion-mnist/`` and ``fashion_mnist/`` folders),
    then in DEBIAN_DIR, then downloads the missing files into ``data_root`` (or
    ``~/.cache/fr_dist/fashion-mnist``); raises one FRError naming all three when all fail.
    """
    local = []
    if data_root:
        root = os.path.expanduser(str(data_root))
        local = [root, os.path.join(root, "fashion-mnist"), os.path.join(root, "fashion_mnist")]
        dest = root
    else:
        dest = os.path.expanduser(CACHE_DIR)
    paths = None
    for folder in (*local, DEBIAN_DIR, dest):
        paths = _complete(folder)
        if paths:
            break
    if paths is None:
        try:
            os.makedirs(dest, exist_ok=True)
            for name in FILES:
                if _find(dest, name) is None:
                    _download(URL + name, os.path.join(dest, name))
        except Exception as e:  # offline, DNS, HTTP error, read-only dir ...
            where = (
                f"data.data_root={data_root!r} (also its fashion-mnist/ and fashion_mnist/)"
                if data_root
                else "data.data_root (not set)"
            )
            raise FRError(
                f"Fashion-MNIST not found: looked in {where}, in {DEBIAN_DIR} and tried to "
                f"download {URL} into {dest!r}, which failed ({type(e).__name__}: {e}). "
                f"Fix: set data.data_root=DIR to a folder with {', '.join(FILES)}; or run "
                "`apt-get install dataset-fashion-mnist`; or go online and run again"
            ) from None
        paths = _complete(dest)
        assert paths is not None
    train_x, train_y = _load_pair(paths[0], paths[1])
    test_x, test_y = _load_pair(paths[2], paths[3])
    return train_x, train_y, test_x, test_y
