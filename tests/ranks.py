"""Start K ranks of `python -m fr_dist.train` as plain processes (no torchrun).

Without torchrun's agent in between, each rank's own exit code and output are
visible, which is what the failure tests need.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Rank:
    returncode: int
    out: str
    err: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(K: int, overrides: list[str], world: int | None = None,
                env: dict | None = None) -> list[subprocess.Popen]:
    """Start `world` (default K) ranks with `splits=K` and `overrides`, in `env` (default this process's)."""
    world = K if world is None else world
    env = dict(os.environ if env is None else env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world), OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fr_dist.train", f"splits={K}", "progress=false", *overrides]
    return [
        subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for r in range(world)
    ]


def run_ranks(K: int, overrides: list[str], timeout: float = 180, world: int | None = None,
              env: dict | None = None) -> list[Rank]:
    """Run `world` (default K) ranks with `splits=K` and `overrides`; wait for all.

    Raises AssertionError if any rank is still running after `timeout` (a hang).
    The free port is chosen before the ranks bind it, so another process may take
    it in between (a busy machine): then the ranks are started again on a new port.
    """
    for attempt in range(3):
        results = collect(start_ranks(K, overrides, world, env), timeout)
        if not any("MASTER_PORT" in r.err and "is in use" in r.err for r in results):
            break
    return results


def collect(procs: list[subprocess.Popen], timeout: float) -> list[Rank]:
    """Wait for every process; kill them all if any is still running after `timeout` (a hang)."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(Rank(p.returncode, out, err))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"ranks still running after {timeout} s: a hang") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def metrics_rows(run_dir) -> int:
    """Rows the reporting rank has written to metrics.jsonl so far."""
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_during_training(procs: list[subprocess.Popen], run_dir, victim: int, sig=signal.SIGKILL):
    """Send `sig` to rank `victim` once training logs 5 rows; every rank's (out, err) and the seconds until all ended."""
    try:
        wait_for(lambda: metrics_rows(run_dir) >= 5, 120, "training to start")
        procs[victim].send_signal(sig)
        started = time.monotonic()
        results = [p.communicate(timeout=60) for p in procs]
        return results, time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
