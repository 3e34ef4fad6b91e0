"""GPipe and 1F1B: an adapter over ``torch.distributed.pipelining`` for one stage.

Unlike fr, bp, ddg and dni, these two do not go through the action schedule
and the engine: pipelining brings its own schedule and point-to-point
communication, and `PipeRunner.train_step` runs one whole batch (all its
micro-batches, forward and backward) on every rank in lockstep.

What this torch version (2.13) needs, read from its source:
- Shapes: `PipelineStage` is built in *static* mode (input and output given as
  meta tensors of one micro-batch), so pipelining never runs a shape-inference
  forward (which would run in training mode on real data: BatchNorm statistics
  and dropout RNG) and never exchanges metadata objects. `requires_grad` of
  those meta tensors decides which gradients travel: a stage's input requires
  grad except on stage 0, its output always does.
- Loss scaling: the schedule applies `loss_fn` per micro-batch and backprops
  each; with `scale_grads=True` it then divides every `.grad` of the stage by
  M (`perform_reduce_grad`). We use `scale_grads=False` and a loss of
  `cross_entropy(mean) / M` instead: exactly gradient accumulation of
  `F.cross_entropy(...) / M` over the same micro-batches, for any M (dividing
  the sum at the end rounds differently when M is not a power of two).
- The loss comes back through the `losses=` list of `schedule.step` (last
  stage only): one `cross_entropy / M` per micro-batch; their sum is the mean
  over the batch.
- `group`: `PipelineStage(group=...)`; stage k must be rank k of that group,
  and the group must have exactly K ranks (one stage per rank).
- `Schedule1F1B` requires M >= K; both need the batch to split into M equal
  micro-batches (fixed shapes on every link).
- precision=bf16: `schedule.step` runs under the run's autocast (the optimizer
  step outside it), and a non-last stage casts its output to the agreed
  boundary dtype, which pipelining checks against the static metadata.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint as _checkpoint

from fr_dist.algos.base import Worker
from fr_dist.config import check_microbatches
from fr_dist.models.objective import cross_entropy
from fr_dist.optim import apply_gradient
from fr_dist.runtime.actions import Action
from fr_dist.runtime.memory import StashMeter, saved_storages

# torch.distributed.pipelining is imported on first use: it pulls in dynamo and
# DTensor (seconds of start-up) that the other algorithms never need.
SCHEDULES = ("gpipe", "1f1b")


@contextmanager
def _frozen_bn_stats(module: nn.Module):
    """BatchNorm in training mode that leaves its running statistics as they are.

    A recompute must not update them a second time (the forward already did):
    momentum 0 keeps running_mean / running_var bit for bit, and the batch
    counter is restored afterwards (it is not saved for backward).
    """
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(count)


class _StageModule(nn.Module):
    """The stage's module as pipelining runs it: metered, optionally checkpointed."""

    def __init__(self, inner: nn.Module, meter: StashMeter, checkpoint: bool, out_dtype: torch.dtype | None = None):
        super().__init__()
        self.inner = inner
        self.meter = meter
        self.checkpoint = checkpoint
        self.out_dtype = out_dtype  # the boundary's dtype (bf16 runs); None: as computed (the last stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.meter.hold(x)
        with self.meter.saving():
            if self.checkpoint:
                out = _checkpoint(self.inner, x, use_reentrant=False,
                                  context_fn=lambda: (nullcontext(), _frozen_bn_stats(self.inner)))
            else:
                out = self.inner(x)
            if self.out_dtype is not None:
                out = out.to(self.out_dtype)  # a no-op unless autocast left it in another dtype
        self.meter.hold(out, whole_storage=True)
        return out


