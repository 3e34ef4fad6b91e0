"""A user's map-style Datasets, read in batch-id order by DataLoader worker processes.

The batch sampler yields, for batch ids start, start+1, ..., exactly the
indices BatchOrder gives, so the batches equal the in-memory path's for the
same samples. Workers read `prefetch_factor` batches each ahead of the one
training asks for: the reads are off the critical path and the data need not
fit in memory.

Training asks in order (stage 0 inputs(b), the last stage labels(b)); each
read is an (x, y) batch and the last one is kept, so with K = 1 inputs(b) and
labels(b) read batch b once. A request behind the stream (the diagnostic's
older batches) or with prefetch=False is read directly in this process and
leaves the stream as it is; any other jump (the first request, a resumed
run's first batch, every evaluation's start) restarts the stream there. The
workers persist across restarts, so an evaluation does not start processes.
"""

from __future__ import annotations

import sys
import traceback
import weakref
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Sampler

from fr_dist.checks import reason
from fr_dist.data.order import BatchOrder, pad
from fr_dist.errors import FRError


class BatchIds(Sampler):
    """Index lists of batch ids start, start + step, ... (up to stop, or forever) for a DataLoader's batch_sampler."""

    def __init__(self, indices_of, step: int, stop: int | None):
        self.indices_of, self.step, self.stop, self.start = indices_of, step, stop, 0

    def __iter__(self):
        b = self.start
        while self.stop is None or b < self.stop:
            yield list(self.indices_of(b))
            b += self.step


def failure(e: BaseException) -> str:
    """What went wrong in one line; a worker's exception arrives with its traceback as text, whose last line it is."""
    text = str(e).strip()
    if "Original Traceback" in text:
        return text.splitlines()[-1][:300]
    return f"{type(e).__name__}: {reason(e)}"


def weakly(method):
    """`method`, holding its object weakly: a DataLoader iterator with live workers must not sit in a reference
    cycle (DatasetBatches -> Reader -> sampler -> DatasetBatches), whose collection waits 5 s per worker."""
    ref = weakref.WeakMethod(method)
    return lambda *args: ref()(*args)


class Reader:
    """The (x, y) batches of one Dataset by id: a DataLoader stream in order, direct reads off it."""

    def __init__(self, dataset, indices_of, step: int, stop: int | None, workers: int, prefetch_factor: int,
                 pin: bool, seed: int, what: str):
        self.dataset, self.indices_of, self.pin, self.seed, self.what = dataset, indices_of, pin, seed, what
        self.sampler = BatchIds(indices_of, step, stop)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=workers, pin_memory=pin,
                                 persistent_workers=workers > 0, prefetch_factor=prefetch_factor if workers else None,
                                 generator=self.generator())
        self.stream, self.next = None, None  # the iterator and the id it yields next
        self.held = None, None  # the last batch read from the stream: id, (x, y)

    def read(self, b: int, prefetch: bool = True):
        if b == self.held[0]:
            return self.held[1]
        if not prefetch or (self.stream is not None and b < self.next):
            return self._guarded(b, direct=True)
        if self.stream is None or b != self.next:
            self.sampler.start = b
            self.stream = iter(self.loader)
        self.next = b + self.sampler.step
        self.held = b, self._guarded(b, direct=False)
        return self.held[1]

    def generator(self) -> torch.Generator:
        """A DataLoader's own: without one, each iterator draws its workers' seed from the global RNG, which
        belongs to dropout and its replay."""
        return torch.Generator().manual_seed(self.seed)

    def _direct(self, b: int):
        """Batch b in this process, fetched and collated exactly as a worker does."""
        return next(iter(DataLoader(self.dataset, batch_sampler=[list(self.indices_of(b))], pin_memory=self.pin,
                                    generator=self.generator())))

    def _guarded(self, b: int, direct: bool):
        """Batch b, read directly or from the stream; a failing read is one FRError, after the workers are shut
        down (none outlives the rank, which may leave with os._exit)."""
        try:
            return self._direct(b) if direct else next(self.stream)
        except Exception as e:
            why = failure(e)
            traceback.clear_frames(e.__traceback__)  # its frames hold the iterator in a cycle with the exception
        self.close()  # the iterator's last reference: it shuts its workers down now
        raise FRError(f"{self.what} batch {b} failed: {why}; fix the dataset (its __getitem__) and run again")

    def close(self) -> None:
        with quiet_worker_exit():
            self.stream = self.loader = None  # the last references: the iterator shuts its workers down
        self.held = None, None


def _killed_worker(unraisable) -> bool:
    """A DataLoader iterator's __del__ that saw a worker die while it shut them down."""
    return (isinstance(unraisable.exc_value, RuntimeError) and "DataLoader worker" in str(unraisable.exc_value)
            and getattr(unraisable.object, "__qualname__", "").endswith("__del__"))


@contextmanager
def quiet_worker_exit():
    """Closing after a failed read, a rank waits for its workers; a peer's failure meanwhile makes torchrun
    terminate them, and the iterator's __del__ then reports their deaths as an ignored exception with a
    traceback. That death is expected and the rank's error is already said: drop exactly that report."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _killed_worker(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


class DatasetBatches(BatchOrder):
    """Training and test batches of a user's (train, test) Datasets of (x, y) pairs, addressed by batch id.

    Inputs come as the dataset's default collate makes them (float images, int
    token ids: no normalisation); labels as int64, the class indices the loss takes.
    """

    def __init__(self, train, test, classes: int, batch_size: int, seed: int, in_shape, in_dtype,
                 workers: int, prefetch_factor: int, target: str):
        super().__init__(len(train), len(test), batch_size, seed)
        self.train, self.test, self.classes, self.in_shape, self.in_dtype = train, test, classes, in_shape, in_dtype
        self.workers, self.prefetch_factor, self.target = workers, prefetch_factor, target
        self.pin = False  # CUDA stages: batches in pinned memory, so the copy to the GPU is asynchronous
        self._train = self._test = None  # Readers

    def _reader(self, test: bool) -> Reader:
        """The test or the training reader, made at its first read (after shard() and pin are set)."""
        if (self._test if test else self._train) is None:
            options = dict(workers=self.workers, prefetch_factor=self.prefetch_factor, pin=self.pin, seed=self.seed)
            if test:  # evaluation walks e = replica, replica + replicas, ...
                self._test = Reader(self.test, weakly(self.test_indices), self.replicas, self.test_batches,
                                    what=f"data._target_={self.target!r}: reading test", **options)
            else:
                self._train = Reader(self.train, weakly(self.indices), 1, None,
                                     what=f"data._target_={self.target!r}: reading training", **options)
        return self._test if test else self._train

    def inputs(self, batch: int, prefetch: bool = True) -> torch.Tensor:
        return self._reader(False).read(batch, prefetch)[0]

    def labels(self, batch: int) -> torch.Tensor:
        return self._reader(False).read(batch)[1].long()

    def test_inputs(self, e: int) -> torch.Tensor:
        """Test batch e, zero-padded to batch_size so that it fits the links."""
        return pad(self._reader(True).read(e)[0], self.batch_size)

    def test_labels(self, e: int) -> torch.Tensor:
        """Labels of the real samples of test batch e (fewer than batch_size at the end)."""
        return self._reader(True).read(e)[1].long()
