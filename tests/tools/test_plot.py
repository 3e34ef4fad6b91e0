"""Plots and tables of finished runs (`python -m fr_dist.plot`): a real sweep's PNG files, then fake runs by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fr_dist.tools import plot


def test_plot_writes_the_sweeps_pngs(sweep):
    d, _ = sweep
    assert plot.main([str(d)]) == 0
    for name in ("loss_vs_step", "loss_vs_time", "test_acc_vs_epoch", "test_acc_vs_time"):
        png = d / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG", name
    assert not (d / "sigma_vs_step.png").exists()  # no diagnostic rows in these runs


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
    for i, (algo, extra) in enumerate([("fr", ""), ("dni", "algo:\n  synth: auto\n")]):
        fake_run(tmp_path / str(i), algo, 2, 0, diag=False)
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text(f"batch_size: 8\nepochs: {i + 1}\n{extra}")
    assert plot.labels(plot.find_runs(tmp_path)) == ["fr K=2 epochs=1", "dni K=2 epochs=2"]
