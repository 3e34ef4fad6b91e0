"""precision=bf16: every stage's compute under bfloat16 autocast, bf16 on every link and in the ring buffers.

Distributed runs on gloo against the single-process references of fr_dist/reference.py run with
precision="bf16" (the same autocast blocks, the same bf16 casts at the stage boundaries), bit for bit.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from fr_dist import reference as ref
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.errors import FRError
from fr_dist.reference import gradient_accumulation
from tests.support import (
    COMMON,
    MLP,
    RESNET8,
    assert_states_equal,
    distributed,
    reference,
    simulation_inputs,
    synth_models,
)

BF16 = ["precision=bf16"]


def overrides_for(algo: str, model: str) -> list[str]:
    return (MLP if model == "mlp" else RESNET8) + COMMON + [f"algo={algo}"] + BF16


@pytest.mark.parametrize("K,model", [(1, "mlp"), (2, "mlp"), (3, "mlp"), (2, "resnet8")])
def test_bf16_fr_equals_reference(K, model, tmp_path):
    """FR in bf16 is the bf16 reference bit for bit (K = 1: backprop under autocast); weights stay fp32.

    K = 3 also runs the diagnostic's passes (under autocast too), which change nothing of the training.
    """
    overrides = overrides_for("fr", model)
    want_states, want_losses = reference(K, overrides)
    diag = ["diag_every=3"] if K == 3 else []
    got_states, got_losses, summary = distributed(K, overrides + diag, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert all(v.dtype in (torch.float32, torch.int64) for state in got_states for v in state.values())
    assert summary["status"] == "ok" and summary["precision"] == "bf16" and summary["steps"] == len(want_losses)
    if diag:
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        sigmas = [r["sigma"] for r in rows if "sigma" in r]
        assert len(sigmas) == len(want_losses) // 3 and all(math.isfinite(s) for s in sigmas)


def test_references_differ_in_bf16():
    """bf16 is not fp32 (so the comparisons above can tell them apart), and both train."""
    fp32 = reference(2, overrides_for("fr", "mlp")[:-1])[1]
    bf16 = reference(2, overrides_for("fr", "mlp"))[1]
    assert fp32 != bf16 and all(math.isfinite(v) for v in fp32 + bf16)
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.1  # the same training, rounded differently


def test_bf16_ring_buffers_hold_half_the_bytes(tmp_path):
    """K = 3, MLP [12, 10, 8] cut [0, 2) [2, 3) [3, 4): stage 1 stores K-k = 2 inputs of 8 x 10, in bf16 half
    the fp32 run's bytes; stage 0 keeps the data as loaded (fp32) in both."""
    fp32 = distributed(3, overrides_for("fr", "mlp")[:-1], tmp_path / "fp32")[2]
    bf16 = distributed(3, overrides_for("fr", "mlp"), tmp_path / "bf16")[2]
    assert fp32["precision"] == "fp32" and bf16["partition"] == fp32["partition"] == [2, 3]
    B = 8
    assert fp32["stages"][1]["ring_bytes"] == 2 * B * 10 * 4
    assert bf16["stages"][1]["ring_bytes"] == 2 * B * 10 * 2 == fp32["stages"][1]["ring_bytes"] // 2
    assert bf16["stages"][0]["ring_bytes"] == fp32["stages"][0]["ring_bytes"] == 3 * B * 5 * 5 * 4
    assert "ring_bytes" not in bf16["stages"][2]  # the last stage stores nothing
    for k in (0, 1):  # the replay's graph on top of the ring, smaller in bf16 too
        assert bf16["stages"][k]["ring_bytes"] < bf16["stages"][k]["peak_mem_bytes"]
        assert bf16["stages"][k]["peak_mem_bytes"] < fp32["stages"][k]["peak_mem_bytes"]


