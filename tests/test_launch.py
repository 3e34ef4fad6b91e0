"""Sweeps (`python -m fr_dist.launch -m ...`), their results tables, plots, W&B offline logs.

One small sweep runs once for the module (splits=1,2,3 x algo=fr,bp: 4 torchrun jobs that
train and 2 points that fail at start-up) and most tests read what it left.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wandb_reader import history, records

ROOT = Path(__file__).resolve().parent.parent
TINY = ["algo=fr", "model=mlp", "model.hidden=[8]", "data=synthetic", "data.shape=[1,4,4]", "data.train_size=32",
        "data.test_size=8", "batch_size=8", "epochs=2", "log_every=1", "progress=false"]
SUMMARY_KEYS = ("algo", "splits", "seed", "status", "test_acc", "final_train_loss", "samples_per_s", "wall_s")


def launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fr_dist.launch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """splits=1,2,3 x algo=fr,bp over a model of 2 blocks: splits=3 fails at start-up."""
    d = tmp_path_factory.mktemp("sweeps") / "k_sweep"
    proc = launch("-m", "splits=1,2,3", "algo=fr,bp", *TINY[1:], "wandb.mode=offline", f"hydra.sweep.dir={d}")
    return d, proc


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_one_row_per_point_equal_to_its_summary(sweep):
    d, proc = sweep
    assert proc.returncode == 1, proc.stdout + proc.stderr  # two points failed: the sweep says so
    rows = read_csv(d / "results.csv")
    assert [r["point"] for r in rows] == [str(i) for i in range(6)]
    assert list(rows[0])[:10] == ["point", *SUMMARY_KEYS[:4], "test_acc", "final_train_loss", "samples_per_s",
                                  "wall_s", "peak_mem_bytes"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted((r["splits"], r["algo"]) for r in ok) == [("1", "bp"), ("1", "fr"), ("2", "bp"), ("2", "fr")]
    for row in ok:
        summary = json.loads((d / row["point"] / "summary.json").read_text())
        for key in SUMMARY_KEYS:
            expected = summary[key]
            assert (float(row[key]) == expected) if isinstance(expected, float) else (row[key] == str(expected)), key
        assert row["peak_mem_bytes"] == ";".join(str(s["peak_mem_bytes"]) for s in summary["stages"])
        assert len(row["peak_mem_bytes"].split(";")) == int(row["splits"])
    md = (d / "results.md").read_text().splitlines()
    assert md[0].startswith("| point | algo | splits | seed | status |") and len(md) == 2 + 6


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


def test_plot_writes_the_sweeps_pngs(sweep):
    from fr_dist.tools import plot

    d, _ = sweep
    assert plot.main([str(d)]) == 0
    for name in ("loss_vs_step", "loss_vs_time", "test_acc_vs_epoch", "test_acc_vs_time"):
        png = d / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG", name
    assert not (d / "sigma_vs_step.png").exists()  # no diagnostic rows in these runs


def test_config_error_in_a_sweep_is_one_line_before_any_point(tmp_path):
    d = tmp_path / "bad"
    proc = launch("-m", "splits=1,2", "algo=fr,nope", *TINY[1:], f"hydra.sweep.dir={d}", timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("[launch] error: ") and "nope" in lines[0], proc.stderr
    assert not d.exists()


def fake_run(d: Path, algo: str, K: int, seed: int, diag: bool) -> None:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text("batch_size: 8\n")
    (d / ".hydra" / "overrides.yaml").write_text(f"- algo={algo}\n- splits={K}\n- seed={seed}\n- optim.lr=0.1\n")
    rows = []
    for s in range(1, 21):
        rows.append({"step": s, "epoch": s / 10, "loss": 2.3 * math.exp(-s / 10) + seed, "samples_per_s": 80.0})
        if diag and s % 5 == 0:
            rows[-1].update({f"sigma_stage{k}": 0.5 + k for k in range(K)} | {"cos_stage0": 0.9, "sigma": 0.4})
        if s % 10 == 0:
            rows.append({"step": s, "epoch": s / 10, "test_acc": 0.1 * s / 10 + seed})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"algo": algo, "splits": K, "seed": seed, "status": "ok",
                                                "stages": [{"peak_mem_bytes": 1}] * K}))


def test_plot_averages_seeds_and_draws_diagnostics(tmp_path):
    from fr_dist.tools import plot

    for i, (algo, K, seed) in enumerate([("fr", 2, 0), ("fr", 2, 1), ("bp", 1, 0)]):
        fake_run(tmp_path / "runs" / str(i), algo, K, seed, diag=algo == "fr")
    runs = plot.find_runs(tmp_path)
    assert [r.path.name for r in runs] == ["0", "1", "2"]
    assert plot.labels(runs) == ["fr K=2", "fr K=2", "bp K=1"]  # seeds differ only: one line
    assert runs[0].times()[10] == pytest.approx(10 * 8 / 80.0)  # from samples_per_s and batch_size
    written = {p.name for p in plot.plot(runs, tmp_path)}
    assert written == {"loss_vs_step.png", "loss_vs_time.png", "test_acc_vs_epoch.png", "test_acc_vs_time.png",
                       "sigma_vs_step.png", "cos_vs_step.png"}
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)
    assert plot.main([str(tmp_path / "nothing")]) == 1
    assert "| fr K=2 (2 seeds) | 2 |" in plot.line_table(runs) and "| 0.40 (0.40) |" in plot.line_table(runs)
    out = tmp_path / "figures"
    assert plot.main([str(tmp_path), "--only", "algo=bp", "--out", str(out)]) == 0
    assert (out / "loss_vs_step.png").is_file() and not (out / "sigma_vs_step.png").exists()  # bp runs only
    assert plot.main([str(tmp_path), "--only", "algo=dni"]) == 1


def test_line_table_mean_and_std_by_hand(tmp_path):
    from fr_dist.tools import plot

    for i, (algo, K, seed, acc, mem) in enumerate([("fr", 2, 0, 0.80, [3, 1]), ("fr", 2, 1, 0.90, [1, 5]),
                                                   ("fr", 2, 2, 0.85, [2, 2]), ("bp", 1, 0, 0.70, [7])]):
        d = tmp_path / str(i)
        fake_run(d, algo, K, seed, diag=False)
        summary = json.loads((d / "summary.json").read_text())
        summary.update(test_acc=acc, final_train_loss=acc / 10, samples_per_s=100.0 * (seed + 1),
                       stages=[{"peak_mem_bytes": m * 2**20} for m in mem])
        (d / "summary.json").write_text(json.dumps(summary))
    fake_run(tmp_path / "4", "fr", 2, 3, diag=False)  # diverged: no test_acc, no loss, no memory
    (tmp_path / "4" / "summary.json").write_text(json.dumps({"algo": "fr", "splits": 2, "seed": 3,
                                                             "status": "error: non-finite training loss"}))
    rows = plot.line_table(plot.find_runs(tmp_path)).splitlines()
    # fr: mean 0.85, sample std sqrt((0.05^2 + 0.05^2) / 2) = 0.05; memory: the largest per stage
    assert rows[2] == "| fr K=2 (4 seeds) | 4, 1 failed | 0.8500 ± 0.0500 | 0.0850 ± 0.0050 | 200 | 3.0/5.0 |  |"
    assert rows[3] == "| bp K=1 | 1 | 0.7000 | 0.0700 | 100 | 7.0 |  |"


def test_labels_ignore_keys_of_other_algorithms(tmp_path):
    from fr_dist.tools import plot

    for i, (algo, extra) in enumerate([("fr", ""), ("dni", "algo:\n  synth: auto\n")]):
        fake_run(tmp_path / str(i), algo, 2, 0, diag=False)
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text(f"batch_size: 8\nepochs: {i + 1}\n{extra}")
    assert plot.labels(plot.find_runs(tmp_path)) == ["fr K=2 epochs=1", "dni K=2 epochs=2"]
