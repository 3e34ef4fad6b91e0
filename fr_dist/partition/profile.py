"""Measure what the performance model needs: per-block compute costs and link costs.

Per block k of a model (a list of modules run in order), at the run's batch size
on the run's device, with the current ``torch.get_num_threads()``:

- ``f``: median seconds of the block's forward **without** an autograd graph
  (``torch.no_grad``), as Features Replay's forward runs;
- ``b``: median seconds of a forward **with** a graph plus its backward, minus
  ``f``. So ``f + b`` is exactly the measured cost of FR's replay (and of a BP
  stage's forward + backward), and ``2f + b`` that of a non-last FR stage.
  The backward of block 0 computes no input gradient (stage 0's input does not
  require one); the last block's backward starts from a cross-entropy loss.

Every block's input is the previous block's output, so each block sees the real
shapes. By default (``context="chain"``) every timed iteration runs the whole
model the way a training step does (a no-grad pass, then a pass keeping every
block's graph, then the backward block by block from the loss) and times each
block inside it; ``context="isolated"`` times each block alone, repeatedly on one
input. Medians over ``iters`` iterations after ``warmup`` (plus one untimed pass
of the whole model, so the process's first kernels are not charged to block 0).
On this kind of CPU the sum over blocks comes out 3-4% below a plain PyTorch
training loop timed in the same minute. Profiling leaves the
model as it found it: BatchNorm running statistics (all buffers) and ``.grad`` of
every parameter are restored, the training/eval mode kept, and the global RNG
(CPU and CUDA) untouched (``torch.random.fork_rng``; inputs and upstream
gradients come from a private generator).

Links (``link_seconds``): moving a tensor between ranks costs a copy into the
link's send buffer plus the transport. On CPU the transport is gloo over TCP on
the loopback interface; it is modelled as ``latency + bytes / bandwidth`` with
both measured once per process by sending over a real loopback TCP connection
inside this process (one thread sends, the caller receives) plus one tensor
copy: no second process is needed. On CUDA the model is a device-to-device copy
(a lower bound for NVLink / PCIe). ``link_model()`` returns the fitted numbers.
"""

from __future__ import annotations

