"""The pipelining schedules (fr_dist.algos.pipe) on gloo against single-process gradient accumulation.

Each rank is a plain subprocess (tests/algos/pipe_worker.py) that trains every configuration of
pipe_worker.CONFIGS; one launch per world size. The reference here is plain backprop that
accumulates F.cross_entropy(mean) / M over the same M micro-batches, from the same init and data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fr_dist import FRError
from fr_dist.reference import gradient_accumulation
from tests import support
from tests.algos import pipe_worker as W
from tests.ranks import collect, free_port
from tests.support import COMMON, MLP, ROOT, distributed, simulation_inputs

RTOL, ATOL = 1e-5, 1e-6  # what "close" means in the sensitivity check
PLAIN = [(s, False, False) for s in W.SINGLE + W.VIRTUAL]


def launch(K: int, out: Path, timeout: float = 120) -> list[dict]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(K),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.algos.pipe_worker", str(out)], cwd=ROOT,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(K)]
    for r, rank in enumerate(collect(procs, timeout)):
        assert rank.returncode == 0, f"rank {r} of {K} failed:\n{rank.out}"
    return [torch.load(out / f"rank{r}.pt") for r in range(K)]


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["K1", "K2", "K3"])
def ranks(request, tmp_path_factory):
    """(K, per-rank results) of one launch of K ranks."""
    K = request.param
    return K, launch(K, tmp_path_factory.mktemp(f"pipe{K}"))


def reference(scale: float = 1.0 / W.M):
    """Single-process backprop with gradient accumulation of cross_entropy * scale over M micro-batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = nn.Sequential(*W.build_blocks())
        opt = W.make_optimizer(model.parameters())
        x, y = W.data()
        losses = []
        for t in range(W.STEPS):
            parts = []
            for xc, yc in zip(x[t].tensor_split(W.M), y[t].tensor_split(W.M)):
                loss = F.cross_entropy(model(xc), yc) * scale
                loss.backward()
                parts.append(loss.detach())
            losses.append(torch.stack(parts).sum())
            for g in opt.param_groups:
                g["lr"] = W.lr_of(t)
            opt.step()
            opt.zero_grad(set_to_none=False)
        return model.state_dict(), losses
    finally:
        torch.set_num_threads(threads)


def gathered(K: int, results: list[dict], cfg) -> dict:
    """The whole model's state dict from the ranks' (a rank's blocks: its chunks', in model order)."""
    schedule = cfg[0]
    cuts, state = W.cuts(K * W.chunks_per_rank(schedule)), {}
    for k, res in enumerate(results):
        blocks = [b for i in W.chunks_of(schedule, k, K) for b in range(cuts[i], cuts[i + 1])]
        for key, v in res[cfg]["state"].items():
            i, rest = key.split(".", 1)
            state[f"{blocks[int(i)]}.{rest}"] = v
    return state


def assert_states_equal(got: dict, want: dict) -> None:
    """Bit for bit: one thread on both sides, the same micro-batch shapes, 1/M applied per micro-batch
    (a split backward's weight gradients accumulate in micro-batch order, as the reference's)."""
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("cfg", PLAIN, ids=lambda c: c[0])
def test_matches_single_process_accumulation(ranks, cfg):
    K, results = ranks
    if cfg not in W.configs(K):
        pytest.skip(f"{cfg[0]} needs more than M={W.M} micro-batches at K={K}")
    want_state, want_losses = reference()
    assert_states_equal(gathered(K, results, cfg), want_state)
    got_losses = results[-1][cfg]["losses"]
    assert len(got_losses) == W.STEPS and all(l.dim() == 0 for l in got_losses)
    torch.testing.assert_close(torch.stack(got_losses), torch.stack(want_losses), rtol=0, atol=0)
    for res in results[:-1]:
        assert res[cfg]["losses"] == []  # only the last stage returns the loss


def test_reference_is_sensitive_to_loss_scaling(ranks):
    """Without the 1/M (the pipeline's per-micro-batch loss summed), the result is far off, not only in bits."""
    K, results = ranks
    wrong, _ = reference(scale=1.0)
    got = gathered(K, results, PLAIN[0])
    assert any(not torch.allclose(got[key], wrong[key], rtol=RTOL, atol=ATOL) for key in wrong)


@pytest.mark.parametrize("schedule", [s for s in W.SINGLE + W.VIRTUAL if s not in W.SPLIT])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_checkpoint_gives_the_same_result(ranks, schedule, dropout):
    """Recompute in backward with the same RNG: the same weights and losses, bit for bit."""
    K, results = ranks
    on, off = (schedule, True, dropout), (schedule, False, dropout)
    for k in range(K):
        for key, v in results[k][off]["state"].items():
            assert torch.equal(results[k][on]["state"][key], v), (k, key)
    assert torch.equal(torch.stack(results[-1][on]["losses"]), torch.stack(results[-1][off]["losses"]))


