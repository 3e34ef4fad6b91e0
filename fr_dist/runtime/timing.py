"""Busy time of a stage: wall clock on the CPU, CUDA events on a GPU.

On a GPU the host only launches kernels: timing them on the host measures
launches, not work. CUDA events recorded around each compute action measure
the GPU's time instead, without a synchronisation on the hot path: finished
pairs are summed now and then, the rest when the total is read.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

FOLD_EVERY = 256  # event pairs kept before the finished ones are summed


class BusyTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.done_s = 0.0
        self.events: list = []  # (start, end) CUDA events not summed yet

    @contextmanager
    def __call__(self):
        if not self.cuda:
            start = time.perf_counter()
            yield
            self.done_s += time.perf_counter() - start
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.events.append((start, end))
        if len(self.events) >= FOLD_EVERY:
            self._fold(wait=False)

    def _fold(self, wait: bool) -> None:
        pending = []
        for start, end in self.events:
            if wait:
                end.synchronize()
            if wait or end.query():
                self.done_s += start.elapsed_time(end) / 1000
            else:
                pending.append((start, end))
        self.events = pending

    @property
    def seconds(self) -> float:
        """The busy seconds so far (on a GPU: waits for the last timed kernels)."""
        self._fold(wait=True)
        return self.done_s
