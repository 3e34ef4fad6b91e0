"""Tests for the dataset readers (IDX, Fashion-MNIST, CIFAR) and batch augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from fr_dist.data import cifar, fashion_mnist
from fr_dist.data.augment import augment
from fr_dist.data.idx import read_idx
from fr_dist.errors import FRError

# ---------------------------------------------------------------- IDX / Fashion-MNIST


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr: np.ndarray) -> None:
    data = idx_bytes(arr)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / name, arr)
    t = read_idx(str(tmp_path / name))
    assert t.dtype == torch.uint8 and t.shape == (5, 4, 3)
    assert np.array_equal(t.numpy(), arr)
    t[0, 0, 0] = 1  # writable


def test_idx_int32_big_endian(tmp_path):
    arr = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "x", arr)
    t = read_idx(str(tmp_path / "x"))
    assert t.dtype == torch.int32 and t.tolist() == [1, -2, 70000]


def test_idx_truncated(tmp_path):
    p = tmp_path / "t-idx3-ubyte"
    p.write_bytes(idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5])
    with pytest.raises(FRError, match=r"t-idx3-ubyte.*truncated.*48 payload bytes, found 43"):
        read_idx(str(p))


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "m-idx1-ubyte"
    p.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(FRError, match=r"m-idx1-ubyte.*bad magic 01000801"):
        read_idx(str(p))


def test_idx_bad_gzip_and_missing(tmp_path):
    p = tmp_path / "g-idx1-ubyte.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(FRError, match=r"g-idx1-ubyte.gz.*not a valid gzip"):
        read_idx(str(p))
    full = gzip.compress(idx_bytes(np.zeros(100, np.uint8)))
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(FRError, match=r"not a valid gzip"):
        read_idx(str(p))
    with pytest.raises(FRError, match=r"nope.*does not exist"):
        read_idx(str(tmp_path / "nope"))


def write_fmnist(folder, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return arrays


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Debian folder, no cache, and every download fails."""
    def fail(url, dest):
        raise OSError("network is unreachable")
    monkeypatch.setattr(fashion_mnist, "_download", fail)
    monkeypatch.setattr(cifar, "_download", fail)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", str(tmp_path / "no-cache"))
    monkeypatch.setattr(cifar, "CACHE_DIR", str(tmp_path / "no-cache-cifar"))


def check_fmnist(out, arrays):
    train_x, train_y, test_x, test_y = out
    n, m = len(arrays["train-labels-idx1-ubyte"]), len(arrays["t10k-labels-idx1-ubyte"])
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.int64
    assert train_x.shape == (n, 1, 28, 28) and test_x.shape == (m, 1, 28, 28)
    assert train_y.shape == (n,) and test_y.shape == (m,)
    assert np.array_equal(train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("sub,gz", [("", True), ("", False), ("fashion-mnist", True), ("fashion_mnist", False)])
def test_fashion_mnist_from_data_root(tmp_path, offline, sub, gz):
    arrays = write_fmnist(tmp_path / "root" / sub if sub else tmp_path / "root", gz=gz)
    check_fmnist(fashion_mnist.load_fashion_mnist(str(tmp_path / "root")), arrays)


def test_fashion_mnist_debian_and_download(tmp_path, offline, monkeypatch):
    arrays = write_fmnist(tmp_path / "deb", seed=1)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "deb"))
    check_fmnist(fashion_mnist.load_fashion_mnist(str(tmp_path / "empty")), arrays)
    check_fmnist(fashion_mnist.load_fashion_mnist(None), arrays)

    # Download path: the fake download copies from a "server" folder into the data root.
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    server = write_fmnist(tmp_path / "server", seed=2)
    urls = []

    def fake_download(url, dest):
        urls.append(url)
        name = url.rsplit("/", 1)[1]
        with open(tmp_path / "server" / name, "rb") as src, open(dest, "wb") as out:
            out.write(src.read())

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    check_fmnist(fashion_mnist.load_fashion_mnist(str(tmp_path / "dl")), server)
    assert sorted(urls) == sorted(fashion_mnist.URL + n for n in fashion_mnist.FILES)
    assert sorted(os.listdir(tmp_path / "dl")) == sorted(fashion_mnist.FILES)


