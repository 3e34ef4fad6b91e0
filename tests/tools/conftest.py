"""What several tests of tests/tools read, made once for the package: a sweep and a tiny GPT run."""

from __future__ import annotations

import pytest

from tests.support import COMMON, distributed, gpt_overrides, write_corpus
from tests.tools.test_launch import TINY, launch


@pytest.fixture(scope="package")
def sweep(tmp_path_factory):
    """splits=1,2,3 x algo=fr,bp over a model of 2 blocks: splits=3 fails at start-up."""
    d = tmp_path_factory.mktemp("sweeps") / "k_sweep"
    proc = launch("-m", "splits=1,2,3", "algo=fr,bp", *TINY[1:], "wandb.mode=offline", f"hydra.sweep.dir={d}")
    return d, proc


@pytest.fixture(scope="package")
def gpt_run(tmp_path_factory):
    """A tiny GPT trained on one rank, the whole validation set scored (12 windows: batches of 5 pad the last);
    its run directory, overrides and summary."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    overrides = gpt_overrides(corpus) + COMMON + ["algo=fr", "batch_size=5"]
    run_dir = tmp_path_factory.mktemp("gpt_run")
    _, _, summary = distributed(1, overrides, run_dir)
    return run_dir, overrides, summary
