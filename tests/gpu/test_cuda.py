"""Training on a GPU against the CPU simulator: the staged transport and NCCL at K = 1.

Marked gpu: skipped without a CUDA device (tests/conftest.py); the ranks see the machine's
GPUs through `gpu_env`, narrowed to the first one, so K stages share one GPU
(device=cuda transport=gloo stages every payload through pinned host buffers).
"""

from __future__ import annotations

import pytest
import torch

from tests.support import COMMON, MLP, assert_states_equal, distributed, reference

pytestmark = pytest.mark.gpu

# The suite's small MLP without dropout: CUDA draws other dropout masks than the CPU simulator.
TINY = [o for o in MLP if not o.startswith("model.dropout=")] + ["model.dropout=0.0", *COMMON, "algo=fr",
                                                                 "deterministic=true"]
# GPU against CPU: relative 1e-3 of each tensor's largest magnitude (+1e-6 near zero). fp32
# with TF32 off (deterministic=true) for 14 SGD steps of a tiny MLP: the kernels reduce in
# other orders (about 1e-7 relative per operation), which a few steps amplify to 1e-5 at
# most; a real fault (a stale or missing gradient, a skipped step, a swapped batch) moves the
# parameters by lr * |g|, 1e-2 relative or more.
RTOL, ATOL = 1e-3, 1e-6


def one_gpu(env: dict) -> dict:
    visible = env.get("CUDA_VISIBLE_DEVICES") or "0"
    return dict(env, CUDA_VISIBLE_DEVICES=visible.split(",")[0])


def assert_states_close(got, want):
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys()
        for name, want_t in w.items():
            got_t = g[name].cpu()
            if not want_t.is_floating_point():
                assert torch.equal(got_t, want_t), f"stage {k} {name}"
                continue
            diff = (got_t.double() - want_t.double()).abs().max().item()
            assert diff <= RTOL * want_t.abs().max().item() + ATOL, f"stage {k} {name}: max diff {diff}"


@pytest.fixture(scope="module")
def staged_k2(gpu_env, tmp_path_factory):
    """FR K = 2 on one GPU through the staged transport, run twice: (overrides, [run, run])."""
    overrides = [*TINY, "device=cuda", "transport=gloo"]
    return overrides, [distributed(2, overrides, tmp_path_factory.mktemp(f"staged{i}"), one_gpu(gpu_env))
                       for i in range(2)]


def test_staged_fr_repeats_bit_for_bit(staged_k2):
    _, ((states_a, losses_a, _), (states_b, losses_b, _)) = staged_k2
    assert losses_a == losses_b
    assert_states_equal(states_a, states_b)


def test_staged_fr_equals_cpu_simulator(staged_k2):
    overrides, ((states, losses, summary), _) = staged_k2
    want_states, want_losses = reference(2, overrides)
    assert summary["status"] == "ok" and summary["device"] == "cuda" and summary["splits"] == 2
    assert losses == pytest.approx(want_losses, rel=RTOL)
    assert_states_close(states, want_states)


def test_summary_has_cuda_memory_per_stage(staged_k2):
    summary = staged_k2[1][0][2]
    assert [s["rank"] for s in summary["stages"]] == [0, 1]
    assert all(s["cuda_max_allocated_bytes"] > 0 for s in summary["stages"]), summary["stages"]


@pytest.mark.skipif(not torch.distributed.is_nccl_available(), reason="this torch has no NCCL")
def test_k1_on_nccl_trains_like_cpu_backprop(gpu_env, tmp_path):
    overrides = [*TINY, "device=cuda", "transport=nccl"]
    states, losses, summary = distributed(1, overrides, tmp_path, one_gpu(gpu_env))
    want_states, want_losses = reference(1, overrides)
    assert summary["status"] == "ok" and summary["device"] == "cuda"
    assert losses == pytest.approx(want_losses, rel=RTOL)
    assert_states_close(states, want_states)
