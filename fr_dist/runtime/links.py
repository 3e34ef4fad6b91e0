"""Point-to-point links between neighbouring stages, and their shapes agreed once.

A link is one direction of traffic with one neighbour over its own process
group (runtime/groups.py): a fixed shape and dtype, preallocated buffers and a
batch-id header checked on every receive.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fr_dist.runtime.groups import Runtime


class Link:
    """One direction of traffic with one neighbour: a fixed shape and dtype.

    Every transfer is a header (the batch id) and a payload, both into or out of
    buffers preallocated here. The receiver states which batch it expects, and
    a mismatch is an error, never silently trained on.
    """

    def __init__(self, name: str, group, peer: int, shape, dtype: torch.dtype, device: torch.device):
        self.name, self.group, self.peer = name, group, peer
        self.shape, self.dtype = torch.Size(shape), dtype
        self.buffer = torch.empty(self.shape, dtype=dtype, device=device)
        self.header = torch.zeros(1, dtype=torch.int64, device=device)
        self.pending: list = []  # works of the transfer in flight
        self.expected: int | None = None

    def _ops(self, op, tensors):
        # Distinct tags keep header and payload apart on gloo; NCCL ignores tags
        # and relies on both ends issuing the same order, which they do.
        return dist.batch_isend_irecv(
            [dist.P2POp(op, t, self.peer, self.group, tag) for tag, t in enumerate(tensors)]
        )

    def _complete(self) -> None:
        for work in self.pending:
            work.wait()
        self.pending = []

    def send(self, tensor: torch.Tensor, batch: int) -> None:
        """Start sending `tensor` for `batch`; returns without waiting for the peer."""
        if tensor.shape != self.shape or tensor.dtype != self.dtype:
            raise RuntimeError(
                f"link {self.name}: batch {batch} has shape {tuple(tensor.shape)} {tensor.dtype}, "
                f"agreed {tuple(self.shape)} {self.dtype}"
            )
        self._complete()  # never overwrite a buffer before its send completed
        self.buffer.copy_(tensor)
        self.header.fill_(batch)
        self.pending = self._ops(dist.isend, (self.header, self.buffer))

    def post(self, batch: int) -> None:
        """Post the receive for `batch` now; `wait` collects it later."""
        if self.expected is not None:
            raise RuntimeError(f"link {self.name}: receive for batch {batch} posted while {self.expected} is pending")
        self.expected = batch
        self.pending = self._ops(dist.irecv, (self.header, self.buffer))

    def wait(self, batch: int) -> torch.Tensor:
        """The payload of `batch` (the link's buffer: valid until the next post)."""
        if self.expected != batch:
            raise RuntimeError(f"link {self.name}: waiting for batch {batch} but the posted receive is {self.expected}")
        self.expected = None
        self._complete()
        got = int(self.header.item())  # on GPU a sync point; the payload is needed now anyway
        if got != batch:
            raise RuntimeError(f"link {self.name}: expected batch {batch}, received batch {got}")
        return self.buffer

    def recv(self, batch: int) -> torch.Tensor:
        self.post(batch)
        return self.wait(batch)

    @property
    def busy(self) -> bool:
        """A transfer was started and has not been waited for."""
        return bool(self.pending) or self.expected is not None

    def close(self) -> None:
        self._complete()


def negotiate_shapes(rt: Runtime, first_input, output_spec_of) -> tuple:
    """Agree on link shapes once: stage k tells stage k+1 what it will send.

    `first_input` is stage 0's input (shape, dtype); `output_spec_of(spec)` gives
    this stage's output spec for an input spec. Returns (input spec, output spec).
    """
    if rt.rank == 0:
        box = [first_input]
    else:
        box = [None]
        dist.recv_object_list(box, src=rt.rank - 1, group=rt.control)
    out = output_spec_of(box[0])
    if rt.rank < rt.world - 1:
        dist.send_object_list([out], dst=rt.rank + 1, group=rt.control)
    return box[0], out
