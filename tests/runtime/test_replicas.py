"""Pipeline x data-parallel replicas (gloo, 4 processes or fewer, tiny models).

The references: the same pipeline with one replica and the global batch, the single-process
FR simulator with the global batch, and torch's DistributedDataParallel. Averaging D means of
b samples equals the mean of D x b up to the order of the sums: float32 rounding, so the
comparisons are close, not equal (rtol 1e-5 after a few dozen steps of a small MLP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fr_dist.runtime import checkpoint
from tests.ranks import collect, free_port, kill_during_training, run_ranks, start_ranks
from tests.support import COMMON, ROOT, reference

# No BatchNorm, dropout or augmentation: the replicas' average is then the big batch's mean.
PLAIN = ["model=mlp", "model.hidden=[12,10]", "model.dropout=0.0", "data.shape=[1,5,5]", "data.classes=4",
         "data.train_size=96", "data.test_size=21", "batch_size=8", "epochs=2"] + COMMON + ["algo=fr"]
BIG = [o if o != "batch_size=8" else "batch_size=16" for o in PLAIN]
RTOL, ATOL = 1e-5, 1e-6


def run(K: int, D: int, overrides: list[str], run_dir) -> tuple[list[dict], dict]:
    ranks = run_ranks(K, [f"replicas={D}", *overrides, f"hydra.run.dir={run_dir}"], world=K * D)
    for r, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {r} failed:\n{rank.err[-3000:]}"
    final = checkpoint.latest(run_dir)
    states = [torch.load(final / f"stage{k}.pt", weights_only=False)["model"] for k in range(K)]
    return states, json.loads((run_dir / "summary.json").read_text())


def assert_close(got: list[dict], want: list[dict]) -> None:
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys()
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=RTOL, atol=ATOL, msg=f"stage {k} {name}")


def test_two_replicas_equal_one_with_the_global_batch(tmp_path):
    """K = 2, D = 2 at batch 8 == K = 2, D = 1 at batch 16 == the simulator at batch 16."""
    got, summary = run(2, 2, PLAIN, tmp_path / "d2")
    big, big_summary = run(2, 1, BIG, tmp_path / "d1")
    want, want_losses = reference(2, BIG)
    assert_close(got, want)
    assert_close(big, want)
    assert summary["steps"] == big_summary["steps"] == len(want_losses)
    assert summary["replicas"] == 2 and len(summary["stages"]) == 4
    assert sorted((s["stage"], s["replica"]) for s in summary["stages"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    rows = [json.loads(line) for line in (tmp_path / "d2" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]  # the mean over the replicas: the big batch's loss
    assert losses == pytest.approx(want_losses, rel=1e-5)
    assert 0 <= summary["test_acc"] <= 1


def test_replicas_hold_identical_weights_after_every_step(tmp_path):
    run_ranks(2, ["replicas=2", *PLAIN, "ckpt_every=1", "ckpt_keep=1000", f"hydra.run.dir={tmp_path}"], world=4)
    steps = checkpoint.complete(tmp_path)
    assert len(steps) == 12  # every step (96 samples / (2 replicas x 8) x 2 epochs), none missing
    for directory in steps:
        for k in range(2):
            digests = [torch.load(directory / checkpoint.stage_file(k, d), weights_only=False)["weights_digest"]
                       for d in range(2)]
            assert digests[0] == digests[1], f"{directory.name} stage {k}"


def test_one_stage_two_replicas_equal_distributed_data_parallel(tmp_path):
    got, _ = run(1, 2, PLAIN, tmp_path / "fr")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    out = tmp_path / "ddp.pt"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.runtime.ddp_worker", str(out), *PLAIN], cwd=ROOT,
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for r, rank in enumerate(collect(procs, 180)):
        assert rank.returncode == 0, f"DDP rank {r}:\n{rank.err[-2000:]}"
    want = torch.load(out)
    assert_close(got, [want])  # the stage holds all blocks: the same keys as the unsplit Sequential


def test_resume_with_replicas_equals_uninterrupted(tmp_path):
    overrides = [*PLAIN, "ckpt_every=5", "ckpt_keep=10"]
    want, _ = run(2, 2, overrides, tmp_path / "straight")
    got, summary = run(2, 2, [*overrides, f"resume={checkpoint.step_dir(tmp_path / 'straight', 10)}"],
                       tmp_path / "resumed")
    for g, w in zip(got, want):
        for name in w:
            assert torch.equal(g[name], w[name]), name
    assert summary["status"] == "ok"
    refused = run_ranks(2, ["replicas=1", *overrides, f"resume={checkpoint.step_dir(tmp_path / 'straight', 10)}",
                            f"hydra.run.dir={tmp_path / 'other'}"])
    assert all(r.returncode != 0 for r in refused)
    assert any("replicas=2" in line and "replicas=1" in line for r in refused for line in r.err.splitlines())


def test_killed_rank_of_one_replica_ends_every_rank(tmp_path):
    long = ["model=mlp", "data.shape=[1,6,6]", "data.train_size=4096", "batch_size=16", "epochs=20", "log_every=1",
            "ckpt_every=0", "threads_per_rank=1", "fail_timeout_s=15", "replicas=2", f"hydra.run.dir={tmp_path}"]
    procs = start_ranks(2, long, world=4)
    results, elapsed = kill_during_training(procs, tmp_path, 3)  # stage 1, replica 1
    assert elapsed < 15 * 1.2, f"survivors took {elapsed:.1f} s"
    assert all(p.returncode != 0 for p in procs)
    messages = [line for out, err in results[:3] for line in err.splitlines() if "error:" in line]
    assert len(messages) == 1, messages
    assert "failed or stopped responding" in messages[0]
