"""An update uses the rate of the batch it applies, across real ranks."""

from __future__ import annotations

from tests.support import COMMON, MLP, assert_states_equal, distributed, reference


def test_step_schedule_uses_the_rate_of_the_replayed_batch(tmp_path):
    """A stage replaying batch t-(K-1-k) uses lr(t-(K-1-k)), drain included: against the reference."""
    overrides = MLP + COMMON + ["algo=fr", "optim.schedule.name=step", "optim.schedule.milestones=[1]",
                                "optim.schedule.gamma=0.2", "optim.momentum=0.0"]
    want_states, want_losses = reference(3, overrides)
    got_states, got_losses, _ = distributed(3, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
