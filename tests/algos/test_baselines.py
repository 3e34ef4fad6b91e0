"""The paper's baselines DDG and DNI: schedules, distributed runs against the reference, memory."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn

from fr_dist.algos import ALGOS, ddg, dni, fr
from fr_dist.config import DNIConfig
from tests.support import (
    assert_states_equal,
    distributed,
    overrides_for,
    program,
    run_reference,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Distributed runs, each launched once per module: (algo, K, model) -> (states, losses, summary)."""
    cache = {}

    def get(algo: str, K: int, model: str):
        if (algo, K, model) not in cache:
            path = tmp_path_factory.mktemp(f"{algo}{K}{model}")
            cache[(algo, K, model)] = distributed(K, overrides_for(algo, model), path)
        return cache[(algo, K, model)]

    return get


# --- schedules (no processes) ------------------------------------------------

def test_ddg_schedule_is_fr():
    for K, T in [(1, 3), (2, 3), (3, 4), (4, 2), (4, 5)]:
        assert [program(ddg, k, K, T) for k in range(K)] == [program(fr, k, K, T) for k in range(K)]


# BL: local (synthetic) backward, B: train M_k on the true gradient (sends nothing).
DNI_BY_HAND = {
    (2, 3): [
        ["L0 F0 Sx0 BL0 U0", "Pg0 L1 F1 Sx1 BL1 U1 B0", "Pg1 L2 F2 Sx2 BL2 U2 B1", "Pg2 B2"],
        ["Rx0 Y0 FB0 Sg0 U0", "Rx1 Y1 FB1 Sg1 U1", "Rx2 Y2 FB2 Sg2 U2"],
    ],
    (3, 2): [
        ["L0 F0 Sx0 BL0 U0", "Pg0 L1 F1 Sx1 BL1 U1 B0", "Pg1 B1"],
        ["Rx0 F0 Sx0 BL0 Sg0 U0", "Pg0 Rx1 F1 Sx1 BL1 Sg1 U1 B0", "Pg1 B1"],
        ["Rx0 Y0 FB0 Sg0 U0", "Rx1 Y1 FB1 Sg1 U1"],
    ],
}


@pytest.mark.parametrize("K,T", sorted(DNI_BY_HAND))
def test_dni_schedule_exact(K, T):
    assert [program(dni, k, K, T) for k in range(K)] == DNI_BY_HAND[(K, T)]


@pytest.mark.parametrize("name", ["ddg", "dni"])
@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_every_batch_stepped_once_per_stage(name, K):
    algo, T = ALGOS[name], 6
    for k in range(K):
        acts = [a for t in range(algo.iterations(k, K, T)) for a in algo.schedule(k, K, t, T)]
        assert [a.batch for a in acts if a.op == "step"] == list(range(T))
        if name == "dni" and k < K - 1:  # every true gradient trains M_k once, and nothing follows it
            assert [a.batch for a in acts if a.op == "backward"] == list(range(T))
            assert all(acts[i + 1].op != "send_g" for i, a in enumerate(acts[:-1]) if a.op == "backward")


# --- the references differ where the algorithms do ---------------------------

def test_references_differ():
    """DDG is not FR and DNI is neither: the comparisons below can tell them apart."""
    got = {algo: run_reference(algo, 2, overrides_for(algo, "mlp"))[1] for algo in ("fr", "ddg", "dni")}
    assert got["fr"][0] == got["ddg"][0] == got["dni"][0]  # batch 0: nothing stale yet
    assert got["fr"] != got["ddg"] and got["dni"] != got["fr"] and got["dni"] != got["ddg"]
    assert all(math.isfinite(v) for losses in got.values() for v in losses)


# --- distributed against the reference ---------------------------------------

def test_ddg_k1_equals_backprop(runs):
    want_states, want_losses = run_reference("ddg", 1, overrides_for("ddg", "mlp"))
    got_states, got_losses, summary = runs("ddg", 1, "mlp")
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["status"] == "ok" and summary["algo"] == "ddg"


@pytest.mark.parametrize("algo,K,model", [("ddg", 2, "mlp"), ("ddg", 3, "resnet8"), ("dni", 2, "resnet8"),
                                          ("dni", 3, "mlp")])
