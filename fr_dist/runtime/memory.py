"""Activation memory measured where it is held: what autograd saves for backward (SavedBytes),
and what a pipelining schedule stashes per micro-batch (StashMeter)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn


@contextmanager
def saved_storages(skip: set[int]):
    """{storage pointer: bytes} of every tensor autograd saves inside the block, but `skip`."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


class SavedBytes:
    """Peak bytes of activations saved for backward by one graph, measured.

    Counts unique storages packed by ``saved_tensors_hooks``, except parameters
    and the given inputs (those are counted where they are stored).
    """

    def __init__(self, module: nn.Module, calls: int = 2):
        self.params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.calls = calls  # shapes are fixed, so the first calls tell the peak
        self.peak = 0

    @contextmanager
    def __call__(self, *inputs: torch.Tensor):
        if self.calls <= 0:
            yield
            return
        self.calls -= 1
        with saved_storages(self.params | {x.untyped_storage().data_ptr() for x in inputs}) as seen:
            yield
        self.peak = max(self.peak, sum(seen.values()))


class StashMeter:
    """Bytes of activations held per micro-batch between its forward and its backward.

    A micro-batch holds its input, its output and what its graph saved for
    backward (unique storages seen by ``saved_tensors_hooks``; parameters and
    buffers excluded). The peak is the largest sum over micro-batches alive at
    once, as the schedule interleaves them.
    """

    def __init__(self, module: nn.Module):
        self.skip = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
        self.live: dict[int, dict[int, int]] = {}
        self.current: int | None = None
        self.peak = 0
        self.transient = 0  # a recomputed graph, held only during one backward (checkpoint)

    def _entries(self) -> dict[int, int]:
        return self.live.setdefault(self.current, {})

    def total(self) -> int:
        return sum(sum(e.values()) for e in self.live.values())

    def hold(self, t: torch.Tensor, whole_storage: bool = False) -> None:
        """Count a tensor the schedule keeps for the current micro-batch."""
        if self.current is None:
            return
        ptr = t.untyped_storage().data_ptr()
        size = t.untyped_storage().nbytes() if whole_storage else t.numel() * t.element_size()
        self._entries().setdefault(ptr, size)

    @contextmanager
    def saving(self):
        """Count what autograd saves inside the block for the current micro-batch."""
        if self.current is None:
            yield
            return
        entries = self._entries()

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.skip and ptr not in entries:
                entries[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    def update(self) -> None:
        self.peak = max(self.peak, self.total())

    def before_backward(self) -> None:
        if self.transient:
            self.peak = max(self.peak, self.total() + self.transient)

    def release(self, mb: int) -> None:
        self.live.pop(mb, None)