@pytest.mark.parametrize("algo", ["bp", "ddg", "dni"])
def test_bf16_baselines_equal_their_references(algo, tmp_path):
    """bp (K = 2: the whole model's backprop under autocast; the MLP's features are bf16 already, so the
    boundary cast changes nothing), DDG and DNI (its synthetic-gradient models under autocast too)."""
    K, overrides = 2, overrides_for(algo, "mlp")
    if algo == "bp":  # one RNG stream in the whole-model reference, one per stage in the run: no dropout
        overrides = overrides + ["model.dropout=0.0"]
    c, data, stages, batches, lr_of, make_optimizer, make_synth_optimizer, seeds = simulation_inputs(K, overrides)
    torch.set_num_threads(1)  # the ranks run one thread each: same reduction order
    if algo == "bp":
        want_losses = ref.backprop(nn.Sequential(*stages), batches, lr_of, make_optimizer, seeds[0],
                                   precision="bf16")
    elif algo == "ddg":
        want_losses = ref.ddg(stages, batches, lr_of, make_optimizer, seeds, precision="bf16")
    else:
        want_losses = ref.dni(stages, synth_models(stages, c, data.in_shape), batches, lr_of, make_optimizer,
                              make_synth_optimizer, seeds, precision="bf16")
    want_states = [s.state_dict() for s in stages]
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["status"] == "ok" and summary["algo"] == algo


def test_bf16_gpipe_equals_gradient_accumulation_under_autocast(tmp_path):
    """gpipe in bf16: PipeRunner.train_step's schedule under autocast, the optimizer step outside."""
    K, M = 2, 2
    overrides = MLP + COMMON + ["algo=gpipe", f"microbatches={M}", "model.dropout=0.0"] + BF16
    _, _, stages, batches, lr_of, make_optimizer, _, _ = simulation_inputs(K, overrides)
    model = nn.Sequential(*stages)
    torch.set_num_threads(1)
    want_losses = gradient_accumulation(model, batches, lr_of, make_optimizer, M, precision="bf16")
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    assert_states_equal(got_states, [s.state_dict() for s in stages])
    assert got_losses == want_losses
    assert summary["status"] == "ok" and summary["precision"] == "bf16"


@pytest.mark.parametrize("value, match", [("fp16", "precision=fp16 is not offered"), ("half", "must be one of fp32, bf16")])
def test_bad_precision_is_refused(value, match):
    with pytest.raises(FRError, match=match):
        validate(compose([f"precision={value}"]), world_size=1)


def test_link_dtype():
    """What a stage boundary carries: bf16 for floating features in bf16 runs; integers and fp32 runs as probed."""
    from fr_dist.build import link_spec

    assert link_spec(((8, 12), torch.float32), "bf16") == ((8, 12), torch.bfloat16)
    assert link_spec(((8, 12), torch.bfloat16), "bf16") == ((8, 12), torch.bfloat16)
    assert link_spec(((8, 7), torch.int64), "bf16") == ((8, 7), torch.int64)
    assert link_spec(((8, 12), torch.float32), "fp32") == ((8, 12), torch.float32)


def test_bf16_resume_equals_uninterrupted(tmp_path):
    """K = 3: a checkpoint holds bf16 ring slots and the bf16 error gradients taken at the cut; resuming from it
    gives the uninterrupted bf16 run, bit for bit."""
    from fr_dist.runtime import checkpoint

    overrides = overrides_for("fr", "mlp") + ["ckpt_every=3", "ckpt_keep=10"]
    want_states, want_losses, _ = distributed(3, overrides, tmp_path / "straight")
    cut = 6
    got_states, got_losses, summary = distributed(
        3, [*overrides, f"resume={checkpoint.step_dir(tmp_path / 'straight', cut)}"], tmp_path / "resumed")
    assert_states_equal(got_states, want_states)
    assert got_losses[-(len(want_losses) - cut):] == want_losses[cut:]
    saved = [torch.load(checkpoint.step_dir(tmp_path / "straight", cut) / f"stage{k}.pt", weights_only=False)
             for k in range(3)]
    assert saved[0]["worker"]["inputs"].dtype == torch.float32 and saved[1]["worker"]["inputs"].dtype == torch.bfloat16
    # The error gradient that crosses the cut is held by its receiver, in the link's dtype.
    assert [[g.dtype for g in s["held"].values()] for s in saved] == [[torch.bfloat16], [torch.bfloat16], []]
    assert summary["status"] == "ok"
