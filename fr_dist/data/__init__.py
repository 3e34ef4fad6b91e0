"""Datasets in memory, and batches by batch id (the sampler: order.BatchOrder)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from fr_dist.checks import int_list, integer, reason, show
from fr_dist.data.augment import augment
from fr_dist.data.order import BatchOrder, pad
from fr_dist.errors import FRError

# Input shape (C, H, W) of each real dataset; synthetic data takes data.shape, custom data its sample 0's.
SHAPES = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
# The keys only some datasets take: the others refuse them when changed.
OWN_KEYS = {"synthetic": ("shape", "classes", "train_size", "test_size"),
            "custom": ("_target_", "classes", "args", "workers", "prefetch_factor"),
            "python_docs": ("seq_len",)}
TEXT = ("python_docs",)  # token datasets: inputs and labels are windows of byte ids (data/text.py)


def check_options(data, batch_size: int) -> tuple[int, ...] | None:
    """Refuse bad `data` options (config.DataConfig) at start-up; the input shape the model gets.

    A real dataset's size is checked against batch_size when it is loaded, and
    a user's dataset (data=custom, shape None here) there as well.
    """
    from fr_dist.config import DataConfig

    default = DataConfig()
    for key in dict.fromkeys(k for keys in OWN_KEYS.values() for k in keys):
        owners = [name for name, keys in OWN_KEYS.items() if key in keys]
        if data.name not in owners and getattr(data, key) != getattr(default, key):
            raise FRError(f"data.{key}={show(getattr(data, key))} applies to "
                          f"{' and '.join(f'data={o}' for o in owners)} only; data={data.name} has its own: "
                          f"remove the override")
    if data.name == "custom":
        return check_custom(data)
    if data.name in TEXT:
        integer("data.seq_len", data.seq_len)
        if data.augment:
            raise FRError("data.augment=true crops and flips images; text has none: set data.augment=false")
        return (data.seq_len,)
    if data.name != "synthetic":
        return SHAPES[data.name]
    int_list("data.shape", data.shape, [3, 32, 32], empty=False)
    integer("data.classes", data.classes, low=2)
    integer("data.train_size", data.train_size)
    integer("data.test_size", data.test_size)
    if batch_size > data.train_size:
        raise FRError(f"batch_size={batch_size} is larger than data.train_size={data.train_size}: "
                      f"use batch_size <= {data.train_size} or more training samples")
    if data.augment and len(data.shape) != 3:
        raise FRError(f"data.augment=true crops and flips images, but data.shape={show(data.shape)} is not "
                      f"(C, H, W): set data.augment=false or a shape like data.shape=[3,32,32]")
    return tuple(data.shape)


def check_custom(data) -> None:
    """data=custom: the options; the datasets themselves are checked when loaded (custom.load_custom)."""
    if not data._target_:
        raise FRError("data._target_ is not set: give it on the command line, e.g. data._target_=pkg.fn returning "
                      "(train, test) datasets")
    for key, value in (("augment", data.augment), ("data_root", data.data_root)):
        if value:
            raise FRError(f"data.{key}={show(value)} applies to the built-in datasets, not data=custom: remove it "
                          f"and do it in your datasets (their paths and options: +data.args.KEY=VALUE)")
    integer("data.classes", data.classes, low=2)
    integer("data.workers", data.workers, low=0, fix="set data.workers=0 (read in the rank's own process) or more")
    integer("data.prefetch_factor", data.prefetch_factor)


class Batches(BatchOrder):
    """Training and test batches of one dataset in memory, addressed by batch id."""

    def __init__(self, train_x, train_y, test_x, test_y, classes: int, batch_size: int, seed: int,
                 mean=None, std=None, augment: bool = False, tokens: bool = False):
        super().__init__(len(train_y), len(test_y), batch_size, seed)
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        self.classes, self.augment = classes, augment
        self.tokens = tokens  # inputs and labels are token ids (N, T): int64, no normalisation
        self.in_dtype = torch.int64 if tokens else torch.float32  # what stage 0 gets (images are normalised)
        c = train_x.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) if mean else None
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) if std else None
        self._prefetch = None  # (batch, future) of the next training inputs
        self.pin = False  # CUDA stages: prefetched inputs in pinned memory, so the copy to the GPU is asynchronous
        self._pool: ThreadPoolExecutor | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return x.long()
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def inputs(self, batch: int, prefetch: bool = True) -> torch.Tensor:
        """Float inputs of training batch `batch`, augmented when configured.

        Training asks for batches in order, so the next one is prepared in a
        background thread while the stage computes: off the critical path.
        """
        if not prefetch:
            return self._make_inputs(batch)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fr_dist-data")
        ready = self._prefetch
        x = ready[1].result() if ready and ready[0] == batch else self._make_inputs(batch)
        self._prefetch = (batch + 1, self._pool.submit(self._make_inputs, batch + 1))
        return x

    def _make_inputs(self, batch: int) -> torch.Tensor:
        x = self.train_x[self.indices(batch)]
        if self.augment:
            # Its own generator: the global RNG belongs to dropout and its replay.
            x = augment(x, torch.Generator().manual_seed(self.seed * 1_000_003 + batch))
        x = self._normalize(x)
        return x.pin_memory() if self.pin else x

    def labels(self, batch: int) -> torch.Tensor:
        return self.train_y[self.indices(batch)].long()

    def test_inputs(self, e: int) -> torch.Tensor:
        """Test batch e, zero-padded to batch_size so that it fits the links."""
        return pad(self._normalize(self.test_x[e * self.batch_size:(e + 1) * self.batch_size]), self.batch_size)

    def test_labels(self, e: int) -> torch.Tensor:
        """Labels of the real samples of test batch e (fewer than batch_size at the end)."""
        return self.test_y[e * self.batch_size:(e + 1) * self.batch_size].long()


def load(data, batch_size: int, seed: int) -> Batches:
    """Batches for the `data` config section (see config.DataConfig)."""
    if data.name == "custom":
        from fr_dist.data.custom import load_custom

        return load_custom(data, batch_size, seed)
    if data.name == "synthetic":
        from fr_dist.data.synthetic import make_synthetic

        check_options(data, batch_size)
        try:
            tensors = make_synthetic(tuple(data.shape), data.classes, data.train_size, data.test_size, seed)
        except (RuntimeError, MemoryError) as e:  # sizes beyond this machine's memory
            raise FRError(f"synthetic data of {data.train_size} + {data.test_size} samples of shape {show(data.shape)} "
                          f"does not fit in memory ({reason(e)}): lower data.train_size, "
                          f"data.test_size or data.shape") from None
        return Batches(*tensors, data.classes, batch_size, seed, augment=data.augment)
    if data.name in TEXT:
        from fr_dist.data.text import VOCAB, read_corpus, windows

        check_options(data, batch_size)
        train, val = read_corpus(data.data_root)
        return Batches(*windows(train, data.seq_len), *windows(val, data.seq_len), VOCAB, batch_size, seed,
                       tokens=True)
    if data.name == "fashion_mnist":
        from fr_dist.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

        tensors = load_fashion_mnist(data.data_root)
        return Batches(*tensors, 10, batch_size, seed, FASHION_MNIST_MEAN, FASHION_MNIST_STD, data.augment)
    from fr_dist.data import cifar

    classes = 10 if data.name == "cifar10" else 100
    mean, std = (cifar.CIFAR10_MEAN, cifar.CIFAR10_STD) if classes == 10 else (cifar.CIFAR100_MEAN, cifar.CIFAR100_STD)
    return Batches(*cifar.load_cifar(data.data_root, classes), classes, batch_size, seed, mean, std, data.augment)
