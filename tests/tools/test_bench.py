"""The benchmark's table, arguments and report, on fake measurements (the real runs take minutes)."""

from __future__ import annotations

import pytest

from fr_dist.tools.bench import cli, configs, report
from fr_dist.tools.simulate import scaling_table


def test_bench_table_on_fake_measurements():
    def run(name, sps, busy):
        return {"name": name, "samples_per_s": sps, "busy_frac": busy, "peak_mem_bytes": [2**20] * len(busy),
                "partition": [], "steady_samples_per_s": sps}

    rounds = [{"bp1": run("bp1", 100.0, [0.99]), "fr2": run("fr2", 150.0, [0.9, 0.8]),
               "gpipe2": run("gpipe2", 140.0, [0.8, 0.8])},
              {"bp1": run("bp1", 110.0, [0.99]), "fr2": run("fr2", 154.0, [0.92, 0.8]),
               "gpipe2": run("gpipe2", 120.0, [0.8, 0.8])},
              {"bp1": run("bp1", 90.0, [0.99]), "fr2": {"name": "fr2", "rc": 1, "error": "x"},
               "gpipe2": run("gpipe2", 99.0, [0.8, 0.8])}]
    predicted = {"bp1": 1.2, "fr2": 0.8}
    rows = report.summarise(rounds, ["bp1", "fr2", "gpipe2"], 128, predicted)
    fr = rows[1]
    assert fr["runs"] == 2 and fr["samples_per_s"] == pytest.approx(152.0)
    assert fr["vs_bp1"] == pytest.approx((1.5 + 1.4) / 2)  # within-round ratios, median
    assert fr["s_per_iter"] == pytest.approx(128 / 152)
    assert fr["efficiency"] == pytest.approx((0.8 / (128 / 150) + 0.8 / (128 / 154)) / 2)  # per round
    assert fr["predicted_vs_bp1"] == pytest.approx(1.5)
    # one prediction per round (a fresh profile before each)
    per_round = [{"bp1": 1.2, "fr2": 0.8}, {"bp1": 1.1, "fr2": 0.8}, {"bp1": 1.0, "fr2": 0.7}]
    fr = report.summarise(rounds, ["bp1", "fr2"], 128, per_round)[1]
    assert fr["predicted_s_per_iter"] == pytest.approx(0.8)
    assert fr["predicted_vs_bp1"] == pytest.approx(1.0 / 0.7)  # median of 1.5, 1.375, 1.43
    assert fr["busy_frac"] == pytest.approx([0.91, 0.8])
    assert report.pair_ratio(rounds, "fr2", "gpipe2") == pytest.approx((150 / 140 + 154 / 120) / 2)
    text = report.format_table(rows, {"fr2": "FR K=2"})
    assert "| FR K=2 | 2 | 152.0 | 0.842 | 1.45x | 1.50x | 0.800 | 95% | 0.91/0.80 | 1/1 |" in text
    assert text.count("\n") == 5


def test_bench_arguments():
    a = cli.parse(["--quick"])
    assert a.repeats == 1 and a.steps == 8 and a.scaling_models == "" and a.no_contention
    assert not a.profile_every_round
    a = cli.parse([])
    assert a.repeats == 3 and a.steps == 40 and a.model == "resnet20" and a.batch_size == 128
    over = configs.common_overrides(a)
    assert "max_steps=40" in over and "data.shape=[3,32,32]" in over and "ckpt_every=0" in over
    assert cli.main(["--configs", "nope"]) == 1


def test_bench_report_on_fake_profile():
    costs = [(1.0, 2.0)] * 6
    a = cli.parse(["--quick"])
    out = {"date": "2026-11-25T14:00:00+00:00", "machine": "2 cores test",
           "profile": {"fr_cuts": [0, 3, 6], "fr_stage_costs": [12.0, 9.0], "bp1_s": 18.0,
                       "fr2_by_cut": {3: 12.0}, "link_costs": [0.0] * 7, "half_block_fr2_s": 11.0,
                       "half_block_cut": 2.5, "contended_slowdown": 1.2, "contended_fr2_s": 14.4}}
    rows = [{"name": "fr2", "runs": 2, "samples_per_s": 10.0, "s_per_iter": 12.8, "vs_bp1": 1.4,
             "predicted_vs_bp1": 1.5,
             "predicted_s_per_iter": 12.0,
             "efficiency": 0.94, "busy_frac": [0.9, 0.7], "peak_mem_bytes": [2**21, 2**20]}]
    replicas = [{"K": 2, "D": 2, "s_per_global_batch": 0.5, "samples_per_s": 64.0}]
    scaling = {"resnet-fake": {"rows": scaling_table(costs, 0.0, range(1, 4)), "replicas": replicas}}
    text = report.report(out, rows, {"fr2": "FR K=2"}, {"FR K=2 / BP 1 thread": 1.4}, scaling, a)
    assert "| 2 | 2 | 0.500 | 64 |" in text  # the predicted K x D row
    assert "| FR K=2 | 2 | 10.0 | 12.800 | 1.40x | 1.50x | 12.000 | 94% | 0.90/0.70 | 2/1 |" in text
    assert "FR K=2 / BP 1 thread 1.40x" in text and "1.64x BP" in text and "resnet-fake" in text
    assert "| 3 | [2, 4] |" in text
