"""The pipelining peers: an adapter over ``torch.distributed.pipelining`` for one rank.

gpipe and 1f1b run one stage per rank; interleaved1f1b, zb (interleaved zero
bubble), zbv and dualpipev run V model chunks ("virtual stages") per rank, placed
by algos/placement.py. Unlike fr, bp, ddg and dni, none of them goes through the
action schedule and the engine: pipelining brings its own schedule and
point-to-point communication, and `PipeRunner.train_step` runs one whole batch
(all its micro-batches, forward and backward) on every rank in lockstep.

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
- `group`: `PipelineStage(group=...)`; the group must have exactly K ranks,
  and rank r of it holds the chunks its placement gives it.
- `Schedule1F1B` and `ScheduleDualPipeV` require M >= the number of pipeline
  stages (K, and K x V); the interleaved ones need M to be a multiple of
  max(1, M // K) (their rounds); all need the batch to split into M equal
  micro-batches (fixed shapes on every link). config.check_microbatches says so.
- Split backward (zb, zbv, dualpipev): the input gradient of a micro-batch runs
  first (`backward_one_chunk(full_backward=False)`), its weight gradient later
  (`backward_weight_one_chunk`); its graph is held until then.
- Evaluation: the multi-chunk schedules evaluate chunk after chunk over
  point-to-point sends (`PipeRunner.evaluate`), since their chunks do not
  follow the engine's links 0 -> 1 -> ... -> K-1.
- precision=bf16: `schedule.step` runs under the run's autocast (the optimizer
  step outside it), and a non-last stage casts its output to the agreed
  boundary dtype, which pipelining checks against the static metadata.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint as _checkpoint

from fr_dist.algos.base import Worker
from fr_dist.algos.placement import chunks_of, owner
from fr_dist.config import check_microbatches
from fr_dist.models.objective import cross_entropy
from fr_dist.optim import apply_gradient
from fr_dist.runtime.actions import Action
from fr_dist.runtime.memory import StashMeter, saved_storages

# torch.distributed.pipelining is imported on first use: it pulls in dynamo and
# DTensor (seconds of start-up) that the other algorithms never need.
# {name: (torch's schedule class, placement of the chunks)}; one chunk per rank for gpipe and 1f1b.
SCHEDULES = {"gpipe": ("ScheduleGPipe", "loop"), "1f1b": ("Schedule1F1B", "loop"),
             "interleaved1f1b": ("ScheduleInterleaved1F1B", "loop"), "zb": ("ScheduleInterleavedZeroBubble", "loop"),
             "zbv": ("ScheduleZBVZeroBubble", "v"), "dualpipev": ("ScheduleDualPipeV", "v")}
SINGLE = ("gpipe", "1f1b")  # a PipelineScheduleSingle: one stage per rank, evaluated through the engine


@dataclass(frozen=True)
class Chunk:
    """One model chunk a rank runs: pipeline stage `index` of them all, its blocks, its boundary specs."""

    index: int
    module: nn.Module
    in_spec: tuple
    out_spec: tuple


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
    import torch.distributed.pipelining as pipelining

    class MeteredStage(pipelining.PipelineStage):
        """A PipelineStage that tells the meter which micro-batch of which chunk runs and when it is released
        (after its full backward, or after its weight gradient when the backward is split)."""

        meter: StashMeter

        def forward_one_chunk(self, fwd_chunk_id, args, kwargs=None, save_forward_output=True):
            self.meter.current = (self.stage_index, fwd_chunk_id)
            try:
                return super().forward_one_chunk(fwd_chunk_id, args, kwargs, save_forward_output)
            finally:
                self.meter.update()  # the loss (last stage) adds to this micro-batch just after

        def backward_one_chunk(self, bwd_chunk_id, loss=None, full_backward=True, last_backward=False):
            self.meter.before_backward()
            super().backward_one_chunk(bwd_chunk_id, loss, full_backward, last_backward)
            if full_backward:
                self.meter.release((self.stage_index, bwd_chunk_id))

        def backward_weight_one_chunk(self, bwd_chunk_id, last_backward=False):
            super().backward_weight_one_chunk(bwd_chunk_id, last_backward)
            self.meter.release((self.stage_index, bwd_chunk_id))

    return MeteredStage, {name: getattr(pipelining, cls) for name, (cls, _) in SCHEDULES.items()}


class PipeRunner:
    """One rank of a pipelining schedule: its chunks (one for gpipe / 1f1b), trained in lockstep."""

    def __init__(self, module: nn.Module, chunks: list[Chunk], rank: int, K: int, device: torch.device, group,
                 schedule: str, microbatches: int, batch_size: int,
                 optimizer: torch.optim.Optimizer | None, lr_of: Callable[[int], float],
                 checkpoint: bool = False, autocast=nullcontext, clip_grad_norm: float | None = None):
        """`module` holds the rank's parameters (all its chunks' blocks: what the optimizer steps and clips)."""
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        M = int(microbatches)
        V = len(chunks)
        check_microbatches(schedule, M, batch_size, K, V)
        size = dist.get_world_size(group)
        if size != K or dist.get_rank(group) != rank:
            raise ValueError(f"the pipeline group must hold the K={K} ranks as 0..K-1 "
                             f"(size {size}, this one is rank {dist.get_rank(group)} of it)")
        n = K * V  # pipeline stages (chunks) in all
        placement = SCHEDULES[schedule][1]
        if [c.index for c in chunks] != chunks_of(rank, K, V, placement):
            raise ValueError(f"rank {rank} must hold the chunks {chunks_of(rank, K, V, placement)} of {schedule}, "
                             f"got {[c.index for c in chunks]}")
        self.module, self.chunks, self.rank, self.K, self.device = module, chunks, rank, K, device
        self.M, self.batch_size = M, batch_size
        self.optimizer, self.lr_of, self.clip_grad_norm = optimizer, lr_of, clip_grad_norm
        self.first = chunks[0].index == 0  # this rank feeds the batch in
        self.holder = functools.partial(owner, K=K, placement=placement)  # the rank of a chunk
        self.loss_rank = self.holder(n - 1)  # the rank of the last chunk computes the loss
        self.group = group
        self.busy_s = 0.0
        self.autocast = autocast  # the schedule's compute runs in it (bf16 runs), the optimizer step outside
        self.own_evaluation = schedule not in SINGLE  # evaluate() here; gpipe / 1f1b through the engine
        self.scores = torch.zeros(3, dtype=torch.float64, device=device)  # as the engine's: correct, loss, targets

        mb = batch_size // M
        for c in chunks:
            if c.in_spec[0][0] != batch_size or c.out_spec[0][0] != batch_size:
                raise ValueError(f"specs must have the batch size {batch_size} first: {c.in_spec}, {c.out_spec}")
        self.in_shape, self.in_dtype = (batch_size, *chunks[0].in_spec[0][1:]), chunks[0].in_spec[1]
        self.meter = StashMeter(module)
        stage_cls, schedules = _pipelining()
        self.wrapped, stages = [], []
        for c in chunks:
            (in_shape, in_dtype), (out_shape, out_dtype) = c.in_spec, c.out_spec
            if checkpoint:  # one graph is recomputed at a time: the largest
                self.meter.transient = max(self.meter.transient,
                                           self._graph_bytes(c.module, (mb, *in_shape[1:]), in_dtype, c.index > 0))
            last = c.index == n - 1
            wrapped = _StageModule(c.module, self.meter, checkpoint, None if last else out_dtype)
            # Static metadata: one micro-batch, on the meta device (no inference forward).
            example_in = torch.empty((mb, *in_shape[1:]), dtype=in_dtype, device="meta").requires_grad_(c.index > 0)
            example_out = torch.empty((mb, *out_shape[1:]), dtype=out_dtype, device="meta").requires_grad_(True)
            stage = stage_cls(wrapped, c.index, n, device, input_args=example_in, output_args=example_out, group=group)
            stage.meter = self.meter
            self.wrapped.append(wrapped)
            stages.append(stage)

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with self.meter.saving():  # the loss graph waits for backward with its micro-batch
                loss = cross_entropy(out, y) / M
            self.meter.update()
            return loss

        cls = schedules[schedule]
        self.schedule = cls(stages[0] if schedule in SINGLE else stages, n_microbatches=M, loss_fn=loss_fn,
                            scale_grads=False)

    def warm_up(self) -> None:
        """Compile what train_step runs (compile=true; gpipe and 1f1b): one micro-batch's forward and backward in
        training mode, on zeros. Changes BatchNorm statistics and draws RNG: the caller puts them back
        (runtime/compiled.py); no gradient is accumulated."""
        x = torch.zeros((self.batch_size // self.M, *self.in_shape[1:]), dtype=self.in_dtype,
                        device=self.device).requires_grad_(self.rank > 0)
        with self.autocast():
            out = self.wrapped[0](x)
            wrt = [p for p in self.module.parameters() if p.requires_grad] + ([x] if self.rank > 0 else [])
            if wrt:
                torch.autograd.grad(out, wrt, torch.zeros_like(out), allow_unused=True)

    def _graph_bytes(self, module: nn.Module, shape, dtype, needs_grad: bool) -> int:
        """Bytes one micro-batch's graph of `module` saves (what a checkpointed backward recomputes).

        Measured once on zeros, leaving RNG and BatchNorm statistics untouched.
        """
        x = torch.zeros(shape, dtype=dtype, device=self.device).requires_grad_(needs_grad)
        skip = self.meter.skip | {x.untyped_storage().data_ptr()}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _frozen_bn_stats(module), saved_storages(skip) as seen, \
                self.autocast():
            out = module(x)
        del out
        return sum(seen.values())

    @property
    def peak_mem_bytes(self) -> int:
        """Peak bytes of activations held: stashed micro-batch graphs, inputs and outputs of all the rank's
        chunks (with checkpoint: inputs and outputs, plus the one graph a backward recomputes)."""
        return self.meter.peak

    def _batch_args(self, x: torch.Tensor | None, y: torch.Tensor | None, losses: list) -> tuple[tuple, dict]:
        """What schedule.step takes on this rank: the whole batch where chunk 0 is, labels where the loss is."""
        args, kwargs = (), {}
        if self.first:
            if x is None or tuple(x.shape) != self.in_shape:
                raise ValueError(f"the rank of chunk 0 needs the whole batch of shape {self.in_shape}, "
                                 f"got {None if x is None else tuple(x.shape)}")
            args = (x,)
        if self.rank == self.loss_rank:
            if y is None or y.shape[0] != self.batch_size:
                raise ValueError(f"the rank of the last chunk needs the labels of the whole batch ({self.batch_size})")
            kwargs = {"target": y, "losses": losses}
        return args, kwargs

    def train_step(self, batch: int, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        """One training batch; every rank calls it in lockstep.

        The rank of chunk 0 passes x (the whole batch), the rank of the last chunk y. Runs the schedule
        over M micro-batches (gradient accumulation of cross_entropy / M), sets lr = lr_of(batch), steps
        and zeroes the gradients. Returns the batch's mean loss (0-dim) on rank K-1 (the reporting one;
        sent there when the last chunk is elsewhere), else None.
        """
        start = time.perf_counter()
        try:
            losses: list[torch.Tensor] = []
            args, kwargs = self._batch_args(x, y, losses)
            with self.autocast():
                self.schedule.step(*args, return_outputs=False, **kwargs)
            self.meter.live.clear()
            self.meter.current = None
            if self.optimizer is not None:  # the accumulated gradient of the M micro-batches, clipped
                apply_gradient(self.optimizer, self.module, self.lr_of(batch), self.clip_grad_norm)
            loss = torch.stack([l.detach() for l in losses]).sum() if losses else None
            if self.loss_rank != self.K - 1:  # a V placement: the loss is on rank 0
                if self.rank == self.loss_rank:
                    dist.send(loss.float().cpu(), group_dst=self.K - 1, group=self.group)
                elif self.rank == self.K - 1:
                    loss = torch.zeros((), dtype=torch.float32)
                    dist.recv(loss, group_src=self.loss_rank, group=self.group)
            return loss if self.rank == self.K - 1 else None
        finally:
            self.busy_s += time.perf_counter() - start

    def _score(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """The engine's scores of one test batch (runtime/engine.py `_score`)."""
        logits = out[: len(y)]  # padding rows are not samples
        self.scores[0] += (logits.argmax(-1) == y).sum()
        self.scores[1] += cross_entropy(logits.float(), y, reduction="sum")
        self.scores[2] += y.numel()

    def evaluate(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        """One test batch forward in eval mode, chunk after chunk in model order, each rank sending its chunk's
        output to the next chunk's rank (x: zero-padded to the batch size, where chunk 0 is; y: the labels of
        its real samples, where the last chunk is); adds to the scores.

        Not `schedule.eval`: with a V placement it runs the schedule's backward hand-over between a rank's
        two chunks, which asserts (torch 2.13: "can't steal_bwd_input if this stage doesn't have backward").
        """
        mine = {c.index: c for c in self.chunks}
        n = self.K * len(self.chunks)
        h = x
        self.module.eval()
        try:
            with torch.no_grad(), self.autocast():
                for i in range(n):
                    if i not in mine:
                        continue
                    c = mine[i]
                    if i > 0 and self.holder(i - 1) != self.rank:
                        h = torch.empty(c.in_spec[0], dtype=c.in_spec[1], device=self.device)
                        dist.recv(h, group_src=self.holder(i - 1), group=self.group)
                    h = c.module(h)
                    if i < n - 1:
                        h = h.to(c.out_spec[1])  # the boundary's dtype (bf16 runs)
                        if self.holder(i + 1) != self.rank:
                            dist.send(h.contiguous(), group_dst=self.holder(i + 1), group=self.group)
                if self.rank == self.loss_rank:
                    self._score(h, y)
        finally:
            self.module.train()

    def take_scores(self) -> torch.Tensor:
        """(correct, loss sum, targets) since the last call, on every rank (summed over the group: only the
        rank of the last chunk scores)."""
        scores = self.scores.clone()
        self.scores.zero_()
        dist.all_reduce(scores, group=self.group)
        return scores.cpu()


class Pipeline:
    """The loop's view of a pipelining rank: one batch per iteration, its data loaded here.

    Training runs through `PipeRunner` instead of the engine; evaluation of gpipe and 1f1b goes
    through the engine like every algorithm's (forward only, over the links), the multi-chunk
    schedules' through `evaluate` (`own_evaluation`).
    """

    def __init__(self, runner: PipeRunner, data, device: torch.device):
        self.runner, self.data, self.device = runner, data, device
        self.first, self.scoring = runner.first, runner.rank == runner.loss_rank
        self.losses: list[torch.Tensor] = []  # of rank K-1, one per batch, until taken

    @property
    def busy_s(self) -> float:
        return self.runner.busy_s

    @property
    def peak_mem_bytes(self) -> int:
        return self.runner.peak_mem_bytes

    @property
    def own_evaluation(self) -> bool:
        return self.runner.own_evaluation

    def take_losses(self) -> list[torch.Tensor]:
        losses, self.losses = self.losses, []
        return losses

    def warm_up(self) -> None:
        self.runner.warm_up()

    def train_step(self, batch: int) -> None:
        x = self.data.inputs(batch).to(self.device, non_blocking=True) if self.first else None
        y = self.data.labels(batch).to(self.device, non_blocking=True) if self.scoring else None
        loss = self.runner.train_step(batch, x, y)
        if loss is not None:
            self.losses.append(loss)

    def evaluate(self, e: int) -> None:
        """Test batch e through the rank's chunks."""
        x = self.data.test_inputs(e).to(self.device) if self.first else None
        y = self.data.test_labels(e).to(self.device) if self.scoring else None
        self.runner.evaluate(x, y)

    def take_scores(self) -> torch.Tensor:
        return self.runner.take_scores()


class EvalWorker(Worker):
    """Evaluation of a pipelining stage (through the engine); nothing is held between iterations."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PipeAlgo:
    """A pipelining schedule as an algorithm of the runner: no engine schedule, a `Pipeline` trains."""

    Worker = EvalWorker

    def __init__(self, name: str):
        self.name = name
        self.placement = SCHEDULES[name][1]
        self.through_engine = name in SINGLE  # evaluated over the engine's links; else by the schedule

    @staticmethod
    def iterations(stage: int, K: int, T: int) -> int:
        return T

    @staticmethod
    def schedule(stage: int, K: int, t: int, T: int) -> list[Action]:
        """Nothing for the engine: pipelining moves the batch (no error gradient crosses iterations)."""
        return []

    def chunks_of(self, rank: int, K: int, V: int) -> list[int]:
        """The model chunks (of K x V) rank `rank` holds."""
        return chunks_of(rank, K, V, self.placement)

    def holder(self, chunk: int, K: int) -> int:
        """The rank that holds `chunk`."""
        return owner(chunk, K, self.placement)

    def pipeline(self, module, chunks: list[Chunk], rank, K, device, optimizer, lr_of, options, microbatches: int,
                 data, autocast=nullcontext, clip_grad_norm: float | None = None) -> Pipeline:
        runner = PipeRunner(module, chunks, rank, K, device, None, self.name, microbatches,
                            chunks[0].in_spec[0][0], optimizer, lr_of, options.checkpoint, autocast, clip_grad_norm)
        return Pipeline(runner, data, device)


PIPELINES = {name: PipeAlgo(name) for name in SCHEDULES}