@functools.cache
def _pipelining():
    """(stage class that reports to a meter, {name: schedule class})."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    class MeteredStage(PipelineStage):
        """A PipelineStage that tells the meter which micro-batch runs and when it is released."""

        meter: StashMeter

        def forward_one_chunk(self, fwd_chunk_id, args, kwargs=None, save_forward_output=True):
            self.meter.current = fwd_chunk_id
            try:
                return super().forward_one_chunk(fwd_chunk_id, args, kwargs, save_forward_output)
            finally:
                self.meter.update()  # the loss (last stage) adds to this micro-batch just after

        def backward_one_chunk(self, bwd_chunk_id, loss=None, full_backward=True, last_backward=False):
            self.meter.before_backward()
            super().backward_one_chunk(bwd_chunk_id, loss, full_backward, last_backward)
            self.meter.release(bwd_chunk_id)

    return MeteredStage, {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class PipeRunner:
    """gpipe / 1f1b over torch.distributed.pipelining for one stage."""

    def __init__(self, module: nn.Module, stage: int, K: int, device: torch.device, group,
                 schedule: str, microbatches: int, batch_size: int, in_spec, out_spec,
                 optimizer: torch.optim.Optimizer | None, lr_of: Callable[[int], float],
                 checkpoint: bool = False, autocast=nullcontext, clip_grad_norm: float | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        M = int(microbatches)
        check_microbatches(schedule, M, batch_size, K)
        size = dist.get_world_size(group)
        if size != K or dist.get_rank(group) != stage:
            raise ValueError(f"the pipeline group must hold the K={K} stages as ranks 0..K-1 "
                             f"(size {size}, this stage is rank {dist.get_rank(group)} of it)")
        self.module, self.stage, self.K, self.device = module, stage, K, device
        self.M, self.batch_size = M, batch_size
        self.optimizer, self.lr_of, self.clip_grad_norm = optimizer, lr_of, clip_grad_norm
        self.last = stage == K - 1
        self.busy_s = 0.0
        self.autocast = autocast  # the schedule's compute runs in it (bf16 runs), the optimizer step outside

        (in_shape, in_dtype), (out_shape, out_dtype) = in_spec, out_spec
        if in_shape[0] != batch_size or out_shape[0] != batch_size:
            raise ValueError(f"specs must have the batch size {batch_size} first: {in_spec}, {out_spec}")
        mb = batch_size // M
        self.in_shape, self.in_dtype = (batch_size, *in_shape[1:]), in_dtype
        self.meter = StashMeter(module)
        if checkpoint:
            self.meter.transient = self._graph_bytes((mb, *in_shape[1:]), in_dtype)
        self.wrapped = _StageModule(module, self.meter, checkpoint, None if self.last else out_dtype)
        # Static metadata: one micro-batch, on the meta device (no inference forward).
        example_in = torch.empty((mb, *in_shape[1:]), dtype=in_dtype, device="meta").requires_grad_(stage > 0)
        example_out = torch.empty((mb, *out_shape[1:]), dtype=out_dtype, device="meta").requires_grad_(True)
        stage_cls, schedules = _pipelining()
        self.pipe_stage = stage_cls(self.wrapped, stage, K, device, input_args=example_in,
                                    output_args=example_out, group=group)
        self.pipe_stage.meter = self.meter

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with self.meter.saving():  # the loss graph waits for backward with its micro-batch
                loss = cross_entropy(out, y) / M
            self.meter.update()
            return loss

        self.schedule = schedules[schedule](self.pipe_stage, n_microbatches=M, loss_fn=loss_fn, scale_grads=False)

    def warm_up(self) -> None:
        """Compile what train_step runs (compile=true): one micro-batch's forward and backward in training
        mode, on zeros. Changes BatchNorm statistics and draws RNG: the caller puts them back
        (runtime/compiled.py); no gradient is accumulated."""
        x = torch.zeros((self.batch_size // self.M, *self.in_shape[1:]), dtype=self.in_dtype,
                        device=self.device).requires_grad_(self.stage > 0)
        with self.autocast():
            out = self.wrapped(x)
            wrt = [p for p in self.module.parameters() if p.requires_grad] + ([x] if self.stage > 0 else [])
            if wrt:
                torch.autograd.grad(out, wrt, torch.zeros_like(out), allow_unused=True)

    def _graph_bytes(self, shape, dtype) -> int:
        """Bytes one micro-batch's graph saves (what a checkpointed backward recomputes).

        Measured once on zeros, leaving RNG and BatchNorm statistics untouched.
        """
        x = torch.zeros(shape, dtype=dtype, device=self.device).requires_grad_(self.stage > 0)
        skip = self.meter.skip | {x.untyped_storage().data_ptr()}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _frozen_bn_stats(self.module), saved_storages(skip) as seen, \
                self.autocast():
            out = self.module(x)
        del out
        return sum(seen.values())

    @property
    def peak_mem_bytes(self) -> int:
        """Peak bytes of activations held: stashed micro-batch graphs, inputs and outputs
        (with checkpoint: inputs and outputs, plus the one graph a backward recomputes)."""
        return self.meter.peak

    def train_step(self, batch: int, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        """One training batch; every stage calls it in lockstep.

        Stage 0 passes x (the whole batch), the last stage y. Runs the schedule
        over M micro-batches (gradient accumulation of cross_entropy / M), sets
        lr = lr_of(batch), steps and zeroes the gradients. Returns the batch's
        mean loss (0-dim) on the last stage, else None.
        """
        start = time.perf_counter()
        try:
            args = ()
            if self.stage == 0:
                if x is None or tuple(x.shape) != self.in_shape:
                    raise ValueError(f"stage 0 needs the whole batch of shape {self.in_shape}, "
                                     f"got {None if x is None else tuple(x.shape)}")
                args = (x,)
            kwargs = {}
            losses: list[torch.Tensor] = []
            if self.last:
                if y is None or y.shape[0] != self.batch_size:
                    raise ValueError(f"the last stage needs the labels of the whole batch ({self.batch_size})")
                kwargs = {"target": y, "losses": losses}
            with self.autocast():
                self.schedule.step(*args, return_outputs=False, **kwargs)
            self.meter.live.clear()
            self.meter.current = None
            if self.optimizer is not None:  # the accumulated gradient of the M micro-batches, clipped
                apply_gradient(self.optimizer, self.module, self.lr_of(batch), self.clip_grad_norm)
            if not self.last:
                return None
            return torch.stack([l.detach() for l in losses]).sum()
        finally:
            self.busy_s += time.perf_counter() - start


class Pipeline:
    """The loop's view of a pipelining stage: one batch per iteration, its data loaded here.

    Training runs through `PipeRunner` instead of the engine; evaluation goes
    through the engine like every algorithm's (forward only, over the links).
    """

    def __init__(self, runner: PipeRunner, data, stage: int, K: int, device: torch.device):
        self.runner, self.data, self.device = runner, data, device
        self.first, self.last = stage == 0, stage == K - 1
        self.losses: list[torch.Tensor] = []  # of the last stage, one per batch, until taken

    @property
    def busy_s(self) -> float:
        return self.runner.busy_s

    @property
    def peak_mem_bytes(self) -> int:
        return self.runner.peak_mem_bytes

    def take_losses(self) -> list[torch.Tensor]:
        losses, self.losses = self.losses, []
        return losses

    def warm_up(self) -> None:
        self.runner.warm_up()

    def train_step(self, batch: int) -> None:
        x = self.data.inputs(batch).to(self.device, non_blocking=True) if self.first else None
        y = self.data.labels(batch).to(self.device, non_blocking=True) if self.last else None
        loss = self.runner.train_step(batch, x, y)
        if loss is not None:
            self.losses.append(loss)


class EvalWorker(Worker):
    """Evaluation of a pipelining stage (through the engine); nothing is held between iterations."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PipeAlgo:
    """gpipe or 1f1b as an algorithm of the runner: no engine schedule, a `Pipeline` trains."""

    Worker = EvalWorker

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def iterations(stage: int, K: int, T: int) -> int:
        return T

    @staticmethod
    def schedule(stage: int, K: int, t: int, T: int) -> list[Action]:
        """Nothing for the engine: pipelining moves the batch (no error gradient crosses iterations)."""
        return []

    def pipeline(self, module, stage, K, device, optimizer, lr_of, in_spec, out_spec, options, microbatches: int,
                 data, autocast=nullcontext, clip_grad_norm: float | None = None) -> Pipeline:
        runner = PipeRunner(module, stage, K, device, None, self.name, microbatches, in_spec[0][0], in_spec,
                            out_spec, optimizer, lr_of, options.checkpoint, autocast, clip_grad_norm)
        return Pipeline(runner, data, stage, K, device)


GPIPE, ONE_F_ONE_B = PipeAlgo("gpipe"), PipeAlgo("1f1b")
