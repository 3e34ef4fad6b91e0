"""Shared test settings: GPUs hidden from every test but the GPU tests, which skip without one.

Multi-rank tests run gloo on the CPU with 2 to 4 ranks. On a machine with GPUs
torch would pick CUDA and NCCL for them, and two ranks cannot share a GPU
under NCCL: so CUDA_VISIBLE_DEVICES is emptied here, before torch is imported
by any test module, for this process and every rank it starts. A test marked
``@pytest.mark.gpu`` sees the original devices (``gpu_env``) and is skipped
cleanly where there is none.
"""

from __future__ import annotations

import os

GPU_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402  (after hiding the GPUs)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; runs with the machine's GPUs visible")


def _machine_env() -> dict:
    """This process's environment with the machine's GPUs visible again."""
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES")
    if GPU_VISIBLE is not None:
        env["CUDA_VISIBLE_DEVICES"] = GPU_VISIBLE
    return env


def _gpu_count() -> int:
    """GPUs on this machine, asked in a subprocess: this process has them hidden."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                         env=_machine_env(), capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip() or 0)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and _gpu_count() == 0:
        skip = pytest.mark.skip(reason="no CUDA device on this machine")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_env() -> dict:
    """The environment for a GPU test's subprocesses: the machine's GPUs visible again (copy it to change it)."""
    return _machine_env()