def test_dropout_is_active(ranks):
    """The dropout runs differ from the plain ones (else the checkpoint RNG test proves nothing)."""
    K, results = ranks
    assert not torch.equal(torch.stack(results[-1][("gpipe", False, True)]["losses"]),
                           torch.stack(results[-1][("gpipe", False, False)]["losses"]))


def test_peak_memory(ranks):
    """Checkpointing shrinks the stash; GPipe stashes all M micro-batches, 1F1B at most K - k."""
    K, results = ranks
    for k, res in enumerate(results):
        for schedule in ("gpipe", "1f1b"):
            for dropout in (False, True):
                on = res[(schedule, True, dropout)]["peak"]
                off = res[(schedule, False, dropout)]["peak"]
                assert 0 < on <= off, (k, schedule, dropout, on, off)
                # GPipe stashes M = 4 micro-batches everywhere, 1F1B K on stage 0; with fewer (1F1B's
                # last stage holds one) the recomputed graph can cost what the stash saved.
                if schedule == "gpipe" or (k == 0 and K > 1):
                    assert on < off, (k, schedule, dropout, on, off)
        assert res[("gpipe", False, False)]["peak"] > res[("1f1b", False, False)]["peak"], k
        assert all(r["busy"] > 0 for r in res.values())
        assert all(res[(s, False, False)]["peak"] > 0 for s in W.VIRTUAL if (s, False, False) in res), k


def test_checkpoint_leaves_batchnorm_statistics_alone():
    """The recompute in backward neither updates running statistics again nor changes gradients."""
    from fr_dist.algos.pipe import _StageModule
    from fr_dist.runtime.memory import StashMeter

    def run(checkpoint: bool):
        torch.manual_seed(0)
        inner = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        wrapped = _StageModule(inner, StashMeter(inner), checkpoint)
        x = torch.randn(10, 6, requires_grad=True)
        wrapped(x).square().sum().backward()
        wrapped(x + 1).sum().backward()
        return inner, x.grad

    (a, ga), (b, gb) = run(False), run(True)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), key
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
    assert torch.equal(ga, gb)
    assert int(b[1].num_batches_tracked) == 2


@pytest.mark.parametrize("schedule, M, B, match", [("gpipe", 5, 12, "divide"), ("1f1b", 1, 12, ">= splits"),
                                                   ("dualpipev", 2, 12, ">= its 4 pipeline"),
                                                   ("zb", 5, 10, "multiple of"), ("zbb", 4, 12, "one of")])
def test_bad_arguments(schedule, M, B, match):
    from fr_dist.algos.pipe import Chunk, PipeRunner

    spec = ((B, 4), torch.float32)
    chunks = [Chunk(0, nn.Linear(4, 4), spec, spec)] * (1 if schedule in W.SINGLE else 2)
    with pytest.raises((ValueError, FRError), match=match):
        PipeRunner(nn.Linear(4, 4), chunks, 0, 2, torch.device("cpu"), None, schedule, M, B, None, W.lr_of)


@pytest.mark.parametrize("algo,K,M,adamw_clipped", [("gpipe", 2, 2, False), ("1f1b", 3, 4, False),
                                                     ("gpipe", 2, 2, True)])
def test_trainer_equals_gradient_accumulation(algo, K, M, adamw_clipped, tmp_path):
    """`python -m fr_dist.train algo=gpipe|1f1b` end to end (its data, rates, checkpoints) against
    single-process gradient accumulation of cross_entropy / M over the same micro-batches, bit for bit;
    with clipping each stage's gradient on its own, at a bound every stage's first gradient exceeds."""
    overrides = MLP + COMMON + [f"algo={algo}", f"microbatches={M}", "model.dropout=0.0"]
    if adamw_clipped:
        overrides = support.clipping(K, overrides + ["optim=adamw"])
    c, _, stages, batches, lr_of, make_optimizer, _, _ = simulation_inputs(K, overrides)
    model = nn.Sequential(*stages)
    torch.set_num_threads(1)
    want_losses = gradient_accumulation(model, batches, lr_of, make_optimizer, M,
                                        clip_grad_norm=c.optim.clip_grad_norm)
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    support.assert_states_equal(got_states, [s.state_dict() for s in stages])
    assert got_losses == want_losses
    assert summary["status"] == "ok" and summary["algo"] == algo and len(summary["stages"]) == K


