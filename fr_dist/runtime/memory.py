"""Activation memory measured where it is held: bytes autograd saves for backward."""

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
