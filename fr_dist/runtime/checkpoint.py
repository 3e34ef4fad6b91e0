"""Atomic checkpoints of every stage at a consistent cut, and exact resume.

Layout: ``RUN_DIR/checkpoints/step_00000120/stage{k}.pt`` plus a ``COMPLETE``
marker that rank 0 writes last, after every stage wrote its file. A checkpoint
without the marker is ignored. Files are written to a temporary name, fsynced
and renamed, so a crash never leaves a half-written checkpoint behind.

The cut is taken between iterations, all ranks in lockstep. Then no
activation is in flight (a stage receives the features of batch t in the
iteration they are sent) and exactly one error gradient per link is: the one
sent in the last iteration, received in the next. The sender keeps a copy of
it in its checkpoint and sends it again on resume.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from fr_dist.errors import FRError

MARKER = "COMPLETE"


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_complete(directory: Path, keep: int) -> None:
    """Rank 0, after all stages saved: mark `directory` complete, drop old ones."""
    marker = directory / MARKER
    atomic_save({"complete": True}, marker)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames are durable before older checkpoints go
    finally:
        os.close(fd)
    done = complete(directory.parent.parent)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    done = complete(run_dir)
    return done[-1] if done else None


class Unreadable(FRError):
    """A checkpoint file that is missing, truncated or not a checkpoint."""


def complete(run_dir: Path) -> list[Path]:
    """The complete checkpoint directories of a run, oldest first."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / MARKER).exists())


def candidates(resume: str | None, run_dir: Path) -> list[Path]:
    """Checkpoints to try for `resume`, best first: auto falls back to older ones."""
    if resume in (None, "", "null"):
        return []
    if resume == "auto":
        return complete(run_dir)[::-1]
    path = Path(resume)
    if path.is_dir() and path.name == "checkpoints":
        path = latest(path.parent)
        if path is None:
            raise FRError(f"resume={resume}: no complete checkpoint in it; use resume=auto or another path")
    if path is None or not (path / MARKER).exists():
        raise FRError(
            f"resume={resume} is not a complete checkpoint (a step_N directory with a {MARKER} marker); "
            f"use resume=auto or a path like RUN_DIR/checkpoints/step_00000100"
        )
    return [path]


def stage_file(stage: int, replica: int = 0) -> str:
    """A stage's file: replica 0's holds the state every replica shares (weights, optimizer) with its own."""
    return f"stage{stage}.pt" if replica == 0 else f"stage{stage}-replica{replica}.pt"


def load_stage(directory: Path, stage: int, expect: dict, replica: int = 0) -> dict:
    """Stage k's checkpoint (of `replica`), refused unless it was made by the same kind of run."""
    path = directory / stage_file(stage, replica)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        meta = state["meta"]
    except FileNotFoundError:
        raise Unreadable(f"checkpoint {path} is missing: resume from another checkpoint") from None
    except Exception as e:  # a truncated or foreign file
        raise Unreadable(f"checkpoint {path} is corrupt ({type(e).__name__}): delete it or resume from another") from None
    for key, value in expect.items():
        if meta.get(key) != value:
            raise FRError(
                f"checkpoint {directory} was made with {key}={meta.get(key)!r}, this run has {key}={value!r}: "
                f"resume with the same {key}, or start a new run (resume=null, another hydra.run.dir)"
            )
    return state
