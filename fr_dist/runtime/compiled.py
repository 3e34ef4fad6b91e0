"""compile=true: torch.compile of a stage's module, compiled at start-up so that training time is training.

torch.compile is lazy: a graph is compiled at its first call, and every kind of
call a stage makes is a graph of its own (dynamo guards on grad mode, training
mode, autocast and the input's requires_grad): FR's no-graph forward, its replay,
the evaluation forward, the diagnostic's passes. Compiled during training, they
would count as training time, and a stage that compiles stalls its neighbours,
whose waits no clock could tell from work. So `warm_up` runs the stage's own
program once before the first iteration, on zeros and without a peer (every
link is replaced by a local one: receives give zeros, sends are checked and
dropped), for K batches (the deepest pipeline: every stage replays, then
drains), with the diagnostic's passes if the run has them and one evaluation
batch, and then puts every state back: weights, BatchNorm statistics,
gradients, optimizer and worker state (ring buffer, stored graphs), the RNG
streams and the engine's counters. Its wall time is the stage's `compile_s`;
compiling that still happens later (`late_compile_s`, dynamo's own clock) means
the warm-up missed a kind of call.

The module is compiled in place (its `forward` replaced by the compiled one):
state_dict keys, parameters and the module object stay what they are, so
checkpoints of compiled and eager runs are interchangeable. (`nn.Module.compile()`
is not used: with torch 2.13 it leaves an `nn.Sequential` eager, as dynamo skips
`Module._call_impl` and `Sequential.forward` as torch-internal frames.)
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
from torch.nn.modules.dropout import _DropoutNd

from fr_dist.errors import FRError
from fr_dist.runtime import diagnostic
from fr_dist.runtime.actions import eval_schedule
from fr_dist.runtime.timing import BusyTimer


def compile_module(module: nn.Module) -> None:
    """torch.compile `module` in place: its forward becomes the compiled one."""
    module.forward = torch.compile(module.forward)


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far: graphs, and backward graphs compiled lazily."""
    try:
        from torch._dynamo.utils import calculate_time_spent
    except ImportError:  # not this torch's layout: nothing to tell
        return 0.0
    return calculate_time_spent().get("total_wall_time", 0.0)


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def replayed_dropout(blocks: list[nn.Module], replayed: int) -> str | None:
    """The first nn.Dropout with p > 0 in blocks[:replayed] (the blocks a replay recomputes), described; or None."""
    for i, block in enumerate(blocks[:replayed]):
        for m in block.modules():
            if isinstance(m, _DropoutNd) and m.p > 0:
                return f"block {i} holds {m}"
    return None


class LocalLink:
    """A link's shape and dtype without its peer: receives give zeros, sends are checked and dropped."""

    def __init__(self, link):
        self.name, self.peer, self.shape, self.dtype = link.name, link.peer, link.shape, link.dtype
        self.peer_stage = link.peer_stage
        self.buffer = torch.zeros(link.shape, dtype=link.dtype, device=link.buffer.device)
        self.busy = False

    def send(self, tensor: torch.Tensor, batch: int) -> None:
        if tensor.shape != self.shape or tensor.dtype != self.dtype:
            raise RuntimeError(f"link {self.name}: batch {batch} has shape {tuple(tensor.shape)} {tensor.dtype}, "
                               f"agreed {tuple(self.shape)} {self.dtype}")

    def post(self, batch: int) -> None:
        pass

    def wait(self, batch: int) -> torch.Tensor:
        return self.buffer

    def recv(self, batch: int) -> torch.Tensor:
        return self.buffer

    def close(self) -> None:
        pass


class ZeroData:
    """Batches of zeros with the data's shapes: stage 0's inputs and the last stage's labels."""

    def __init__(self, batch_size: int, in_shape, tokens: bool = False):
        # a language model's: token ids (id 0 exists in every vocabulary) and a target per position
        self.x = torch.zeros((batch_size, *in_shape), dtype=torch.int64 if tokens else torch.float32)
        self.y = torch.zeros((batch_size, *in_shape) if tokens else batch_size, dtype=torch.int64)

    def inputs(self, batch: int, prefetch: bool = True) -> torch.Tensor:
        return self.x

    def labels(self, batch: int) -> torch.Tensor:
        return self.y

    test_inputs, test_labels = inputs, labels


