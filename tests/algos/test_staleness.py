"""Staleness compensation and the chunked replay: distributed runs against the reference extended with the
same rules, bit for bit; K = 1 stays backprop; the chunked replay's memory and its sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fr_dist.algos import fr
from fr_dist.config import FRConfig
from fr_dist.reference import features_replay
from tests.support import (COMMON, MLP, RESNET8, assert_states_equal, distributed, overrides_for, reference,
                           run_reference, simulation_inputs)

SPIKE = ["algo.spike_compensation=true"]
PREDICTION = ["algo.weight_prediction=true"]
WARMUP = ["algo.delay_warmup_epochs=1.5"]  # the run is 2 epochs: the warm-up ends inside it
SHRINK = ["algo.grad_shrink=0.7"]
EVERY = SPIKE + PREDICTION + WARMUP + SHRINK


@pytest.mark.parametrize("K,model,options", [
    (3, "mlp", SPIKE), (3, "mlp", PREDICTION), (3, "mlp", WARMUP), (3, "mlp", SHRINK),
    (3, "resnet8", EVERY), (2, "mlp", EVERY + ["optim.nesterov=true", "optim.weight_decay=0.01"]),
    (1, "mlp", EVERY), (1, "resnet8", EVERY + ["algo.replay_chunks=4"]),
    (2, "mlp", ["algo.replay_chunks=4"]), (3, "resnet8", ["algo.replay_chunks=2"]),
], ids=lambda v: "+".join(o.split(".")[-1] for o in v) if isinstance(v, list) else str(v))
def test_distributed_fr_with_compensation_equals_reference(K, model, options, tmp_path):
    """Bit for bit against reference.features_replay with the same rules (K = 1: plain backprop, untouched).

    The MLP has dropout and ResNet-8 BatchNorm: the chunked replay draws its slices' masks one after
    another from the forward's RNG state, and normalises each slice on its own, in both."""
    overrides = (MLP if model == "mlp" else RESNET8) + COMMON + ["algo=fr", *options]
    want_states, want_losses = reference(K, overrides)
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["status"] == "ok"


@pytest.mark.parametrize("K,options", [(3, SPIKE + WARMUP + SHRINK), (1, SPIKE + WARMUP + SHRINK)])
def test_distributed_ddg_with_compensation_equals_reference(K, options, tmp_path):
    overrides = overrides_for("ddg", "mlp") + options
    want_states, want_losses = run_reference("ddg", K, overrides)
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)


@pytest.mark.parametrize("options", [SPIKE, PREDICTION, WARMUP, SHRINK])
def test_each_rule_changes_what_the_delayed_stages_learn(options):
    """In the reference, each rule changes what stages 0 and 1 of K = 3 (tau = 2, 1) learn in 4 steps: the
    comparisons above do not pass by the rule doing nothing."""
    base = MLP + COMMON + ["algo=fr", "max_steps=4"]
    plain, _ = reference(3, base)
    changed, _ = reference(3, base + options)
    for k in (0, 1):
        assert any(not torch.equal(plain[k][n], changed[k][n]) for n in plain[k]), f"stage {k} unchanged"


def test_chunked_replay_is_the_full_replay_up_to_summation_order():
    """Without dropout and batch statistics the slices' gradients sum to the full batch's: equal up to the
    order of the float sums (each slice's weight gradient is summed over its rows, then the slices added)."""
    overrides = [o for o in MLP if not o.startswith("model.dropout")] + COMMON + ["algo=fr", "max_steps=6"]
    states = []
    for chunks in (1, 4):
        _, _, stages, batches, lr_of, make_optimizer, _, seeds = simulation_inputs(3, overrides)
        features_replay(stages, batches[:6], lr_of, make_optimizer, seeds, replay_chunks=chunks)
        states.append([s.state_dict() for s in stages])
    for full, chunked in zip(*states):
        for name in full:
            assert torch.allclose(chunked[name], full[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("model", ["mlp", "resnet8"])
def test_chunked_replay_holds_a_chunk_of_the_graph(model):
    """The replay graph's saved bytes (SavedBytes) fall about M times with replay_chunks = M."""
    overrides = (MLP if model == "mlp" else RESNET8) + COMMON + ["algo=fr", "batch_size=16"]
    c, data, stages, batches, *_ = simulation_inputs(2, overrides)
    x = batches[0][0]
    stage = stages[0]
    out = stage(x).detach()
    peaks = {}
    for chunks in (1, 2, 4, 8):
        worker = fr.Worker(stage, 0, 2, torch.device("cpu"), torch.optim.SGD(stage.parameters(), lr=0.1),
                           lambda b: 0.1, (tuple(x.shape), x.dtype), FRConfig(replay_chunks=chunks))
        worker.forward(0, x)
        worker.backward(0, torch.ones_like(out))
        peaks[chunks] = worker.graph_bytes.peak
    for chunks in (2, 4, 8):
        assert 0.8 * chunks <= peaks[1] / peaks[chunks] <= 1.2 * chunks, peaks
