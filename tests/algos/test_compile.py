"""compile=true: every graph compiled at start-up (the warm-up), which leaves no trace in the training.

The warm-up runs a stage's own program on zeros and puts every state back. With TORCH_COMPILE_DISABLE=1
(torch's own switch: torch.compile returns the function as it is) the warm-up still runs, and the
training must equal the eager reference bit for bit: weights, BatchNorm statistics, optimizer, ring
buffer, stored graphs, synthetic-gradient models and RNG streams all restored. With inductor on this
CPU the run compiles every graph before the first iteration and trains like the eager reference,
up to rounding.
"""

from __future__ import annotations

import pytest
import torch

from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.errors import FRError
from fr_dist.reference import gradient_accumulation
from tests.ranks import run_ranks
from tests.support import (
    COMMON,
    MLP,
    assert_one_clear_error,
    assert_states_equal,
    distributed,
    overrides_for,
    reference,
    run_reference,
    simulation_inputs,
)

COMPILE = ["compile=true"]


@pytest.mark.parametrize("algo,K,model,extra", [("fr", 3, "resnet8", ["diag_every=3"]), ("ddg", 2, "mlp", []),
                                                ("dni", 2, "mlp", [])])
def test_warm_up_leaves_no_trace(algo, K, model, extra, tmp_path, monkeypatch):
    """FR (BatchNorm, ring buffers, the diagnostic's passes), DDG with dropout (stored graphs, RNG streams),
    DNI with dropout (synthetic-gradient models): the warmed-up run is the reference, bit for bit."""
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    overrides = overrides_for(algo, model)
    want_states, want_losses = run_reference(algo, K, overrides)
    got_states, got_losses, summary = distributed(K, overrides + COMPILE + extra, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["compile"] is True and summary["status"] == "ok"
    assert all(s["compile_s"] > 0 and s["late_compile_s"] == 0 and s["compiled_graphs"] == 0
               for s in summary["stages"])


def test_warm_up_leaves_no_trace_gpipe(tmp_path, monkeypatch):
    """gpipe's warm-up (one micro-batch forward and backward through the stage): the run is still
    single-process gradient accumulation of cross_entropy / M, bit for bit."""
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    K, M = 2, 2
    overrides = MLP + COMMON + ["algo=gpipe", f"microbatches={M}", "model.dropout=0.0"]
    _, _, stages, batches, lr_of, make_optimizer, _, _ = simulation_inputs(K, overrides)
    model = torch.nn.Sequential(*stages)
    torch.set_num_threads(1)
    want_losses = gradient_accumulation(model, batches, lr_of, make_optimizer, M)
    got_states, got_losses, summary = distributed(K, overrides + COMPILE, tmp_path)
    assert_states_equal(got_states, [s.state_dict() for s in stages])
    assert got_losses == want_losses
    assert summary["compile"] is True and all(s["late_compile_s"] == 0 for s in summary["stages"])


def test_compiled_fr_compiles_at_start_up_and_trains_like_eager(tmp_path):
    """Inductor, K = 2, a tiny MLP without dropout, 2 steps: stage 0 compiles its no-graph forward, its replay
    and its evaluation forward, the last stage its loss step and its evaluation, all before the first
    iteration; the weights are the eager reference's up to rounding."""
    overrides = MLP + COMMON + ["algo=fr", "model.dropout=0.0", "data.train_size=16", "epochs=1"]
    want_states, want_losses = reference(2, overrides)
    got_states, got_losses, summary = distributed(2, overrides + COMPILE, tmp_path)
    stages = summary["stages"]
    assert all(s["compiled_graphs"] >= 2 for s in stages)  # at least the no-graph and the graph forward
    assert all(s["late_compile_s"] == 0 for s in stages)  # nothing compiled during training or evaluation
    assert summary["compile_s"] == max(s["compile_s"] for s in stages) > 0
    assert len(got_losses) == len(want_losses) == 2
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=1e-4, atol=1e-5)
    for got, want in zip(got_states, want_states):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_compile_refused_with_dropout_that_fr_replays(tmp_path):
    ranks = run_ranks(2, MLP + COMMON + ["algo=fr"] + COMPILE + [f"hydra.run.dir={tmp_path}"])
    assert_one_clear_error(ranks, "compile=true with algo=fr and dropout in a replayed stage (block 0 holds Dropout")


def test_compile_without_a_cpp_compiler_is_one_clear_error(tmp_path, monkeypatch):
    """On the CPU inductor needs a C++ compiler: none found is one start-up message, not a traceback."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # no compiled graph from an earlier run
    ranks = run_ranks(2, MLP + COMMON + ["algo=fr", "model.dropout=0.0"] + COMPILE + [f"hydra.run.dir={tmp_path}"])
    assert_one_clear_error(ranks, "compile=true: torch.compile failed on this stage (on the CPU it needs a working C++")


@pytest.mark.parametrize("algo", ["gpipe", "1f1b"])
def test_compile_refused_with_a_checkpointed_pipeline(algo):
    with pytest.raises(FRError, match="algo.checkpoint=true is not offered"):
        validate(compose(["splits=2", f"algo={algo}", "algo.checkpoint=true", "microbatches=2"] + COMPILE), 2)