def test_distributed_equals_reference(algo, K, model, runs):
    """Bit for bit: the same arithmetic in the same order, one thread per rank.

    Parameters and BatchNorm buffers of every stage after the drain, every
    per-step loss. (DNI's synthetic-gradient models are not checkpointed, but
    from batch 1 on every non-last stage's update is their prediction.)
    """
    want_states, want_losses = run_reference(algo, K, overrides_for(algo, model))
    got_states, got_losses, summary = runs(algo, K, model)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["status"] == "ok" and summary["algo"] == algo and summary["steps"] == len(want_losses)
    assert 0 <= summary["test_acc"] <= 1


# --- memory -------------------------------------------------------------------

def test_ddg_holds_more_than_fr(runs):
    """Stored graphs (DDG) against stored inputs plus one replay graph (FR): resnet8, K = 3."""
    ddg_stages = runs("ddg", 3, "resnet8")[2]["stages"]
    fr_stages = runs("fr", 3, "resnet8")[2]["stages"]
    assert ddg_stages[0]["peak_mem_bytes"] > fr_stages[0]["peak_mem_bytes"] > 0
    assert ddg_stages[1]["peak_mem_bytes"] > fr_stages[1]["peak_mem_bytes"] > 0
    # FR's stage 0: K-k = 3 stored inputs of batch_size x 3 x 8 x 8 float32, plus a replay graph.
    assert fr_stages[0]["peak_mem_bytes"] > 3 * 8 * 3 * 8 * 8 * 4


def test_fr_ring_holds_its_inputs():
    """FR's ring buffer: exactly K-k inputs of batch_size x input shape x 4 bytes per stage."""
    K, B = 3, 8
    shapes = [(3, 8, 8), (4, 8, 8), (8, 4, 4)]
    for k, shape in enumerate(shapes):
        worker = fr.Worker(nn.Identity(), k, K, torch.device("cpu"), None, lambda b: 0.1,
                           ((B, *shape), torch.float32))
        want = (K - k) * B * math.prod(shape) * 4 if k < K - 1 else 0
        assert (worker.ring.nbytes if worker.ring else 0) == want


def drive(algo, stage: nn.Module, K: int, T: int, x, grad_of):
    """Run stage 0's compute of `algo` in-process on T copies of `x`; returns the worker."""
    opt = torch.optim.SGD(stage.parameters(), lr=0.01)
    worker = algo.Worker(stage, 0, K, torch.device("cpu"), opt, lambda b: 0.01, (tuple(x.shape), x.dtype))
    for t in range(algo.iterations(0, K, T)):
        for a in algo.schedule(0, K, t, T):
            if a.op == "forward":
                h = worker.forward(a.batch, x)
            elif a.op == "backward":
                worker.backward(a.batch, grad_of(h))
            elif a.op == "local_backward":
                worker.local_backward(a.batch)
            elif a.op == "step":
                worker.step(a.batch)
    return worker


def test_ddg_memory_counts_every_stored_graph():
    """In-process: DDG's peak grows with the number of graphs it holds (K-k), FR's graph part does not."""
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(4, 3, 8, 8)
    peaks = {}
    for K in (2, 4):
        for algo in (ddg, fr):
            peaks[(algo.__name__, K)] = drive(algo, stage, K, 6, x, torch.ones_like).peak_mem_bytes
    ddg2, ddg4, fr2, fr4 = peaks[("fr_dist.algos.ddg", 2)], peaks[("fr_dist.algos.ddg", 4)], \
        peaks[("fr_dist.algos.fr", 2)], peaks[("fr_dist.algos.fr", 4)]
    assert ddg2 > fr2 and ddg4 > fr4
    assert ddg4 == 2 * ddg2  # 4 graphs against 2, each of the same size
    assert fr4 - fr2 == 2 * x.numel() * 4  # two more stored inputs, the same single replay graph


def test_ddg_rejects_a_gradient_for_another_batch():
    worker = ddg.Worker(nn.Linear(3, 3), 0, 3, torch.device("cpu"), None, lambda b: 0.1, ((2, 3), torch.float32))
    worker.forward(0, torch.ones(2, 3))
    worker.forward(1, torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="oldest graph is 0"):
        worker.backward(1, torch.ones(2, 3))


