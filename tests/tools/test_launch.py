"""Sweeps (`python -m fr_dist.launch -m ...`), their results tables, W&B offline logs.

One small sweep (the `sweep` fixture of conftest.py: splits=1,2,3 x algo=fr,bp, 4 torchrun
jobs that train and 2 points that fail at start-up) runs once for tests/tools, and most
tests here and in test_plot.py read what it left.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.wandb_reader import history, records

ROOT = Path(__file__).resolve().parents[2]
TINY = ["algo=fr", "model=mlp", "model.hidden=[8]", "data=synthetic", "data.shape=[1,4,4]", "data.train_size=32",
        "data.test_size=8", "batch_size=8", "epochs=2", "log_every=1", "progress=false"]
SUMMARY_KEYS = ("algo", "splits", "seed", "status", "test_acc", "final_train_loss", "samples_per_s", "wall_s")


def launch(*args: str, timeout: float = 300, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env_vars)
    return subprocess.run([sys.executable, "-m", "fr_dist.launch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_one_row_per_point_equal_to_its_summary(sweep):
    d, proc = sweep
    assert proc.returncode == 1, proc.stdout + proc.stderr  # two points failed: the sweep says so
    rows = read_csv(d / "results.csv")
    assert [r["point"] for r in rows] == [str(i) for i in range(6)]
    assert list(rows[0])[:12] == ["point", *SUMMARY_KEYS[:4], "test_acc", "val_loss", "final_train_loss",
                                  "samples_per_s", "tokens_per_s", "wall_s", "peak_mem_bytes"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted((r["splits"], r["algo"]) for r in ok) == [("1", "bp"), ("1", "fr"), ("2", "bp"), ("2", "fr")]
    for row in ok:
        summary = json.loads((d / row["point"] / "summary.json").read_text())
        for key in SUMMARY_KEYS:
            expected = summary[key]
            assert (float(row[key]) == expected) if isinstance(expected, float) else (row[key] == str(expected)), key
        assert row["peak_mem_bytes"] == ";".join(str(s["peak_mem_bytes"]) for s in summary["stages"])
        assert row["val_loss"] == row["tokens_per_s"] == ""  # a language model's
        assert len(row["peak_mem_bytes"].split(";")) == int(row["splits"])
    md = (d / "results.md").read_text().splitlines()
    assert md[0].startswith("| point | algo | splits | seed | status |") and len(md) == 2 + 6


def test_language_model_rows_have_val_loss_and_tokens_per_s(gpt_run, tmp_path):
    """A GPT run's summary as a point's row: val_loss and tokens_per_s filled, test_acc empty."""
    from fr_dist.tools.launch import ROWS_DIR, summary_row, write_results

    _, _, summary = gpt_run
    (tmp_path / ROWS_DIR).mkdir()
    (tmp_path / ROWS_DIR / "0.json").write_text(json.dumps({"point": "0", **summary_row(summary), "num": 0}))
    write_results(tmp_path)
    [row] = read_csv(tmp_path / "results.csv")
    assert float(row["val_loss"]) == summary["val_loss"] and float(row["tokens_per_s"]) == summary["tokens_per_s"]
    assert row["test_acc"] == ""
    header, _, cells = (line.split(" | ") for line in (tmp_path / "results.md").read_text().splitlines())
    assert cells[header.index("val_loss")] == f"{summary['val_loss']:.4f}"


def test_failed_point_is_a_row_and_its_message_comes_last(sweep):
    d, proc = sweep
    failed = [r for r in read_csv(d / "results.csv") if r["status"] != "ok"]
    assert sorted(r["algo"] for r in failed) == ["bp", "fr"]
    for row in failed:
        assert row["splits"] == "3" and row["seed"] == "0"
        assert row["status"] == "failed (exit 1)"
        assert row["test_acc"] == row["samples_per_s"] == row["peak_mem_bytes"] == ""
        assert not (d / row["point"] / "summary.json").exists()
    # the failing rank's one line, and no report of torchrun's or Python's
    assert "[stage 0] error:" in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert "[launch] 4 of 6 points ok" in proc.stdout


def test_point_directories_hold_only_the_trainers_files(sweep):
    d, _ = sweep
    for row in read_csv(d / "results.csv"):
        p = d / row["point"]
        assert not list(p.glob("*.log")), "the launcher's Hydra job log landed in a point directory"
        assert sorted(x.name for x in (p / ".hydra").iterdir()) == ["config.yaml", "overrides.yaml"]
        overrides = (p / ".hydra" / "overrides.yaml").read_text()
        assert f"splits={row['splits']}" in overrides and f"algo={row['algo']}" in overrides
        assert "wandb.group='k_sweep'" in overrides  # the sweep's name, as wandb.group was not set
    assert (d / "multirun.yaml").exists()  # the launcher's own Hydra file, in the sweep directory


def wandb_records(path, kind: str) -> list:
    from wandb.proto import wandb_internal_pb2

    out = []
    for payload in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") == kind:
            out.append(getattr(rec, kind))
    return out


def test_wandb_offline_history_matches_metrics(sweep):
    d, _ = sweep
    for row in read_csv(d / "results.csv"):
        if row["status"] != "ok":
            continue
        point = d / row["point"]
        files = list((point / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) == 1, files  # exactly one W&B run per job
        logged = history(files[0])
        rows = [json.loads(line) for line in (point / "metrics.jsonl").read_text().splitlines()]
        loss_steps = [r["step"] for r in rows if "loss" in r]
        assert loss_steps == list(range(1, 9))
        assert [h["_step"] for h in logged if "loss" in h] == loss_steps
        assert [h["loss"] for h in logged if "loss" in h] == pytest.approx([r["loss"] for r in rows if "loss" in r])
        acc = {r["step"]: r["test_acc"] for r in rows if "test_acc" in r}
        assert acc and {h["_step"]: h["test_acc"] for h in logged if "test_acc" in h} == pytest.approx(acc)
        runs = wandb_records(files[0], "run")
        assert runs and runs[0].run_group == "k_sweep"
        summary = json.loads((point / "summary.json").read_text())
        final = {item.key: json.loads(item.value_json) for rec in wandb_records(files[0], "summary")
                 for item in rec.update}
        assert final["final_train_loss"] == pytest.approx(summary["final_train_loss"])
        assert final["test_acc"] == pytest.approx(summary["test_acc"])


def test_config_error_in_a_sweep_is_one_line_before_any_point(tmp_path):
    d = tmp_path / "bad"
    proc = launch("-m", "splits=1,2", "algo=fr,nope", *TINY[1:], f"hydra.sweep.dir={d}", timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("[launch] error: ") and "nope" in lines[0], proc.stderr
    assert not d.exists()


# Reruns: a sweep of 2 points (seed=0,1; 8 steps each, checkpoints at steps 6 and 8), run once
# and copied for each test, then run again into the copy.
RERUN = [*TINY, "wandb.mode=disabled", "ckpt_every=2"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished") / "two_seeds"
    proc = launch("-m", "seed=0,1", *RERUN, f"hydra.sweep.dir={d}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return d


def copy_sweep(finished_sweep, tmp_path) -> Path:
    """A copy of the finished sweep under the same name (wandb.group is part of a point's overrides)."""
    d = tmp_path / finished_sweep.name
    shutil.copytree(finished_sweep, d)
    return d


def rows(point: Path) -> list[dict]:
    return [json.loads(line) for line in (point / "metrics.jsonl").read_text().splitlines()]


def loss_steps(point: Path) -> list[int]:
    return [r["step"] for r in rows(point) if "loss" in r]


def assert_results_are_the_summaries(d: Path, seeds: list[str]) -> None:
    results = read_csv(d / "results.csv")
    assert [(r["point"], r["seed"], r["status"]) for r in results] == [(str(i), s, "ok") for i, s in enumerate(seeds)]
    for row in results:
        summary = json.loads((d / row["point"] / "summary.json").read_text())
        assert float(row["test_acc"]) == summary["test_acc"] and float(row["wall_s"]) == summary["wall_s"]
    assert len((d / "results.md").read_text().splitlines()) == 2 + len(seeds)


def test_rerun_skips_the_points_that_finished(finished_sweep, tmp_path):
    d = copy_sweep(finished_sweep, tmp_path)
    before = {p: ((p / "metrics.jsonl").read_bytes(), (p / "metrics.jsonl").stat().st_mtime_ns) for p in (d / "0", d / "1")}
    proc = launch("-m", "seed=0,1", *RERUN, f"hydra.sweep.dir={d}", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for num, seed in enumerate("01"):
        assert f"[launch] point {num} (seed={seed} algo=fr " in proc.stdout and ") finished earlier: skipped" in proc.stdout
    assert "[launch] point 0 in" not in proc.stdout and "[launch] point 1 in" not in proc.stdout
    assert {p: ((p / "metrics.jsonl").read_bytes(), (p / "metrics.jsonl").stat().st_mtime_ns) for p in before} == before
    assert_results_are_the_summaries(d, ["0", "1"])


@pytest.mark.parametrize("interrupted", ["no summary", "status error"])
def test_rerun_continues_an_interrupted_or_failed_point_from_its_checkpoint(finished_sweep, tmp_path, interrupted):
    """Point 1 as if stopped after the checkpoint of step 6: that point alone runs, from step 6."""
    d = copy_sweep(finished_sweep, tmp_path)
    point = d / "1"
    shutil.rmtree(point / "checkpoints" / "step_00000008")
    if interrupted == "no summary":
        (point / "summary.json").unlink()
    else:
        summary = json.loads((point / "summary.json").read_text())
        (point / "summary.json").write_text(json.dumps(dict(summary, status="error: non-finite loss")))
    kept = [r for r in rows(point) if r["step"] <= 6]
    untouched = (d / "0" / "metrics.jsonl").stat().st_mtime_ns
    proc = launch("-m", "seed=0,1", *RERUN, f"hydra.sweep.dir={d}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[launch] point 0 (seed=0 " in proc.stdout and "[launch] point 1 (" not in proc.stdout
    assert "[launch] point 1: ok" in proc.stdout
    assert "[stage 0] resumed from step 6 " in proc.stderr
    assert (d / "0" / "metrics.jsonl").stat().st_mtime_ns == untouched
    assert loss_steps(point) == list(range(1, 9)) and rows(point)[:len(kept)] == kept
    assert json.loads((point / "summary.json").read_text())["status"] == "ok"
    assert_results_are_the_summaries(d, ["0", "1"])


def test_rerun_runs_a_changed_point_afresh(finished_sweep, tmp_path):
    """seed=0,2 into the seed=0,1 sweep: point 1 is another point now; seed=1's checkpoints are not its."""
    d = copy_sweep(finished_sweep, tmp_path)
    proc = launch("-m", "seed=0,2", *RERUN, f"hydra.sweep.dir={d}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[launch] point 0 (seed=0 " in proc.stdout and "[launch] point 1 (" not in proc.stdout
    assert "[launch] point 1: removing the earlier run in " in proc.stdout
    assert "resumed from" not in proc.stderr
    point = d / "1"
    assert "- seed=2\n" in (point / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((point / "summary.json").read_text())["seed"] == 2
    assert loss_steps(point) == list(range(1, 9))  # seed=1's rows are gone, not continued
    assert_results_are_the_summaries(d, ["0", "2"])


def test_rerun_env_runs_finished_points_afresh(finished_sweep, tmp_path):
    """FR_DIST_RERUN=1 with one point of the two: it runs from step 0; the other's row is forgotten."""
    d = copy_sweep(finished_sweep, tmp_path)
    point = d / "0"
    earlier = (point / "metrics.jsonl").stat().st_mtime_ns
    proc = launch("-m", "seed=0", *RERUN, f"hydra.sweep.dir={d}", FR_DIST_RERUN="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished earlier: skipped" not in proc.stdout and "resumed from" not in proc.stderr
    assert (point / "metrics.jsonl").stat().st_mtime_ns != earlier and loss_steps(point) == list(range(1, 9))
    assert_results_are_the_summaries(d, ["0"])


def test_a_point_stopped_by_a_signal_stops_the_sweep(tmp_path, monkeypatch):
    """run_job exits 130 / 143 after SIGINT / SIGTERM; the sweep then stops with the point's row saved (a
    background sweep ignores SIGINT itself, so only the point's exit code tells). Other failures go on."""
    from fr_dist.compose import compose
    from fr_dist.tools import launch as launcher

    cfg = compose(TINY)
    for rc in (130, 143):
        monkeypatch.setattr(launcher, "run_subprocess", lambda cmd, rc=rc: rc)
        with pytest.raises(KeyboardInterrupt):
            launcher.run_point(cfg, TINY, tmp_path / str(rc), tmp_path, rc)
        row = json.loads((tmp_path / launcher.ROWS_DIR / f"{rc}.json").read_text())
        assert row["status"] == f"failed (exit {rc})"
    monkeypatch.setattr(launcher, "run_subprocess", lambda cmd: 1)
    assert launcher.run_point(cfg, TINY, tmp_path / "1", tmp_path, 1)["status"] == "failed (exit 1)"