def accuracy(model: nn.Module, data, test_batches: int) -> float:
    """The loop's test accuracy of `model` (eval mode) over the first test batches (padded rows dropped)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for e in range(test_batches):
            y = data.test_labels(e)
            correct += int((model(data.test_inputs(e))[: len(y)].argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return correct / total


@pytest.mark.parametrize("algo", W.VIRTUAL)
def test_virtual_stages_equal_gradient_accumulation(algo, tmp_path):
    """`python -m fr_dist.train algo=NAME` with V = 2 chunks per rank (looped or V placement) against
    single-process gradient accumulation over the same micro-batches, bit for bit: every rank's blocks
    (its chunks'), the losses (sent to the last rank where the loss is on rank 0), and the test accuracy
    its chunk-after-chunk evaluation reports; peak activation memory is reported per rank."""
    from fr_dist.algos import PIPELINES
    from fr_dist.partition import stage_cuts

    K, V, M = 2, 2, 4
    overrides = MLP + COMMON + [f"algo={algo}", f"microbatches={M}", f"algo.virtual={V}", "model.dropout=0.0"]
    c, data, stages, batches, lr_of, make_optimizer, _, _ = simulation_inputs(K, overrides)
    blocks = [b for s in stages for b in s]
    torch.set_num_threads(1)
    want_losses = gradient_accumulation(nn.Sequential(*blocks), batches, lr_of, make_optimizer, M)
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    cuts = stage_cuts(len(blocks), K * V, "uniform")
    mine = [PIPELINES[algo].chunks_of(k, K, V) for k in range(K)]
    want_states = [nn.Sequential(*(b for i in chunks for b in blocks[cuts[i]:cuts[i + 1]])).state_dict()
                   for chunks in mine]
    support.assert_states_equal(got_states, want_states)
    assert got_losses == want_losses
    assert summary["test_acc"] == accuracy(nn.Sequential(*blocks), data, data.test_batches)
    assert summary["status"] == "ok" and summary["algo"] == algo
    for k, row in enumerate(summary["stages"]):
        assert row["blocks"] == [b for i in mine[k] for b in range(cuts[i], cuts[i + 1])]
        assert row["peak_mem_bytes"] > 0


@pytest.mark.parametrize("overrides, match", [
    (["algo=zb", "algo.checkpoint=true"], "algo.checkpoint=true with algo=zb is not offered"),
    (["algo=zbv", "algo.virtual=3"], "algo.virtual"),
    (["algo=dualpipev", "microbatches=2"], "dualpipev needs microbatches >= its 4"),
    (["algo=interleaved1f1b", "batch_size=10", "microbatches=5"], "multiple of its rounds"),
    (["algo=interleaved1f1b", "compile=true"], "compile=true with algo=interleaved1f1b"),
    (["algo=zb", "partition=[1]"], "partition"),
    (["algo=zbv", "replicas=2"], "replicas"),
    (["algo=zbv", "diag_every=1"], "diag_every"),
    (["algo=gpipe", "+algo.virtual=2"], "algo.virtual is not an option of algo=gpipe"),
])
def test_virtual_stage_refusals(overrides, match):
    """What the virtual-stage schedules cannot do is refused at start-up with one message."""
    from fr_dist.compose import compose
    from fr_dist.config import validate

    world = 4 if "replicas=2" in overrides else 2
    with pytest.raises(FRError, match=match):
        validate(compose(["splits=2", *MLP, *COMMON, *overrides]), world_size=world)


def test_fewer_blocks_than_chunks_is_refused(tmp_path):
    """splits x algo.virtual chunks need as many blocks: one message at start-up, from the build."""
    from tests.ranks import run_ranks

    overrides = MLP + COMMON + ["algo=interleaved1f1b", "algo.virtual=4", f"hydra.run.dir={tmp_path}"]
    support.assert_one_clear_error(run_ranks(2, overrides), "splits x algo.virtual = 8 chunks")


def test_resume_with_other_virtual_stages_is_refused(tmp_path):
    """A checkpoint of V = 2 chunks per rank holds other blocks than V = 3 would: one message naming algo.virtual."""
    from tests.ranks import run_ranks

    overrides = ["model=mlp", "model.hidden=[8,8,8,8,8]", "model.dropout=0.0", "data.shape=[1,5,5]", "data.classes=4",
                 "data=synthetic", "data.train_size=32", "data.test_size=8", "batch_size=8", "epochs=1", *COMMON,
                 "algo=interleaved1f1b", "microbatches=4", "max_steps=2"]
    distributed(2, [*overrides, "algo.virtual=2"], tmp_path / "a")
    ranks = run_ranks(2, [*overrides, "algo.virtual=3", f"resume={tmp_path / 'a' / 'checkpoints'}",
                          f"hydra.run.dir={tmp_path / 'b'}"], timeout=120)
    support.assert_one_clear_error(ranks, "was made with algo.virtual=2, this run has algo.virtual=3")
