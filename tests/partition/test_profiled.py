"""partition=profiled: rank 0 measures, every rank uses its cuts."""


from __future__ import annotations

import json

from tests.ranks import run_ranks


def test_profiled_partition_is_chosen_once_and_used_by_every_rank(tmp_path):
    ranks = run_ranks(2, ["model=resnet8", "model.width=4", "data.shape=[3,8,8]", "data.train_size=64",
                          "batch_size=16", "partition=profiled", f"hydra.run.dir={tmp_path}"])
    assert all(r.returncode == 0 for r in ranks), ranks[0].err[-2000:]
    announced = [line for r in ranks for line in r.err.splitlines() if "partition=profiled: cuts" in line]
    assert len(announced) == 1 and announced[0].startswith("[stage 0]")
    summary = json.loads((tmp_path / "summary.json").read_text())
    (cut,) = summary["partition"]
    assert f"cuts [{cut}]" in announced[0] and 1 <= cut <= 4  # resnet8: 5 blocks
    assert [s["blocks"] for s in summary["stages"]] == [list(range(cut)), list(range(cut, 5))]
