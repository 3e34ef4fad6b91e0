"""The ring buffer of stale inputs."""

from __future__ import annotations

import pytest
import torch

from fr_dist.runtime.ring import RingBuffer


def test_ring_buffer_fifo_and_batch_check():
    ring = RingBuffer(2, (3,), torch.float32, torch.device("cpu"))
    rng = torch.get_rng_state()
    ring.push(0, torch.zeros(3), rng, None)
    ring.push(1, torch.ones(3), rng, None)
    with pytest.raises(RuntimeError, match="ring buffer full"):
        ring.push(2, torch.ones(3), rng, None)
    with pytest.raises(RuntimeError, match="replay of batch 1 but the oldest stored input is batch 0"):
        ring.pop(1)
    x, state, _ = ring.pop(0)
    assert torch.equal(x, torch.zeros(3)) and torch.equal(state, rng)
    ring.push(2, torch.full((3,), 2.0), rng, None)
    assert torch.equal(ring.pop(1)[0], torch.ones(3))
    assert torch.equal(ring.pop(2)[0], torch.full((3,), 2.0))
    assert ring.nbytes == 2 * 3 * 4
