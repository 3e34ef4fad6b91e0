"""data=custom end to end: two ranks (gloo, CPU) train on a user's Datasets exactly as on the same tensors in memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support import COMMON, ROOT, assert_states_equal, distributed

SIZES = dict(shape="[1,5,5]", classes=4, train_size=56, test_size=13)
RUN = ["model=mlp", "model.hidden=[12,10,8]", "model.dropout=0.25", "batch_size=8", "epochs=2", *COMMON]
SEED = 3  # COMMON's: data=synthetic draws its tensors from the run's seed


def in_memory() -> list[str]:
    return ["data=synthetic", *(f"data.{k}={v}" for k, v in SIZES.items()), *RUN]


def custom(*more: str) -> list[str]:
    return ["data=custom", "data._target_=tests.data.userdata.synthetic", f"data.classes={SIZES['classes']}",
            *(f"+data.args.{k}={v}" for k, v in SIZES.items()), f"+data.args.seed={SEED}", *more, *RUN]


def test_custom_data_trains_like_the_same_tensors_in_memory(tmp_path):
    """FR K = 2 over two epochs with evaluations: weights, losses and test accuracy bit for bit."""
    want_states, want_losses, want = distributed(2, in_memory(), tmp_path / "memory")
    got_states, got_losses, got = distributed(2, custom("data.workers=2"), tmp_path / "custom")
    assert_states_equal(got_states, want_states)
    assert got_losses == want_losses and len(got_losses) == 14
    assert (got["test_acc"], got["data"]) == (want["test_acc"], "tests.data.userdata.synthetic")


def test_a_sample_failing_in_a_worker_stops_every_rank_with_one_message(tmp_path):
    """Through fr_dist.launch (torchrun's agent keeps the store): stage 0 reads the bad sample first and speaks;
    the last stage, which loses it, finds that recorded and stays silent."""
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fr_dist.launch", "splits=2", "progress=false",
                           *custom("+data.args.fail_at=13"), f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("[stage 0] error: data._target_='tests.data.userdata.synthetic': reading training "
                                "batch ") and "failed: ValueError: sample 13 is unreadable; fix the dataset" in errors[0]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert time.monotonic() - started < 60  # no rank waits for fail_timeout_s
