"""The sweep that tests/tools/test_launch.py and test_plot.py read: run once for the package."""

from __future__ import annotations

import pytest

from tests.tools.test_launch import TINY, launch


@pytest.fixture(scope="package")
def sweep(tmp_path_factory):
    """splits=1,2,3 x algo=fr,bp over a model of 2 blocks: splits=3 fails at start-up."""
    d = tmp_path_factory.mktemp("sweeps") / "k_sweep"
    proc = launch("-m", "splits=1,2,3", "algo=fr,bp", *TINY[1:], "wandb.mode=offline", f"hydra.sweep.dir={d}")
    return d, proc
