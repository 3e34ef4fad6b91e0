"""The frontier benchmark: its points, the frontier by hand, its table, and one small real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fr_dist.errors import FRError
from fr_dist.tools.bench import frontier
from fr_dist.tools.bench.frontier import Point


def test_points_cover_every_algorithm_and_recompute_only_where_allowed():
    ps = frontier.points([1, 2, 4, 8, 16])
    assert len(ps) == 5 * (1 + 2 + 2 + 2 + 1 + 1 + 1)
    assert {p.algo for p in ps if p.recompute} == {"gpipe", "1f1b", "interleaved1f1b"}
    assert Point("fr", 4).overrides(5, 6) == ["algo=fr", "splits=2", "threads_per_rank=1", "algo.replay_chunks=4",
                                              "partition=[5]"]
    assert "partition=[6]" in Point("1f1b", 8, True).overrides(5, 6)
    assert "algo.checkpoint=true" in Point("1f1b", 8, True).overrides(5, 6)
    zbv = Point("zbv", 4).overrides(5, 6)
    assert "algo.virtual=2" in zbv and not any(o.startswith("partition") for o in zbv)  # uniform: the only one
    with pytest.raises(FRError, match="not ddg"):
        frontier.points([1], ["fr", "ddg"])


def _row(label, sps, mem_mib):
    return {"label": label, "samples_per_s": sps, "peak_mem_bytes": [m * 2**20 for m in mem_mib]}


def test_frontier_by_hand():
    rows = [_row("a", 100, [50, 10]),   # fastest: on it
            _row("b", 90, [20, 30]),    # less memory than a (30 < 50): on it
            _row("c", 80, [40, 40]),    # slower than b and more memory: off
            _row("d", 60, [5, 5]),      # the smallest: on it
            _row("e", 90, [30, 30]),    # as fast as b with as much memory: off (b is better in memory... equal)
            {"label": "f", "refused": "no"}]
    # e: b has 90 samples/s and max 30 MiB, as e has: neither beats the other
    assert frontier.on_frontier(rows) == [True, True, False, True, True, False]
    rows[4] = _row("e", 90, [31, 30])  # now b beats it
    assert frontier.on_frontier(rows) == [True, True, False, True, False, False]


def test_refusal_and_table():
    row = {"error": "[2026] HYDRA stuff | [launch] error: 1f1b needs microbatches >= splits: set microbatches=2"}
    assert frontier.refusal(row) == "1f1b needs microbatches >= splits: set microbatches=2"
    rows = [dict(_row("fr replay_chunks=1", 120.0, [100, 50]), frontier=True, predicted_samples_per_s=150.0),
            {"label": "1f1b M=1", "refused": "1f1b needs microbatches >= splits"}]
    text = frontier.format_frontier(rows)
    assert "| fr replay_chunks=1 | 120.0 | 100/50 | 100 | **yes** | 150.0 | 80% |" in text
    assert "| 1f1b M=1 | did not run: 1f1b needs microbatches >= splits |" in text
    table = frontier.format_predictions({4: {"fr replay_chunks=1": 3.0, "zbv M=1": None},
                                         8: {"fr replay_chunks=1": 5.5, "zbv M=1": 4.25}})
    assert "| zbv M=1 |  | 4.25x |" in table and "| fr replay_chunks=1 | 3.00x | 5.50x |" in table


def test_prediction_of_a_point_follows_the_simulator():
    from fr_dist.tools.simulate import predict

    costs, mb = [(1.0, 2.0)] * 8, {1: [(1.0, 2.0)] * 8, 4: [(0.3, 0.6)] * 8}
    assert frontier.predict_point(Point("zbv", 4), 2, 128, costs, mb.get, 0.0) == pytest.approx(
        predict(costs, 2, 0.0, "zbv", M=4, V=2, mb_costs=mb[4]))
    assert frontier.predict_point(Point("dualpipev", 1), 2, 128, costs, mb.get, 0.0) is None  # M < 2K
    assert frontier.predict_point(Point("1f1b", 1), 2, 128, costs, mb.get, 0.0) is None  # M < K: refused
    assert frontier.predict_point(Point("fr", 4), 2, 128, costs, mb.get, 0.0, [0, 3, 8]) == pytest.approx(
        predict(costs, 2, 0.0, "fr", cuts=[0, 3, 8], replay_chunks=4, mb_costs=mb[4]))


def test_a_small_frontier_end_to_end(tmp_path):
    """FR with 1 and 4 replay chunks and DualPipeV (M = 1 refused, M = 4 run) on ResNet-8 at batch 16:
    the chunked replay's smaller stage-0 peak comes through the trainer into the table and the plot."""
    out = tmp_path / "frontier.json"
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "fr_dist.bench", "--frontier", "--quick", "--model", "resnet8",
                           "--shape", "3", "16", "16", "--batch-size", "16", "--steps", "3", "--frontier-m", "1,4",
                           "--frontier-algos", "fr,dualpipev", "--workdir", str(tmp_path / "runs"),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"fr replay_chunks=1", "fr replay_chunks=4", "dualpipev M=1", "dualpipev M=4"}
    assert "dualpipev needs microbatches >= its 4 pipeline stages" in rows["dualpipev M=1"]["refused"]
    one, four = rows["fr replay_chunks=1"], rows["fr replay_chunks=4"]
    assert four["peak_mem_bytes"][0] < one["peak_mem_bytes"][0]
    assert rows["dualpipev M=4"]["samples_per_s"] > 0 and len(rows["dualpipev M=4"]["peak_mem_bytes"]) == 2
    assert any(r.get("frontier") for r in rows.values())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "| dualpipev M=1 | did not run:" in proc.stdout
