"""Plots and tables of finished runs (`python -m fr_dist.plot`): a real sweep's PNG files, then fake runs by hand."""

from __future__ import annotations

import json
import math
import statistics
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


def fake_lm_run(d: Path, algo: str, seed: int, val_loss: float, tokens_per_s: float) -> None:
    """A language model's files: training rows with tokens_per_s, evaluation rows of val_loss and val_ppl every
    5 steps, and a diagnostic row at an evaluation's step."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text("batch_size: 4\n")
    (d / ".hydra" / "overrides.yaml").write_text(f"- algo={algo}\n- seed={seed}\n")
    rows = []
    for s in range(1, 21):
        loss = 5.5 * math.exp(-s / 20) + seed
        rows.append({"step": s, "epoch": s / 10, "loss": loss, "samples_per_s": 10.0, "tokens_per_s": 80.0,
                     "time_s": 0.1 * s})
        if s % 5 == 0:
            rows.append({"step": s, "epoch": s / 10, "val_loss": loss + 0.1, "val_ppl": math.exp(loss + 0.1),
                         "time_s": 0.1 * s})
            rows.append({"step": s, "epoch": s / 10, "sigma": 0.5})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({
        "algo": algo, "splits": 2, "seed": seed, "status": "ok", "val_loss": val_loss, "best_val_loss": val_loss - 0.1,
        "val_ppl": math.exp(val_loss), "final_train_loss": val_loss - 0.2, "samples_per_s": tokens_per_s / 8,
        "tokens_per_s": tokens_per_s, "stages": [{"peak_mem_bytes": 2**20}] * 2}))


def test_language_model_runs_get_validation_loss_figures(tmp_path, monkeypatch):
    for i, seed in enumerate([0, 1]):
        fake_lm_run(tmp_path / str(i), "fr", seed, val_loss=2.0, tokens_per_s=80.0)
    runs = plot.find_runs(tmp_path)
    assert all(r.language_model for r in runs)
    evaluations = [r for r in runs[0].rows if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [5, 10, 15, 20]  # beside the diagnostic rows of the same steps
    saved = {}
    original = plot._save

    def keep_axes(fig, path):  # after drawing: the secondary axis sets its limits then
        written = original(fig, path)
        saved[path.name] = [(ax.get_ylabel(), ax.get_ylim()) for ax in (fig.axes[0], *fig.axes[0].child_axes)]
        return written

    monkeypatch.setattr(plot, "_save", keep_axes)
    written = {p.name for p in plot.plot(runs, tmp_path)}
    assert written == {"loss_vs_step.png", "loss_vs_time.png", "val_loss_vs_step.png", "val_loss_vs_time.png",
                       "sigma_vs_step.png"}
    for name in ("val_loss_vs_step.png", "val_loss_vs_time.png"):
        (loss_label, loss_limits), (ppl_label, ppl_limits) = saved[name]
        assert loss_label == "validation loss per token" and ppl_label == "perplexity"
        assert ppl_limits == pytest.approx(tuple(math.exp(y) for y in loss_limits))  # the right axis is exp(left)
    assert not (tmp_path / "test_acc_vs_epoch.png").exists()


def test_line_table_of_language_models_by_hand(tmp_path):
    runs = [("fr", 0, 2.0, 100.0), ("fr", 1, 2.5, 200.0), ("bp", 0, 3.0, 50.0)]
    for i, (algo, seed, val_loss, speed) in enumerate(runs):
        fake_lm_run(tmp_path / str(i), algo, seed, val_loss, speed)
    rows = plot.line_table(plot.find_runs(tmp_path)).splitlines()
    assert rows[0] == ("| line | runs | val_loss | best_val_loss | final_train_loss | tokens/s "
                       "| peak activations MiB per stage | sigma mean (min) |")

    def mean_std(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    fr = [v for a, _, v, _ in runs if a == "fr"]
    assert rows[2] == (f"| fr K=2 (2 seeds) | 2 | {mean_std(fr)} | {mean_std([v - 0.1 for v in fr])} "
                       f"| {mean_std([v - 0.2 for v in fr])} | 150 | 1.0/1.0 | 0.50 (0.50) |")
    _, _, bp_loss, bp_speed = runs[2]  # one run: no std
    bp_cells = [f"{bp_loss:.4f}", f"{bp_loss - 0.1:.4f}", f"{bp_loss - 0.2:.4f}"]
    assert rows[3] == f"| bp K=2 | 1 | {' | '.join(bp_cells)} | {bp_speed:.0f} | 1.0/1.0 | 0.50 (0.50) |"
    # with a classifier among them: both kinds of columns, each line's own filled
    fake_run(tmp_path / "3", "ddg", 2, 0, diag=False)
    summary = json.loads((tmp_path / "3" / "summary.json").read_text())
    (tmp_path / "3" / "summary.json").write_text(json.dumps(dict(summary, test_acc=0.5, samples_per_s=30.0)))
    mixed = [[cell.strip() for cell in row.strip("|").split("|")]
             for row in plot.line_table(plot.find_runs(tmp_path)).splitlines()]
    assert mixed[0][2:8] == ["test_acc", "val_loss", "best_val_loss", "final_train_loss", "samples/s", "tokens/s"]
    bp, ddg = mixed[3][2:8], mixed[4][2:8]
    assert bp == ["", *bp_cells, f"{bp_speed / 8:.0f}", f"{bp_speed:.0f}"]  # a language model has samples/s too
    assert ddg == ["0.5000", "", "", "", "30", ""]


def test_labels_leave_out_a_setting_left_unset_or_off(tmp_path):
    settings = [("fr", 2, "null", "false"), ("bp", 1, "2", "false"), ("fr", 2, "null", "true")]
    for i, (algo, K, threads, wp) in enumerate(settings):
        fake_run(tmp_path / str(i), algo, K, 0, diag=False)
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text(
            f"batch_size: 8\nthreads_per_rank: {threads}\nalgo:\n  weight_prediction: {wp}\n")
    assert plot.labels(plot.find_runs(tmp_path)) == ["fr K=2", "bp K=1 threads_per_rank=2",
                                                     "fr K=2 algo.weight_prediction=True"]