import functools
import math
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clocked(fn, device: torch.device):
    """(fn(), its seconds), the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of `fn()` over `iters` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(_clocked(fn, device)[1] for _ in range(iters))


@dataclass
class Profile:
    """Per-block costs and the shapes between blocks."""

    costs: list[tuple[float, float]]  # (f, b) seconds per block
    out_shapes: list[tuple[int, ...]]  # output shape of each block (batch first)
    in_shape: tuple[int, ...]  # input shape of block 0 (batch first)
    dtype: torch.dtype

    def boundary_shapes(self) -> list[tuple[int, ...] | None]:
        """Shape crossing cut c (the input of block c), indexed c = 0..n; None at 0 and n."""
        n = len(self.costs)
        return [None] + [self.out_shapes[c - 1] for c in range(1, n)] + [None]

    def link_costs(self, device: torch.device | str = "cpu") -> list[float]:
        """Seconds to move the features crossing each cut c = 0..n (0.0 at 0 and n): `link_s` for partition.py."""
        return [0.0 if s is None else link_seconds(s, self.dtype, device) for s in self.boundary_shapes()]


def profile_model(blocks: Sequence[nn.Module], in_shape, batch_size: int, device, warmup: int = 2,
                  iters: int = 5, dtype: torch.dtype = torch.float32, seed: int = 0,
                  context: str = "chain", vocab: int | None = None) -> Profile:
    """Costs and shapes of `blocks` (see the module docstring); `in_shape` is one sample's shape.

    `vocab`: the inputs are token ids below it (a language model's), else random features of `dtype`.

    context="chain" (default): each timed iteration runs the whole model as
    training does, block after block (a no-grad forward pass, then a forward pass
    with graphs kept for every block, then the backward pass block by block from
    the loss), timing every block inside it; so each block pays what it pays in a
    real iteration (cold caches, allocations while the other blocks' activations
    are alive). context="isolated": each block is timed alone, repeatedly on the
    same input (hot caches; on a CPU this underestimates a training iteration by
    about 10%).
    """
    if context not in ("chain", "isolated"):
        raise ValueError(f"context must be 'chain' or 'isolated', got {context!r}")
    device = torch.device(device)
    in_shape = tuple(int(s) for s in in_shape)
    gen = torch.Generator(device=device).manual_seed(seed)
    if vocab:
        x = torch.randint(0, vocab, (batch_size, *in_shape), generator=gen, device=device)
    else:
        x = torch.randn((batch_size, *in_shape), generator=gen, device=device, dtype=dtype)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _warm_up(blocks, x)
        if context == "chain":
            costs, shapes = _chain(blocks, x, gen, device, warmup, iters)
        else:
            costs, shapes = _isolated(blocks, x, gen, device, warmup, iters)
    return Profile(costs, shapes, (batch_size, *in_shape), dtype)


def _target_for(out: torch.Tensor, gen, device):
    """(labels, None) for a classifier's logits, else (None, a random upstream gradient)."""
    if out.dim() == 2:
        return torch.randint(0, out.shape[1], (out.shape[0],), generator=gen, device=device), None
    return None, torch.randn(out.shape, generator=gen, device=device, dtype=out.dtype)


def _chain(blocks, x, gen, device, warmup, iters):
    n = len(blocks)
    with _preserved(*blocks):
        for b in blocks:
            b.train()
        f_s: list[list[float]] = [[] for _ in range(n)]
        fb_s: list[list[float]] = [[] for _ in range(n)]
        shapes: list[tuple[int, ...]] = []
        target = grad_last = None

        def backward(i):
            if i == n - 1:
                if target is not None:
                    F.cross_entropy(hs[i], target).backward()
                elif hs[i].requires_grad:
                    hs[i].backward(grad_last)
            elif hs[i].requires_grad and xs[i + 1].grad is not None:
                hs[i].backward(xs[i + 1].grad)

        for it in range(warmup + iters):
            record = it >= warmup
            h = x
            with torch.no_grad():
                for i, b in enumerate(blocks):
                    h, seconds = _clocked(lambda: b(h), device)
                    if record:
                        f_s[i].append(seconds)
            if not shapes:
                h = x
                with torch.no_grad():
                    for b in blocks:
                        h = b(h)
                        shapes.append(tuple(h.shape))
                target, grad_last = _target_for(h, gen, device)
            xs, hs, fg = [], [], []
            h = x
            for i, b in enumerate(blocks):
                xs.append(h.detach().requires_grad_(i > 0))
                h, seconds = _clocked(lambda: b(xs[-1]), device)
                fg.append(seconds)
                hs.append(h)
            for i in range(n - 1, -1, -1):
                seconds = _clocked(lambda: backward(i), device)[1]
                if record:
                    fb_s[i].append(fg[i] + seconds)
            del xs, hs
    costs = []
    for i in range(n):
        f = statistics.median(f_s[i])
        costs.append((f, max(statistics.median(fb_s[i]) - f, 0.0)))
    return costs, shapes


def _isolated(blocks, x, gen, device, warmup, iters):
    costs, shapes = [], []
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        with _preserved(block):
            block.train()
            with torch.no_grad():
                out = block(x)
            target, grad_out = _target_for(out, gen, device) if last else (None, None)
            if grad_out is None and target is None:
                grad_out = torch.randn(out.shape, generator=gen, device=device, dtype=out.dtype)

            def forward():
                with torch.no_grad():
                    block(x)

            def forward_backward():
                xi = x.detach().requires_grad_(i > 0)
                y = block(xi)
                if target is not None:
                    F.cross_entropy(y, target).backward()
                else:
                    y.backward(grad_out)

            f = _timed(forward, device, warmup, iters)
            fb = _timed(forward_backward, device, warmup, iters)
        costs.append((f, max(fb - f, 0.0)))
        shapes.append(tuple(out.shape))
        x = out
    return costs, shapes


def _warm_up(blocks: Sequence[nn.Module], x: torch.Tensor) -> None:
    """One untimed forward + backward of the whole model: the process's first
    kernels (thread pools, primitive caches, first page faults) would otherwise be
    charged to the first block."""
    with _preserved(*blocks):
        h = x
        for b in blocks:
            b.train()
            h = b(h)
        h.float().sum().backward()


class _preserved:
    """Restore the modules' buffers, parameter gradients and training modes on exit."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        ms = self.modules
        self.buffers = [(b, b.detach().clone()) for m in ms for b in m.buffers()]
        self.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for m in ms for p in m.parameters()]
        self.modes = [(mod, mod.training) for m in ms for mod in m.modules()]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for p, g in self.grads:
            p.grad = g
        for mod, mode in self.modes:
            mod.training = mode
        return False


# ---------------------------------------------------------------------------------------
# Links


@dataclass(frozen=True)
class LinkModel:
    latency_s: float
    bytes_per_s: float
    how: str

    def seconds(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


def _tcp_loopback_seconds(nbytes: int, repeats: int = 5) -> float:
    """Median seconds to move `nbytes` one way over a loopback TCP connection (ping-pong / 2 for tiny)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    for s in (client, conn):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = bytearray(nbytes)
    sink = bytearray(nbytes)
    ack = bytearray(1)
    times = []

    def sender(rounds: int):
        for _ in range(rounds):
            client.sendall(payload)
            client.recv_into(ack, 1)  # the receiver has everything

    rounds = repeats + 1
    thread = threading.Thread(target=sender, args=(rounds,), daemon=True)
    thread.start()
    try:
        for _ in range(rounds):
            view, got = memoryview(sink), 0
            start = time.perf_counter()
            while got < nbytes:
                got += conn.recv_into(view[got:], nbytes - got)
            times.append(time.perf_counter() - start)
            conn.sendall(b"k")
        thread.join(5)
    finally:
        for s in (client, conn, server):
            s.close()
    # The receive starts timing when the previous ack left, so a round is one
    # way of the payload plus one way of the ack (~latency); fine for a model.
    return statistics.median(times[1:])


def _copy_seconds(nbytes: int, device: torch.device, repeats: int = 5) -> float:
    src = torch.empty(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return _timed(lambda: dst.copy_(src), device, 2, repeats)


@functools.lru_cache(maxsize=None)
def link_model(device: str = "cpu") -> LinkModel:
    """`latency + bytes / bandwidth`, fitted once per process from two message sizes."""
    dev = torch.device(device)
    small, large = 8, 8 << 20
    if dev.type == "cuda":
        t_small, t_large = _copy_seconds(small, dev), _copy_seconds(large, dev)
        how = "device-to-device copy"
    else:
        t_small = _tcp_loopback_seconds(small) + _copy_seconds(small, dev)
        t_large = _tcp_loopback_seconds(large) + _copy_seconds(large, dev)
        how = "loopback TCP in-process + one tensor copy"
    return fit_link(small, t_small, large, t_large, how)


def fit_link(small: int, t_small: float, large: int, t_large: float, how: str = "") -> LinkModel:
    """The line `latency + bytes / bandwidth` through (small bytes, t_small s) and (large, t_large).

    Noise can make the large message look no slower than the small one: the time
    difference is floored at 1 ns (the bandwidth stays positive, (large - small) / 1e-9),
    and a latency the line puts below 0 is clamped to 0.
    """
    bw = (large - small) / max(t_large - t_small, 1e-9)
    return LinkModel(max(t_small - small / bw, 0.0), bw, how)


def link_seconds(shape, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> float:
    """Estimated seconds to move a tensor of `shape` and `dtype` between two ranks (see `link_model`)."""
    nbytes = math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()
    return link_model(str(torch.device(device).type)).seconds(nbytes)
