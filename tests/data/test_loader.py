"""data=custom: a user's Datasets read by DataLoader workers give the in-memory path's batches; one-line refusals."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

from fr_dist import data as datasets
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.data.synthetic import make_synthetic
from fr_dist.errors import FRError
from tests.data import userdata

SHAPE, CLASSES, TRAIN, TEST, BATCH, SEED = [2, 3, 3], 4, 44, 13, 4, 5


def custom(target: str = "tests.data.userdata.synthetic", *more: str) -> list[str]:
    return ["data=custom", f"data._target_={target}", f"data.classes={CLASSES}", f"batch_size={BATCH}",
            f"seed={SEED}", *more]


def synthetic_args(**extra) -> list[str]:
    args = dict(shape=SHAPE, classes=CLASSES, train_size=TRAIN, test_size=TEST, seed=SEED, **extra)
    return [f"+data.args.{k}={v}".replace(" ", "") for k, v in args.items()]


def loaded(overrides: list[str], replicas: int = 1, replica: int = 0):
    c = validate(compose(overrides), world_size=1)
    batches = datasets.load(c.data, c.batch_size, c.seed)
    if replicas > 1:
        batches.shard(replica, replicas)
    return batches


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("replicas", [1, 2])
def test_loader_gives_the_in_memory_batches(workers, replicas):
    tensors = make_synthetic(tuple(SHAPE), CLASSES, TRAIN, TEST, SEED)
    train_x, train_y, test_x, test_y = tensors
    for replica in range(replicas):
        memory = datasets.Batches(*tensors, CLASSES, BATCH, SEED)
        if replicas > 1:
            memory.shard(replica, replicas)
        read = loaded(custom("tests.data.userdata.synthetic", f"data.workers={workers}", *synthetic_args()),
                      replicas, replica)
        steps = TRAIN // (BATCH * replicas)
        assert read.steps_per_epoch == memory.steps_per_epoch == steps
        for b in range(2 * steps + 2):  # into a third epoch
            epoch, i = divmod(b, steps)
            perm = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(SEED * 100_003 + epoch))
            rows = perm[(i * replicas + replica) * BATCH:][:BATCH]  # replica d: slice d of the global batch
            for got in (read.inputs(b), memory.inputs(b)):
                assert torch.equal(got, train_x[rows])
            for got in (read.labels(b), memory.labels(b)):
                assert torch.equal(got, train_y[rows]) and got.dtype == torch.int64
        evaluated = range(replica, read.test_batches, replicas)
        for _ in range(2):  # two evaluations: the second restarts the test stream
            for e in evaluated:
                real = test_y[e * BATCH:(e + 1) * BATCH]
                padded = torch.zeros(BATCH, *SHAPE)
                padded[:len(real)] = test_x[e * BATCH:(e + 1) * BATCH]
                for got_x, got_y in ((read.test_inputs(e), read.test_labels(e)),
                                     (memory.test_inputs(e), memory.test_labels(e))):
                    assert torch.equal(got_x, padded) and torch.equal(got_y, real)
        assert [len(read.test_labels(e)) for e in range(read.test_batches)] == [4, 4, 4, 1]


@pytest.mark.parametrize("workers", [0, 2])
def test_reads_off_the_training_order(workers):
    """Resume at a later batch, the diagnostic's older batch (prefetch=False, labels behind), then on in order."""
    memory = datasets.Batches(*make_synthetic(tuple(SHAPE), CLASSES, TRAIN, TEST, SEED), CLASSES, BATCH, SEED)
    read = loaded(custom("tests.data.userdata.synthetic", f"data.workers={workers}", *synthetic_args()))
    rng = torch.get_rng_state()
    for b, prefetch in ((7, True), (8, True), (6, False), (9, True), (9, False), (20, True), (21, True)):
        assert torch.equal(read.inputs(b, prefetch), memory.inputs(b, prefetch=False)), b
    for b in (21, 4, 22, 23, 2):  # the last stage: labels only; 4 and 2 are behind the stream
        assert torch.equal(read.labels(b), memory.labels(b)), b
    read.test_inputs(0)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is dropout's: reading draws nothing from it


