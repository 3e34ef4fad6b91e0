"""The small typed state of one rank: the plan of the run, what the stage computes with, the progress."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from fr_dist.runtime.engine import Engine
from fr_dist.runtime.groups import Runtime


@dataclass(frozen=True)
class Plan:
    """The plan of the run: the same on every rank, fixed at start-up."""

    algo: Any  # the algorithm's schedule: iterations(stage, K, T) and schedule(stage, K, t, T)
    T: int  # training batches
    steps_per_epoch: int
    test_batches: int  # scored per evaluation (eval_batches caps them)
    cuts: list  # block boundaries of every stage: stage k has blocks cuts[k]:cuts[k+1]
    run_dir: Path
    meta: dict  # what a checkpoint says of the run (runtime/resume.py: the keys that must match)
    seq_len: int = 0  # a language model's tokens per sample (its metrics are per token); 0 for a classifier


@dataclass
class Stage:
    """What this rank computes with: its blocks, their optimizer, the engine and, for gpipe / 1f1b,
    the pipelining runner that trains instead of the engine (algos/pipe.py)."""

    rt: Runtime
    module: nn.Module
    optimizer: torch.optim.Optimizer | None
    engine: Engine
    lr_of: Callable[[int], float]
    pipeline: Any = None
    compile_s: float | None = None  # compile=true: seconds of the start-up compile (runtime/compiled.py)
    compile_clock: float = 0.0  # torch.compile's own clock after it: what it counts later was compiled late

    @property
    def last(self) -> bool:
        return self.rt.stage == self.rt.stages - 1

    @property
    def busy_s(self) -> float:
        return self.engine.busy_s + (self.pipeline.busy_s if self.pipeline else 0.0)

    def take_losses(self) -> list[torch.Tensor]:
        return self.engine.take_losses() + (self.pipeline.take_losses() if self.pipeline else [])


@dataclass
class Progress:
    """How far the run is: restored from a checkpoint on resume."""

    t: int = 0  # the iteration this rank is in (batch t enters the pipeline in it)
    train_s: float = 0.0  # training time: start-up, evaluation and the diagnostic left out
    best_test_acc: float = 0.0
    test_acc: float | None = None
    val_loss: float | None = None  # language models: mean loss per validation token
    best_val_loss: float | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=50))  # last losses: final_train_loss

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "best_test_acc": self.best_test_acc, "test_acc": self.test_acc,
                "val_loss": self.val_loss, "best_val_loss": self.best_val_loss, "train_s": self.train_s}

    def load_state_dict(self, state: dict) -> None:
        self.recent.extend(state["recent"])
        self.best_test_acc, self.test_acc, self.train_s = state["best_test_acc"], state["test_acc"], state["train_s"]
        self.val_loss, self.best_val_loss = state["val_loss"], state["best_val_loss"]