def test_fashion_mnist_missing_names_all_three_places(tmp_path, offline):
    root = str(tmp_path / "nothing")
    with pytest.raises(FRError) as ei:
        fashion_mnist.load_fashion_mnist(root)
    msg = str(ei.value)
    assert root in msg and fashion_mnist.DEBIAN_DIR in msg and fashion_mnist.URL in msg
    assert "network is unreachable" in msg
    assert "data.data_root=" in msg and "apt-get install dataset-fashion-mnist" in msg and "online" in msg
    with pytest.raises(FRError, match=r"data.data_root \(not set\).*no-debian.*no-cache"):
        fashion_mnist.load_fashion_mnist(None)


def test_fashion_mnist_count_mismatch(tmp_path, offline):
    write_fmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(FRError, match=r"t10k-images.*4 images but .*t10k-labels.*3 labels"):
        fashion_mnist.load_fashion_mnist(str(tmp_path))


# ---------------------------------------------------------------- CIFAR


def write_cifar(root, classes, n=3, seed=0, archive=False):
    """Write a tiny CIFAR-10/100 pickle folder (or its .tar.gz); return the expected arrays."""
    rng = np.random.default_rng(seed)
    folder_name, archive_name, train, test, key = cifar._LAYOUT[classes]
    folder = root / folder_name
    folder.mkdir(parents=True)
    xs, ys = {}, {}
    for name in train + test:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, n).tolist()
        d = {b"batch_label": b"x", b"data": x, key: y}
        if classes == 100:
            d[b"coarse_labels"] = [v // 5 for v in y]
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
        xs[name], ys[name] = x, y
    if archive:
        with tarfile.open(root / archive_name, "w:gz") as tar:
            tar.add(folder, arcname=folder_name)
        for name in train + test:
            (folder / name).unlink()
        folder.rmdir()
    cat = lambda names: (np.concatenate([xs[k] for k in names]), sum((ys[k] for k in names), []))
    return cat(train), cat(test)


def check_cifar(out, expected, n_train, n_test):
    train_x, train_y, test_x, test_y = out
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.int64
    assert train_x.shape == (n_train, 3, 32, 32) and test_x.shape == (n_test, 3, 32, 32)
    (trx, try_), (tex, tey) = expected
    assert np.array_equal(train_x.reshape(n_train, -1).numpy(), trx)
    assert np.array_equal(test_x.reshape(n_test, -1).numpy(), tex)
    assert train_y.tolist() == try_ and test_y.tolist() == tey
    # channel-major layout: the first 1024 bytes of a row are the red plane
    assert np.array_equal(train_x[0, 0].numpy().ravel(), trx[0, :1024])


@pytest.mark.parametrize("classes,n_train", [(10, 15), (100, 3)])
@pytest.mark.parametrize("archive", [False, True])
def test_cifar_reads_what_was_written(tmp_path, offline, classes, n_train, archive):
    expected = write_cifar(tmp_path, classes, archive=archive)
    check_cifar(cifar.load_cifar(str(tmp_path), classes), expected, n_train, 3)
    if archive:  # extracted next to the archive, reused next time
        assert (tmp_path / cifar._LAYOUT[classes][0] / cifar._LAYOUT[classes][3][0]).is_file()
        check_cifar(cifar.load_cifar(str(tmp_path), classes), expected, n_train, 3)


def test_cifar_data_root_is_the_folder(tmp_path, offline):
    expected = write_cifar(tmp_path, 10)
    check_cifar(cifar.load_cifar(str(tmp_path / "cifar-10-batches-py"), 10), expected, 15, 3)


def test_cifar100_file_given_for_cifar10(tmp_path, offline):
    write_cifar(tmp_path, 10)
    src = tmp_path / "c100"
    write_cifar(src, 100)
    os.replace(src / "cifar-100-python" / "test", tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(FRError, match=r"test_batch.*not a CIFAR-10 batch.*looks like a CIFAR-100 file"):
        cifar.load_cifar(str(tmp_path), 10)


def test_cifar_garbage_and_bad_shapes(tmp_path, offline):
    write_cifar(tmp_path, 10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(b"\x00garbage bytes, not a pickle")
    with pytest.raises(FRError, match=r"data_batch_2.*cannot be unpickled"):
        cifar.load_cifar(str(tmp_path), 10)
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(FRError, match=r"data_batch_2.*uint8 \[N, 3072\]"):
        cifar.load_cifar(str(tmp_path), 10)
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(FRError, match=r"data_batch_2.*labels outside 0..9"):
        cifar.load_cifar(str(tmp_path), 10)


def test_cifar_bad_archive(tmp_path, offline):
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"garbage")
    with pytest.raises(FRError, match=r"cannot extract.*cifar-100-python.tar.gz"):
        cifar.load_cifar(str(tmp_path), 100)
    # a valid .tar.gz that holds something else
    (tmp_path / "other.txt").write_text("hello")
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "other.txt", arcname="other.txt")
    with pytest.raises(FRError, match=r"cifar-100-python.*train.*missing"):
        cifar.load_cifar(str(tmp_path), 100)


def test_cifar_missing_offline(tmp_path, offline):
    root = str(tmp_path / "nothing")
    with pytest.raises(FRError) as ei:
        cifar.load_cifar(root, 10)
    msg = str(ei.value)
    assert os.path.join(root, "cifar-10-batches-py") in msg
    assert os.path.join(root, "cifar-10-python.tar.gz") in msg
    assert cifar.URL in msg and "data.data_root=" in msg and "online" in msg
    with pytest.raises(FRError, match="10 or 100"):
        cifar.load_cifar(root, 20)


# ---------------------------------------------------------------- augment


def reference_augment(x, seed, pad, flip):
    """Plain per-sample loop, drawing the documented random numbers in the same order."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    f = torch.randint(0, 2, (b,), generator=g) if flip else torch.zeros(b, dtype=torch.long)
    out = torch.empty_like(x)
    for i in range(b):
        p = torch.zeros((c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
        p[:, pad : pad + h, pad : pad + w] = x[i]
        crop = p[:, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = crop.flip(-1) if f[i] else crop
    return out, oy, ox, f


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.int64])
@pytest.mark.parametrize("pad,flip", [(4, True), (2, False), (0, True), (1, True)])
def test_augment_matches_reference(dtype, pad, flip):
    x = torch.randint(1, 200, (512, 3, 6, 5)).to(dtype)
    out = augment(x, torch.Generator().manual_seed(7), pad=pad, flip=flip)
    ref, oy, ox, f = reference_augment(x, 7, pad, flip)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, ref)
    centre = (oy == pad) & (ox == pad)
    if flip:
        both = torch.nonzero(centre & (f == 1)).flatten()
        assert len(both) > 0
        for i in both:
            assert torch.equal(out[i], x[i].flip(-1))
    for i in torch.nonzero(centre & (f == 0)).flatten():
        assert torch.equal(out[i], x[i])


def test_augment_deterministic_and_seed_dependent():
    x = torch.rand(16, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_identity_and_global_rng_untouched():
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    state = torch.get_rng_state()
    out = augment(x, torch.Generator().manual_seed(3), pad=0, flip=False)
    assert torch.equal(out, x)
    augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)


def test_augment_pads_with_zeros():
    x = torch.ones(200, 1, 4, 4)
    out = augment(x, torch.Generator().manual_seed(0), pad=2)
    # a crop shifted by the maximum offset keeps only a 2x2 corner of ones
    assert out.sum(dim=(1, 2, 3)).min() == 4 and out.sum(dim=(1, 2, 3)).max() == 16