class Counted(userdata.Pairs):
    reads = 0

    def __getitem__(self, i):
        Counted.reads += 1
        return super().__getitem__(i)


def counted(**kwargs):
    train, test = userdata.synthetic(**kwargs)
    return Counted(train.x, train.y), test


def test_one_rank_with_inputs_and_labels_reads_each_batch_once():
    """K = 1: inputs(b) and labels(b) of one rank are one read of batch b (workers=0 reads in this process)."""
    read = loaded(custom("tests.data.test_loader.counted", "data.workers=0", *synthetic_args()))
    Counted.reads = 0
    for b in range(5):
        read.inputs(b)
        read.labels(b)
    assert Counted.reads == 5 * BATCH


def test_workers_read_in_other_processes():
    read = loaded(custom("tests.data.test_loader.reader_pids", "data.workers=2", *synthetic_args()))
    pids = {int(p) for b in range(6) for p in read.inputs(b).flatten()}
    assert os.getpid() not in pids and len(pids) == 2  # two workers, neither this process


def reader_pids(**kwargs):
    """Datasets whose training inputs hold the id of the process that read them."""
    train, test = userdata.synthetic(**kwargs)
    return PidPairs(train.x, train.y), test


class PidPairs(userdata.Pairs):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return torch.full_like(x, os.getpid()), y  # float32 holds a pid exactly (< 2**24)


# ------------------------------------------------------------------- refusals, one line each


@pytest.mark.parametrize("kind,message", [
    ("raises", "data._target_='tests.data.userdata.broken' failed: OSError: no such folder: /nowhere; check it "
               "and its arguments (+data.args.KEY=VALUE)"),
    ("one", "data._target_='tests.data.userdata.broken' returned a Returns; it must return (train, test), two "
            "map-style torch.utils.data.Dataset"),
    ("iterable", "its training dataset, a Stream, has no __getitem__ and __len__: fr_dist reads samples by index"),
    ("empty_test", "its test dataset is empty"),
    ("small", "batch_size=8 is larger than the 4 training samples: use batch_size <= 4"),
    ("unreadable", "reading training sample 0 failed: ValueError: sample 0 is unreadable; fix the dataset's "
                   "__getitem__"),
    ("not_a_pair", "training sample 0 is a dict, not an (x, y) pair"),
    ("x_list", "the input x of training sample 0 is a list: make it a torch.Tensor or a numpy array"),
    ("x_float64", "the input x of training sample 0 is torch.float64; the model takes float32 inputs"),
    ("y_float", "the label y of training sample 0 is 0.5; it must be an integer class index"),
    ("y_range", "test sample 0 has the label 7, outside [0, data.classes=4): set data.classes"),
    ("test_shape", "test sample 0 is torch.float32 (4,), training sample 0 torch.float32 (3,): both datasets"),
])
def test_a_wrong_dataset_is_one_clear_error(kind, message):
    c = validate(compose(["data=custom", "data._target_=tests.data.userdata.broken", "data.classes=4", "batch_size=8",
                          f"+data.args.kind={kind}"]), world_size=1)
    with pytest.raises(FRError) as refused:
        datasets.load(c.data, c.batch_size, c.seed)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("target,message", [
    ("nowhere.fn", "data._target_='nowhere.fn' cannot be imported (ModuleNotFoundError: No module named 'nowhere'): "
                   "give the dotted name of a function"),
    ("tests.data.userdata.nofn", "data._target_='tests.data.userdata.nofn' cannot be imported (AttributeError"),
    ("fn", "data._target_='fn' is not a function"),
])
def test_a_target_that_cannot_be_found(target, message):
    c = validate(compose(["data=custom", f"data._target_={target}", "data.classes=4"]), world_size=1)
    with pytest.raises(FRError, match=message.replace("(", r"\(").replace(")", r"\)")):
        datasets.load(c.data, c.batch_size, c.seed)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_that_fails_during_training_is_one_error(workers):
    before = set(multiprocessing.active_children())
    read = loaded(custom("tests.data.userdata.synthetic", f"data.workers={workers}", *synthetic_args(fail_at=13)))
    bad = next(b for b in range(read.steps_per_epoch) if 13 in read.indices(b).tolist())
    for b in range(bad):
        read.inputs(b)
    with pytest.raises(FRError) as failed:
        read.inputs(bad)
    assert str(failed.value) == (f"data._target_='tests.data.userdata.synthetic': reading training batch {bad} "
                                 f"failed: ValueError: sample 13 is unreadable; fix the dataset (its __getitem__) "
                                 f"and run again")
    assert set(multiprocessing.active_children()) == before  # its workers are gone with the error


