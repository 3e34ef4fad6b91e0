"""Exact resume, automatic restart, preemption, dead peers and bad numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fr_dist.runtime import checkpoint
from tests.ranks import free_port, kill_during_training, metrics_rows, run_ranks, start_ranks, wait_for
from tests.support import COMMON, MLP, RESNET8, ROOT, assert_states_equal, distributed


def losses_after(run_dir: Path, step: int) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and r["step"] > step]


@pytest.mark.parametrize("K,model,cut,optim", [
    (2, "mlp", 6, []), (3, "resnet8", 9, []), (2, "mlp", 6, ["optim=adamw", "optim.clip_grad_norm=0.5"]),
    (3, "mlp", 6, ["algo.spike_compensation=true", "algo.weight_prediction=true", "algo.delay_warmup_epochs=1.5",
                   "algo.grad_shrink=0.7", "algo.replay_chunks=2"])])
def test_resume_equals_uninterrupted(K, model, cut, optim, tmp_path):
    """N steps straight equal N/2 steps, stop, resume, the rest: parameters and per-step losses, bit for bit
    (AdamW's moments and step counts are in the optimizer's checkpoint like SGD's momentum, which the
    staleness compensations read)."""
    overrides = (MLP if model == "mlp" else RESNET8) + COMMON + ["algo=fr", "ckpt_every=3", "ckpt_keep=10", *optim]
    straight = tmp_path / "straight"
    want_states, _, _ = distributed(K, overrides, straight)
    resumed = tmp_path / "resumed"
    got_states, _, summary = distributed(K, [*overrides, f"resume={checkpoint.step_dir(straight, cut)}"], resumed)
    assert_states_equal(got_states, want_states)
    assert losses_after(resumed, cut) == losses_after(straight, cut)
    assert summary["status"] == "ok"


LONG = ["model=mlp", "data.shape=[1,6,6]", "data.train_size=4096", "batch_size=16", "epochs=20", "log_every=1",
        "ckpt_every=20", "threads_per_rank=1", "fail_timeout_s=15"]


def test_killed_rank_ends_every_rank_with_one_message(tmp_path):
    procs = start_ranks(3, [*LONG, f"hydra.run.dir={tmp_path}"])
    results, elapsed = kill_during_training(procs, tmp_path, 1)
    assert elapsed < 15 + 10, f"survivors took {elapsed:.1f} s"
    assert [p.returncode != 0 for p in procs] == [True, True, True]
    messages = [line for r in (0, 2) for line in results[r][1].splitlines() if "error:" in line]
    assert len(messages) == 1, messages
    assert "stage 1 failed or stopped responding" in messages[0] and "step" in messages[0]


FREEZE_TIMEOUT_S = 20


@pytest.mark.parametrize("victim", [0, 1], ids=["store-host", "middle"])
def test_frozen_rank_ends_every_other_rank_within_the_bound(victim, tmp_path):
    """SIGSTOP of one rank of 3: every other rank exits non-zero within 1.2 x fail_timeout_s of the
    freeze, with one message naming the frozen stage. Rank 0 serves the job's store in a plain launch,
    so freezing it also freezes the store."""
    procs = start_ranks(3, [*LONG[:-1], f"fail_timeout_s={FREEZE_TIMEOUT_S}", f"hydra.run.dir={tmp_path}"])
    ended = {}
    try:
        wait_for(lambda: metrics_rows(tmp_path) >= 5, 120, "training to start")
        procs[victim].send_signal(signal.SIGSTOP)
        started = time.monotonic()
        while len(ended) < 2 and time.monotonic() - started < 3 * FREEZE_TIMEOUT_S:
            for r, p in enumerate(procs):
                if r != victim and r not in ended and p.poll() is not None:
                    ended[r] = time.monotonic() - started
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [p.communicate(timeout=30) for p in procs]
    assert sorted(ended) == [r for r in range(3) if r != victim], f"still running: {ended}"
    assert max(ended.values()) <= 1.2 * FREEZE_TIMEOUT_S, ended
    assert all(procs[r].returncode != 0 for r in ended)
    messages = [line for r in ended for line in results[r][1].splitlines() if "error:" in line]
    assert len(messages) == 1, messages
    assert f"stage {victim} failed or stopped responding" in messages[0], messages[0]


def test_sigterm_checkpoints_and_resume_finishes(tmp_path):
    overrides = [*LONG, "epochs=2", "data.train_size=1024", "ckpt_every=1000", f"hydra.run.dir={tmp_path}"]
    procs = start_ranks(2, overrides)
    try:
        wait_for(lambda: metrics_rows(tmp_path) >= 3, 120, "training to start")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [143, 143]
    saved = checkpoint.latest(tmp_path)
    assert saved is not None and 0 < int(saved.name.split("_")[1]) < 128
    assert sum("stopped by SIGTERM" in r[1] for r in results) == 1
    again = run_ranks(2, overrides)  # resume=auto is the default
    assert all(r.returncode == 0 for r in again), again[1].err[-2000:]
    assert f"resumed from step {int(saved.name.split('_')[1])}" in again[0].err
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 128


def test_torchrun_restart_resumes_exactly(tmp_path):
    """Kill a rank under torchrun --max-restarts=1: the job resumes itself and ends as if uninterrupted."""
    overrides = [*LONG, "epochs=1", "data.train_size=1280", "ckpt_every=20", "progress=false",
                 "wandb.mode=disabled"]
    straight = tmp_path / "straight"
    want_states, want_losses, _ = distributed(2, [*overrides, "seed=5"], straight)
    work = tmp_path / "restarted"
    work.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--max-restarts=1",
                            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                            "--nproc_per_node=2", "-m", "fr_dist.train", "splits=2", "seed=5", *overrides],
                           cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(work.glob("outputs/*/*/checkpoints/step_*/COMPLETE")), 120, "a checkpoint")
        workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[-1]), signal.SIGKILL)
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-3000:]
    assert "resumed from step" in err
    (run_dir,) = list(work.glob("outputs/*/*"))  # the restart found the same run directory
    final = checkpoint.latest(run_dir)
    got = [torch.load(final / f"stage{k}.pt", weights_only=False)["model"] for k in range(2)]
    assert_states_equal(got, want_states)
    rows_ = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_ if "loss" in r] == want_losses


def test_checkpoint_of_another_run_is_refused(tmp_path):
    overrides = MLP + COMMON + ["algo=fr", "max_steps=4"]
    distributed(2, overrides, tmp_path / "a")
    ranks = run_ranks(2, [*overrides, "model.hidden=[12,10,9]", f"resume={tmp_path / 'a' / 'checkpoints'}",
                          f"hydra.run.dir={tmp_path / 'b'}"], timeout=60)
    errors = [line for r in ranks for line in r.err.splitlines() if "error:" in line]
    assert all(r.returncode != 0 for r in ranks) and len(errors) == 1, errors
    assert "was made with model=" in errors[0]


def test_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    overrides = MLP + COMMON + ["algo=fr", "ckpt_every=7", "ckpt_keep=3", f"hydra.run.dir={tmp_path}"]
    want, _, _ = distributed(2, overrides, tmp_path)
    last = checkpoint.latest(tmp_path)
    assert last.name == "step_00000014"
    (last / "stage1.pt").write_bytes(b"not a checkpoint")
    # Named explicitly, it is refused with one message.
    ranks = run_ranks(2, [*overrides, f"resume={last}"], timeout=60)
    errors = [line for r in ranks for line in r.err.splitlines() if "error:" in line]
    assert all(r.returncode != 0 for r in ranks) and len(errors) == 1, errors
    assert "is corrupt" in errors[0] and "stage1.pt" in errors[0]
    assert not any("Traceback" in r.err for r in ranks), [r.err for r in ranks]
    # With resume=auto the previous complete checkpoint is used, and the run ends as before.
    got, _, summary = distributed(2, overrides, tmp_path)
    assert summary["status"] == "ok"
    assert_states_equal(got, want)


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path):
    # A fine first epoch (checkpoint at step 7), then a rate that blows up.
    overrides = MLP + COMMON + ["algo=fr", "ckpt_every=7", "optim.schedule.name=step", "optim.momentum=0",
                                "optim.schedule.milestones=[1]", "optim.schedule.gamma=1e30",
                                "model.dropout=0.0", f"hydra.run.dir={tmp_path}"]
    ranks = run_ranks(2, overrides, timeout=60)
    errors = [line for r in ranks for line in r.err.splitlines() if "error:" in line]
    assert all(r.returncode != 0 for r in ranks) and len(errors) == 1, errors
    assert "non-finite training loss" in errors[0] and "step" in errors[0]
    kept = checkpoint.latest(tmp_path)
    assert kept is not None and kept.name == "step_00000007"
    state = torch.load(kept / "stage0.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ranks = run_ranks(2, ["model=mlp", f"hydra.run.dir={blocker / 'run'}"], timeout=60)
    errors = [line for r in ranks for line in r.err.splitlines() if "error:" in line]
    assert all(r.returncode != 0 for r in ranks) and len(errors) == 1, errors
    assert "cannot write the run directory" in errors[0] and "hydra.run.dir" in errors[0]
