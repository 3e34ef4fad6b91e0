"""Our own detection of a hung peer for NCCL links, within fail_timeout_s.

gloo's waits raise after the group timeout (= fail_timeout_s), and the loop's
failure path turns that into the one message. NCCL's waits only order streams:
the host never blocks on them, and NCCL's own watchdog would end the rank by
SIGABRT, without our message (its timeout is set far above ours, groups.py).
This thread watches the links' started transfers instead: one unfinished
after fail_timeout_s means the peer is dead or frozen, and `on_timeout(peer)`
reports it and ends the process.
"""

from __future__ import annotations

import threading
import time


class Watchdog:
    def __init__(self, links, timeout_s: float, on_timeout, poll_s: float | None = None):
        self.links, self.timeout_s, self.on_timeout = list(links), timeout_s, on_timeout
        self.poll_s = poll_s if poll_s is not None else min(1.0, timeout_s / 20)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="fr_dist-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def overdue(self, now: float):
        """The peer of a transfer started more than timeout_s ago and not finished, else None.

        Finished transfers leave each link's queue from the front (they finish in order).
        """
        for link in self.links:
            watch = link.watch
            while watch and all(w.is_completed() for w in watch[0][1]):
                watch.popleft()
            if watch and now - watch[0][0] > self.timeout_s:
                return link.peer_stage
        return None

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll_s):
            peer = self.overdue(time.monotonic())
            if peer is not None:
                self.on_timeout(peer)
                return