def test_dni_synthetic_models():
    conv = dni.make_synth((2, 4, 5, 5))
    lin = dni.make_synth((2, 6))
    assert isinstance(conv[0], nn.Conv2d) and isinstance(lin[0], nn.Linear)
    assert not conv(torch.randn(2, 4, 5, 5)).any()  # zero-initialised: a zero synthetic gradient at first
    rng = torch.get_rng_state()
    hidden = dni.make_synth((2, 6), hidden=5, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream (dropout) is untouched
    assert torch.equal(hidden[0].weight, dni.make_synth((2, 6), hidden=5, seed=3)[0].weight)
    assert not hidden(torch.randn(2, 6)).any()
    with pytest.raises(ValueError, match="synth=conv"):
        dni.make_synth((2, 6), "conv")


def test_dni_synthetic_model_learns_the_gradient():
    """In-process: with a fixed gradient target, M_k's prediction approaches it."""
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    x = torch.randn(8, 4)
    with torch.no_grad():
        target = stage(x) @ torch.randn(6, 6) * 0.1  # a gradient M_k can represent
    opt = torch.optim.SGD(stage.parameters(), lr=0.0)  # a frozen stage: only M_k moves
    worker = dni.Worker(stage, 0, 2, torch.device("cpu"), opt, lambda b: 0.0, ((8, 4), torch.float32),
                        DNIConfig(name="dni", synth_lr=0.5))
    errors = []
    for t in range(dni.iterations(0, 2, 200)):
        for a in dni.schedule(0, 2, t, 200):
            if a.op == "forward":
                h = worker.forward(a.batch, x)
            elif a.op == "local_backward":
                assert worker.local_backward(a.batch) is None  # stage 0 has no input gradient
            elif a.op == "backward":
                assert worker.backward(a.batch, target) is None
            elif a.op == "step":
                worker.step(a.batch)
        with torch.no_grad():
            errors.append(float((worker.synth(h) - target).pow(2).mean()))
    assert errors[-1] < 0.2 * errors[0]


# --- checkpoints between iterations --------------------------------------------

def train_stage(algo, K: int, T: int, cut: int | None = None):
    """Stage 1 of K in-process on fixed inputs and gradients; with `cut`, save after iteration cut-1
    and go on with a fresh module, optimizer and worker loaded from that state (as a resume does).
    Returns the module's final state and every input gradient the stage produced."""
    xs = [torch.randn(4, 6, generator=torch.Generator().manual_seed(b)) for b in range(T)]
    gs = [torch.randn(4, 8, generator=torch.Generator().manual_seed(100 + b)) * 0.1 for b in range(T)]

    def build():
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3))
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        worker = algo.Worker(module, 1, K, torch.device("cpu"), opt, lambda b: 0.1 / (1 + b), ((4, 6), torch.float32))
        return module, opt, worker

    module, opt, worker = build()
    torch.manual_seed(7)  # the stage's dropout stream
    out = []
    for t in range(algo.iterations(1, K, T)):
        if t == cut:
            buf = io.BytesIO()
            torch.save({"model": module.state_dict(), "opt": opt.state_dict(), "worker": worker.state_dict(),
                        "rng": torch.get_rng_state()}, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=False)
            module, opt, worker = build()
            module.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            worker.load_state_dict(state["worker"])
            torch.set_rng_state(state["rng"])
        for a in algo.schedule(1, K, t, T):
            if a.op == "forward":
                worker.forward(a.batch, xs[a.batch])
            elif a.op == "backward":
                out.append(worker.backward(a.batch, gs[a.batch]))
            elif a.op == "local_backward":
                out.append(worker.local_backward(a.batch))
            elif a.op == "step":
                worker.step(a.batch)
    return module.state_dict(), out


@pytest.mark.parametrize("name", ["ddg", "dni"])
def test_resume_between_iterations_is_exact(name):
    """A checkpoint mid-pipeline (DDG: stored graphs rebuilt from snapshots; DNI: M_k and its stash)."""
    algo, K, T = ALGOS[name], 4, 6
    want_state, want_out = train_stage(algo, K, T)
    for cut in (2, 4):
        got_state, got_out = train_stage(algo, K, T, cut)
        assert len(got_out) == len(want_out)
        for g, w in zip(got_out, want_out):
            assert (g is None and w is None) or torch.equal(g, w)
        assert_states_equal([got_state], [want_state])
    assert train_stage(algo, K, T)[0]["0.weight"].ne(want_state["0.weight"]).sum() == 0  # deterministic
    for k in range(K):  # the last stage and a drained stage hold nothing
        assert algo.Worker(nn.Linear(2, 2), k, K, torch.device("cpu"), None, lambda b: 0.1,
                           ((1, 2), torch.float32)).state_dict() in ({"graphs": []}, {"synth": None, "stored": []})
