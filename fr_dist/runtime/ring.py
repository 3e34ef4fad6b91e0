"""Ring buffer of stale stage inputs, replayed oldest first.

Stage k of K keeps the inputs of its last K-k forwards: at iteration t it
pushes batch t, then replays batch t-(K-1-k), so K-k slots are live at once.
Slots are preallocated; nothing is allocated per iteration.
"""

from __future__ import annotations

import torch


class RingBuffer:
    """`slots` preallocated (input, RNG state, batch id) entries, FIFO."""

    def __init__(self, slots: int, shape, dtype: torch.dtype, device: torch.device):
        self.inputs = torch.empty((slots, *shape), dtype=dtype, device=device)
        # One tensor per slot: set_rng_state reads a whole storage, not a view.
        self.cpu_rng = [torch.get_rng_state() for _ in range(slots)]
        self.cuda_rng = [torch.cuda.get_rng_state(device) for _ in range(slots)] if device.type == "cuda" else None
        self.batch_ids = [-1] * slots
        self.head = 0  # index of the oldest entry
        self.size = 0

    @property
    def nbytes(self) -> int:
        """Bytes of stored inputs (the RNG states are a few KiB on the host)."""
        return self.inputs.numel() * self.inputs.element_size()

    def push(self, batch: int, x: torch.Tensor, cpu_rng: torch.Tensor, cuda_rng: torch.Tensor | None) -> None:
        """Store a copy of `x` and the RNG state its forward started from."""
        slots = len(self.batch_ids)
        if self.size == slots:
            raise RuntimeError(f"ring buffer full ({slots} slots): batch {batch} pushed before a replay")
        i = (self.head + self.size) % slots
        self.inputs[i].copy_(x)
        self.cpu_rng[i].copy_(cpu_rng)
        if self.cuda_rng is not None:
            self.cuda_rng[i].copy_(cuda_rng)
        self.batch_ids[i] = batch
        self.size += 1

    def pop(self, batch: int):
        """Take the oldest entry, which must be `batch`: (input, cpu_rng, cuda_rng).

        The returned tensors are the slot's own: valid until the next push.
        """
        i = self.head
        if self.size == 0 or self.batch_ids[i] != batch:
            held = self.batch_ids[i] if self.size else None
            raise RuntimeError(f"replay of batch {batch} but the oldest stored input is batch {held}")
        self.head = (i + 1) % len(self.batch_ids)
        self.size -= 1
        cuda = self.cuda_rng[i] if self.cuda_rng is not None else None
        return self.inputs[i], self.cpu_rng[i], cuda

    def state_dict(self) -> dict:
        return {"inputs": self.inputs.cpu().clone(), "cpu_rng": [r.clone() for r in self.cpu_rng],
                "cuda_rng": [r.clone() for r in self.cuda_rng] if self.cuda_rng is not None else None,
                "batch_ids": list(self.batch_ids), "head": self.head, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["inputs"].shape != self.inputs.shape:
            raise ValueError(f"ring buffer of shape {tuple(state['inputs'].shape)}, expected {tuple(self.inputs.shape)}")
        self.inputs.copy_(state["inputs"])
        for mine, saved in zip(self.cpu_rng, state["cpu_rng"]):
            mine.copy_(saved)
        if self.cuda_rng is not None:
            for mine, saved in zip(self.cuda_rng, state["cuda_rng"]):
                mine.copy_(saved)
        self.batch_ids, self.head, self.size = list(state["batch_ids"]), state["head"], state["size"]
