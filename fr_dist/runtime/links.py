"""Point-to-point links between neighbouring stages, and their shapes agreed once.

A link is one direction of traffic with one neighbour over its own process
group (runtime/groups.py): a fixed shape and dtype, preallocated buffers and a
batch-id header checked on every receive.
"""

from __future__ import annotations

import time
from collections import deque

import torch
import torch.distributed as dist

from fr_dist.runtime.groups import Runtime


class Link:
    """One direction of traffic with one neighbour: a fixed shape and dtype.

    Every transfer is a header (the batch id) and a payload, both into or out of
    buffers preallocated here. The receiver states which batch it expects, and
    a mismatch is an error, never silently trained on.

    `staged`: the wire is host memory (gloo with CUDA stages: gloo cannot send
    CUDA tensors, and NCCL refuses two ranks on one GPU). Payloads are copied
    through pinned host buffers; the values are the same as a direct link's.
    """

    def __init__(self, name: str, group, peer: int, shape, dtype: torch.dtype, device: torch.device,
                 staged: bool = False, peer_stage: int | None = None):
        self.name, self.group, self.peer = name, group, peer  # peer: the neighbour's global rank
        self.peer_stage = peer if peer_stage is None else peer_stage
        self.shape, self.dtype = torch.Size(shape), dtype
        self.buffer = torch.empty(self.shape, dtype=dtype, device=device)  # the payload where it is computed on
        pin = staged and torch.cuda.is_available()
        wire = torch.device("cpu") if staged else device
        self.wire = torch.empty(self.shape, dtype=dtype, pin_memory=pin) if staged else self.buffer
        self.header = torch.zeros(1, dtype=torch.int64, device=wire)
        # On a GPU the header is read without stalling the stream: copied to pinned
        # memory behind an event and checked one transfer later (`check`).
        self.deferred = wire.type == "cuda"
        self.unchecked: list[tuple[int, torch.Tensor, object]] = []
        self.host_headers = [torch.zeros(1, dtype=torch.int64, pin_memory=True) for _ in range(2)] \
            if self.deferred else []
        self.received = 0  # transfers received: picks the pinned header slot
        self.pending: list = []  # works of the transfer in flight
        self.expected: int | None = None
        # GPU (NCCL) transfers until the device finished them: a host wait only orders
        # streams, so runtime/watchdog.py looks here for one that never ends.
        self.watch: deque = deque()  # (started, works)

    def _ops(self, op, tensors):
        # Distinct tags keep header and payload apart on gloo; NCCL ignores tags
        # and relies on both ends issuing the same order, which they do.
        works = dist.batch_isend_irecv(
            [dist.P2POp(op, t, self.peer, self.group, tag) for tag, t in enumerate(tensors)]
        )
        if self.deferred:
            self.watch.append((time.monotonic(), works))
        return works

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
        self.wire.copy_(tensor)  # staged from a GPU: a blocking copy, the bytes must be on the host now
        self.header.fill_(batch)
        self.pending = self._ops(dist.isend, (self.header, self.wire))

    def post(self, batch: int) -> None:
        """Post the receive for `batch` now; `wait` collects it later."""
        if self.expected is not None:
            raise RuntimeError(f"link {self.name}: receive for batch {batch} posted while {self.expected} is pending")
        self.expected = batch
        self.pending = self._ops(dist.irecv, (self.header, self.wire))

    def wait(self, batch: int) -> torch.Tensor:
        """The payload of `batch` (the link's buffer: valid until the next post)."""
        if self.expected != batch:
            raise RuntimeError(f"link {self.name}: waiting for batch {batch} but the posted receive is {self.expected}")
        self.expected = None
        self._complete()
        if self.deferred:
            host = self.host_headers[self.received % 2]  # the other slot may still be unchecked
            host.copy_(self.header, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.unchecked.append((batch, host, event))
            self.check(keep=1)  # the previous transfer's header: long arrived, no stall
        else:
            self._verify(batch, int(self.header.item()))
        self.received += 1
        if self.wire is not self.buffer:  # blocking: the next receive overwrites the host buffer
            self.buffer.copy_(self.wire)
        return self.buffer

    def check(self, keep: int = 0) -> None:
        """Verify the headers not yet checked but the newest `keep` (a GPU link reads them late)."""
        while len(self.unchecked) > keep:
            batch, host, event = self.unchecked.pop(0)
            event.synchronize()
            self._verify(batch, int(host.item()))

    def _verify(self, batch: int, got: int) -> None:
        if got != batch:
            raise RuntimeError(f"link {self.name}: expected batch {batch}, received batch {got}")

    def recv(self, batch: int) -> torch.Tensor:
        self.post(batch)
        return self.wait(batch)

    @property
    def busy(self) -> bool:
        """A transfer was started and has not been waited for."""
        return bool(self.pending) or self.expected is not None

    def close(self) -> None:
        self._complete()
        self.check()


def negotiate_shapes(rt: Runtime, first_input, output_spec_of) -> tuple:
    """Agree on link shapes once: stage k tells stage k+1 what it will send.

    `first_input` is stage 0's input (shape, dtype); `output_spec_of(spec)` gives
    this stage's output spec for an input spec. Returns (input spec, output spec).
    """
    if rt.stage == 0:
        box = [first_input]
    else:
        box = [None]
        dist.recv_object_list(box, src=rt.global_rank(rt.stage - 1), group=rt.control)
    out = output_spec_of(box[0])
    if rt.stage < rt.stages - 1:
        dist.send_object_list([out], dst=rt.global_rank(rt.stage + 1), group=rt.control)
    return box[0], out
