"""Device and backend choice."""

from __future__ import annotations

import pytest
import torch

from fr_dist import FRError


def test_more_nccl_stages_than_gpus(monkeypatch):
    from fr_dist.runtime import groups as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(FRError, match="4 stages on this node but 2 visible GPUs"):
        dist.check_devices()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    dist.check_devices()