class _Saved:
    """Everything of a stage that running its program changes, to put back afterwards."""

    ENGINE = ("links", "data", "losses", "diag_s", "held", "history", "timed")

    def __init__(self, stage):
        engine, worker = stage.engine, stage.engine.worker
        self.stage = stage
        self.module = {name: v.detach().clone() for name, v in stage.module.state_dict().items()}
        self.grads = [(p, p.grad) for p in stage.module.parameters()]
        self.optimizer = copy.deepcopy(stage.optimizer.state_dict()) if stage.optimizer else None
        self.worker = copy.deepcopy(worker.state_dict())
        self.worker_vars = dict(vars(worker))  # the meters' counters and peaks, the values in flight
        self.meter = dict(vars(worker.graph_bytes))
        self.engine = {name: copy.copy(v) if isinstance(v, (list, dict)) else v
                       for name, v in ((name, getattr(engine, name)) for name in self.ENGINE)}
        self.values = (copy.copy(engine.train), copy.copy(engine.diag))
        self.probe = dict(vars(engine.probe)) if engine.probe is not None else None

    def restore(self) -> None:
        stage = self.stage
        engine, worker = stage.engine, stage.engine.worker
        stage.module.load_state_dict(self.module)
        for p, grad in self.grads:
            p.grad = grad
        if stage.optimizer:
            stage.optimizer.load_state_dict(self.optimizer)
        worker.load_state_dict(self.worker)
        for name in set(vars(worker)) - set(self.worker_vars):  # made by the warm-up's calls
            delattr(worker, name)
        for name, value in self.worker_vars.items():
            if isinstance(value, (int, float, bool, type(None))):
                setattr(worker, name, value)
        vars(worker.graph_bytes).update(self.meter)
        for name, value in self.engine.items():
            setattr(engine, name, value)
        engine.scores.zero_()  # the warm-up's evaluation batch counted nothing real
        engine.timer = BusyTimer(engine.device)  # nor its compute: busy time starts with training
        engine.train, engine.diag = self.values
        if self.probe is not None:
            vars(engine.probe).update(self.probe)


def warm_up(plan, stage, diag: bool) -> float:
    """Compile every graph the stage's training and evaluation call, before the first iteration; the seconds.

    Raises FRError when torch.compile itself fails (no C++ compiler for the CPU
    backend, an unsupported operation), so every rank stops with one message.
    """
    rt, engine = stage.rt, stage.engine
    k, K = rt.stage, rt.stages
    start = time.perf_counter()
    saved = _Saved(stage)
    devices = [rt.device] if rt.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            engine.links = {name: LocalLink(link) for name, link in engine.links.items()}
            engine.data = ZeroData(plan.meta["batch_size"], plan.meta["in_shape"], plan.meta["tokens"])
            if stage.pipeline is not None:
                stage.pipeline.warm_up()
            else:
                T = K  # every stage forwards, replays and drains
                for t in range(plan.algo.iterations(k, K, T)):
                    passes = diag and t == T - 1  # an iteration in which every stage steps
                    engine.run(diagnostic.with_passes(plan.algo, k, K, t, T) if passes
                               else plan.algo.schedule(k, K, t, T))
            engine.run(eval_schedule(k, K, 0))
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
    except Exception as e:
        if type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = (str(e).strip().splitlines() or [""])[0][:300]
            where = " (on the CPU it needs a working C++ compiler: g++, or $CXX)" if rt.device.type == "cpu" else ""
            raise FRError(f"compile=true: torch.compile failed on this stage{where}: {type(e).__name__}: {first}; "
                          f"set compile=false") from None
        raise
    finally:
        saved.restore()
    return time.perf_counter() - start
