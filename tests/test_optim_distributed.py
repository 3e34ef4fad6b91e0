"""An update uses the rate of the batch it applies, across real ranks; AdamW and per-stage clipping."""

from __future__ import annotations

import torch

import fr_dist.reference as simulators
from tests.support import (
    COMMON,
    MLP,
    RESNET8,
    assert_states_equal,
    clipping,
    distributed,
    reference,
    simulation_inputs,
)


def test_step_schedule_uses_the_rate_of_the_replayed_batch(tmp_path):
    """A stage replaying batch t-(K-1-k) uses lr(t-(K-1-k)), drain included: against the reference."""
    overrides = MLP + COMMON + ["algo=fr", "optim.schedule.name=step", "optim.schedule.milestones=[1]",
                                "optim.schedule.gamma=0.2", "optim.momentum=0.0"]
    want_states, want_losses = reference(3, overrides)
    got_states, got_losses, _ = distributed(3, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)


def test_adamw_with_clipping_at_K1_is_torch_adamw_on_the_whole_model(tmp_path):
    """One rank with optim=adamw, a cosine schedule with warm-up and clipping: torch.optim.AdamW with the
    decayed / not decayed groups built by hand (tests/support.py) and torch's clip_grad_norm_ on the whole
    model, bit for bit. ResNet-8 has BatchNorm: its parameters form the group without decay."""
    resnet8 = [o for o in RESNET8 if not o.startswith("optim.")]  # nesterov is SGD's
    overrides = clipping(1, resnet8 + COMMON + ["algo=bp", "optim=adamw", "optim.weight_decay=0.3",
                                                "optim.schedule.name=cosine", "optim.schedule.warmup_epochs=0.5"])
    want_states, want_losses = reference(1, overrides)
    got_states, got_losses, _ = distributed(1, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)


def test_fr_with_adamw_clips_each_stage_on_its_own(tmp_path):
    """FR K = 2 with AdamW and clip_grad_norm: the reference's per-stage AdamW and per-stage clipping, bit for
    bit; in the reference both stages' norms exceed the bound in some step (clipping is exercised)."""
    overrides = clipping(2, MLP + COMMON + ["algo=fr", "model.dropout=0.0", "optim=adamw",
                                            "optim.schedule.name=onecycle"])
    c, _, stages, batches, lr_of, make_optimizer, _, seeds = simulation_inputs(2, overrides)
    norms = []  # (stage, norm of its raw gradient) for every step

    def record(t, updates):
        for k in updates:
            grads = [p.grad.norm() for p in stages[k].parameters()]
            norms.append((k, torch.linalg.vector_norm(torch.stack(grads)).item()))

    torch.set_num_threads(1)
    want_losses = simulators.features_replay(stages, batches, lr_of, make_optimizer, seeds, record,
                                             clip_grad_norm=c.optim.clip_grad_norm)
    assert {k for k, norm in norms if norm > c.optim.clip_grad_norm} == {0, 1}
    got_states, got_losses, _ = distributed(2, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, [s.state_dict() for s in stages])
