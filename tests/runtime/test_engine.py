"""The engine executing actions."""

from __future__ import annotations

import torch


def test_busy_time_leaves_out_the_wait_for_the_error_gradient():
    import time

    from fr_dist.runtime.actions import Action
    from fr_dist.runtime.engine import Engine

    class SlowLink:  # the gradient arrives 0.3 s after the stage asks for it
        def wait(self, batch):
            time.sleep(0.3)
            return torch.ones(2)

    class Stage:  # a backward that computes for 0.1 s
        def backward(self, batch, grad):
            end = time.perf_counter() + 0.1
            while time.perf_counter() < end:
                pass
            return grad

    engine = Engine(Stage(), None, {"g_in": SlowLink()}, torch.device("cpu"))
    start = time.perf_counter()
    engine.run([Action("backward", 0)])
    assert time.perf_counter() - start >= 0.4  # the action took both
    assert 0.09 <= engine.busy_s < 0.25  # only the compute counts
