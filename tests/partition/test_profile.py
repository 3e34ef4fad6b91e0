"""The profiler: per-block costs leave the model as they found it; the link model's fit and byte counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fr_dist.partition import profile
from fr_dist.partition.profile import LinkModel, fit_link, link_model, link_seconds, profile_model


def _net():
    torch.manual_seed(0)
    return [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))]


def fixed_link(monkeypatch, latency=1e-4, bandwidth=1e9) -> list:
    """Replace the measured link model by `latency + bytes / bandwidth`; the devices asked for."""
    asked = []
    monkeypatch.setattr(profile, "link_model", lambda device="cpu": asked.append(device) or
                        LinkModel(latency, bandwidth, "fixed"))
    return asked


def test_profile_positive_and_leaves_state_untouched(monkeypatch):
    blocks = _net()
    blocks[1].eval()  # a mode of its own must survive
    state = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    grads_before = [p.grad for b in blocks for p in b.parameters()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    costs = profile_model(blocks, (3, 8, 8), 4, "cpu", warmup=1, iters=2).costs
    assert len(costs) == 3 and all(f > 0 and b > 0 for f, b in costs)
    assert torch.equal(torch.get_rng_state(), rng)
    for b, saved in zip(blocks, state):
        for k, v in b.state_dict().items():
            assert torch.equal(v, saved[k]), k  # BatchNorm statistics and batch counters included
    assert all(p.grad is None for b in blocks for p in b.parameters()) and all(g is None for g in grads_before)
    assert blocks[0].training and not blocks[1].training and blocks[2].training
    prof = profile_model(blocks, (3, 8, 8), 4, "cpu", warmup=0, iters=1)
    assert prof.out_shapes == [(4, 8, 8, 8), (4, 8, 8, 8), (4, 10)]
    fixed_link(monkeypatch, 1e-4, 1e9)
    # cuts 1 and 2 carry a 4x8x8x8 float32 tensor, 8192 bytes: 1e-4 + 8192 / 1e9 s; none at 0 and 3
    assert prof.link_costs() == pytest.approx([0.0, 1.08192e-4, 1.08192e-4, 0.0], rel=1e-12, abs=0)


def test_link_seconds_counts_the_bytes(monkeypatch):
    asked = fixed_link(monkeypatch, 1e-4, 1e9)
    assert link_seconds((1,), torch.float32) == pytest.approx(1.00004e-4, rel=1e-12)  # 4 bytes
    assert link_seconds((128, 16, 32, 32), torch.float32) == pytest.approx(8.488608e-3, rel=1e-12)  # 8 MiB
    assert link_seconds((100,), torch.float64) == pytest.approx(1.008e-4, rel=1e-12)
    assert link_seconds((100,), torch.float16) == pytest.approx(1.002e-4, rel=1e-12)
    assert link_seconds((2, 3), torch.int64, device=torch.device("cpu")) == pytest.approx(1.00048e-4, rel=1e-12)
    assert asked == ["cpu"] * 5


def test_link_fit_recovers_latency_and_bandwidth():
    # timings of an exact link of 40 us and 2.5 GB/s: 8 B in 40.0032 us, 8 MiB in 3395.4432 us
    m = fit_link(8, 40.0032e-6, 8 << 20, 3395.4432e-6, "synthetic")
    assert m.latency_s == pytest.approx(40e-6, rel=1e-9)
    assert m.bytes_per_s == pytest.approx(2.5e9, rel=1e-9)
    assert m.seconds(1_000_000) == pytest.approx(440e-6, rel=1e-9) and m.how == "synthetic"


def test_link_fit_clamps_where_noise_breaks_the_line():
    # The large message measured no slower than the small one: the time difference is floored
    # at 1 ns, so the bandwidth is (8 MiB - 8 B) / 1 ns and the latency the small message's time.
    for t_large in (100e-6, 90e-6):
        m = fit_link(8, 100e-6, 8 << 20, t_large)
        assert m.bytes_per_s == pytest.approx(8388600 / 1e-9, rel=1e-12)
        assert m.latency_s == pytest.approx(100e-6 - 8e-9 / 8388600, rel=1e-12)
    # A line through (8 B, 1 us) and (800 B, 200 us) has bandwidth 792 / 199e-6 = 3.98 MB/s and
    # crosses 0 at -1.01 us: the latency is clamped to 0, the bandwidth kept.
    m = fit_link(8, 1e-6, 800, 200e-6)
    assert m.latency_s == 0.0
    assert m.bytes_per_s == pytest.approx(3979899.497, rel=1e-9)
    assert m.seconds(792) == pytest.approx(199e-6, rel=1e-9)  # no latency: 792 B at that bandwidth


def test_measured_link_is_a_real_loopback():
    m = link_model("cpu")
    assert m.how == "loopback TCP in-process + one tensor copy"
    assert m.latency_s < 0.01  # a small message over loopback TCP takes microseconds, not 10 ms
    assert m.bytes_per_s < 1e13  # 8 MiB took measurably longer than 8 bytes: the 1 ns floor did not engage
    assert m.seconds(8 << 20) < 1.0  # and under a second
