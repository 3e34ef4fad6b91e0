"""The NCCL watchdog on fake links: a transfer unfinished after the timeout names its peer."""

from __future__ import annotations

import time
from collections import deque

from fr_dist.runtime.watchdog import Watchdog


class Work:
    def __init__(self, done: bool):
        self.done = done

    def is_completed(self) -> bool:
        return self.done


class FakeLink:
    def __init__(self, peer: int, entries):
        self.peer_stage, self.watch = peer, deque(entries)


def test_overdue_names_the_peer_of_the_oldest_unfinished_transfer():
    now = 100.0
    finished = FakeLink(1, [(now - 50, [Work(True), Work(True)])])
    fresh = FakeLink(2, [(now - 1, [Work(False)])])
    assert Watchdog([finished, fresh], 10, None).overdue(now) is None
    assert not finished.watch  # finished transfers leave the queue
    late = FakeLink(3, [(now - 11, [Work(True), Work(False)])])
    assert Watchdog([fresh, late], 10, None).overdue(now) == 3


def test_thread_calls_back_once_within_the_timeout():
    called = []
    link = FakeLink(0, [(time.monotonic(), [Work(False)])])
    dog = Watchdog([link], 0.3, called.append, poll_s=0.02).start()
    start = time.monotonic()
    dog.thread.join(2.0)
    assert called == [0] and 0.3 <= time.monotonic() - start < 1.0