@pytest.mark.parametrize("overrides,message", [
    (["data=custom"], "data._target_ is not set: give it on the command line (data._target_=VALUE)"),
    (["data=custom", "data._target_=a.fn"], "data.classes is not set"),
    (["data=custom", "data._target_=a.fn", "data.classes=1"], "data.classes=1 must be >= 2"),
    (["data=custom", "data._target_=a.fn", "data.classes=3", "data.workers=-1"],
     "data.workers=-1 must be >= 0: set data.workers=0 (read in the rank's own process) or more"),
    (["data=custom", "data._target_=a.fn", "data.classes=3", "data.workers=1.5"],
     "data.workers=1.5 must be an integer"),
    (["data=custom", "data._target_=a.fn", "data.classes=3", "data.prefetch_factor=0"],
     "data.prefetch_factor=0 must be a positive integer"),
    (["data=custom", "data._target_=a.fn", "data.classes=3", "+data.shape=[1,2]"],
     "data.shape=[1,2] applies to data=synthetic only; data=custom has its own: remove the override"),
    (["data=custom", "data._target_=a.fn", "data.classes=3", "+data.augment=true"],
     "data.augment=true applies to the built-in datasets, not data=custom"),
    (["data=custom", "data._target_=a.fn", "data.classes=3", "+data.data_root=/d"],
     "data.data_root='/d' applies to the built-in datasets, not data=custom"),
    (["data=synthetic", "+data.workers=0"], "data.workers=0 applies to data=custom only; data=synthetic has its own"),
    (["data=fashion_mnist", "+data.args.root=/d"], "data.args={'root': '/d'} applies to data=custom only"),
    (["data=cifar10", "+data._target_=a.fn"], "data._target_='a.fn' applies to data=custom only"),
    (["data.name=custom"], "data._target_ is not set: give it on the command line, e.g. data._target_=pkg.fn"),
])
def test_custom_options_are_validated(overrides, message):
    with pytest.raises(FRError) as refused:
        validate(compose(overrides), world_size=1)
    assert message in str(refused.value)


def test_custom_keys_reach_fn():
    c = validate(compose(custom("tests.data.userdata.synthetic", *synthetic_args(), "data.workers=0",
                                "data.prefetch_factor=3")), world_size=1)
    assert (c.data.name, c.data.workers, c.data.prefetch_factor) == ("custom", 0, 3)
    assert c.data.args == dict(shape=SHAPE, classes=CLASSES, train_size=TRAIN, test_size=TEST, seed=SEED)


def test_closing_drops_only_the_report_of_a_killed_worker(monkeypatch):
    """torchrun may terminate a failing rank's workers while its loader joins them; the iterator's __del__ then
    reports their deaths with a traceback. Inside quiet_worker_exit exactly that report is dropped."""
    import sys

    from fr_dist.data.loader import quiet_worker_exit

    class Dying:  # stands in for _MultiProcessingDataLoaderIter, whose __del__ raises in the SIGCHLD handler
        def __init__(self, message):
            self.message = message

        def __del__(self):
            raise RuntimeError(self.message)

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    with quiet_worker_exit():
        Dying("DataLoader worker (pid 3095) is killed by signal: Terminated. ")
        Dying("something else")
    Dying("DataLoader worker (pid 1) is killed by signal: Terminated. ")  # outside: reported as before
    assert seen == ["something else", "DataLoader worker (pid 1) is killed by signal: Terminated. "]
