"""Single-process simulators of the training algorithms: the ground truth.

Written plainly and independently: nothing here is imported from `algos/`, the
engine or the runtime. Every stage is a module in one process; the loops below
follow DESIGN section 1 literally, so a distributed run can be compared with
them parameter by parameter.

`precision="bf16"` runs every stage's compute (forward, replay, loss and
backward; never an optimizer step) in its own bfloat16 autocast block, and
casts what crosses a stage boundary (features up, error gradients down) to
bfloat16. Stage 0's input stays as given.

`clip_grad_norm` (backprop, gradient_accumulation, features_replay) clips the
norm of each stage's own gradient to it before the stage's step.

Staleness compensation (features_replay and ddg; docs/DESIGN.md): stage k's
delay is tau = K-1-k, and each rule changes only stages with tau > 0.
`spike` steps with w -= lr (m^n v + (1 - m^n) / (1 - m) g), n = tau (+1 with
Nesterov); `warmup_batches` divides the rate of batch b by
tau^(1 - min(b / T_w, 1)); `shrink` multiplies each received error gradient by
beta; features_replay's `prediction` forwards batch t with w - lr(t) tau v and
`replay_chunks` replays a batch in that many slices, one after another from the
forward's RNG state, their gradients summed.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over samples (N, C) or over every token of next-token logits (N, T, V)."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(logits, y)


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _clip(stage: nn.Module, clip_grad_norm: float | None) -> None:
    if clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(stage.parameters(), clip_grad_norm)


def _compute(precision: str):
    """The block one stage's compute runs in: bfloat16 autocast (on the CPU), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _stage_rate(lr_of, tau: int, warmup_batches: float | None):
    """The rate of a stage with delay tau: PipeMare's delay warm-up over `warmup_batches`, or lr_of itself."""
    if warmup_batches is None or tau <= 1:
        return lr_of
    return lambda b: lr_of(b) / tau ** (1 - min(b / warmup_batches, 1))


@torch.no_grad()
def _step(optimizer, tau: int, spike: bool) -> None:
    """The optimizer's step, or with `spike` (and tau > 0) SGD's momentum step with spike compensation,
    written out on the optimizer's momentum buffers."""
    if not spike or tau == 0:
        optimizer.step()
        return
    for group in optimizer.param_groups:
        m = group["momentum"]
        n = tau + 1 if group["nesterov"] else tau
        a, b = m ** n, (1 - m ** n) / (1 - m)
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            if group["weight_decay"] != 0:
                g = g.add(p, alpha=group["weight_decay"])
            state = optimizer.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.clone()
            else:
                state["momentum_buffer"].mul_(m).add_(g)
            direction = g.mul(b).add_(state["momentum_buffer"], alpha=a)
            p.add_(direction, alpha=-group["lr"])


def _predicted(stage: nn.Module, optimizer, lr: float, tau: int) -> nn.Module:
    """A copy of `stage` at w - lr tau v (v: each parameter's momentum buffer, where it has one)."""
    model = copy.deepcopy(stage)
    with torch.no_grad():
        for p, q in zip(stage.parameters(), model.parameters()):
            v = optimizer.state[p].get("momentum_buffer") if p in optimizer.state else None
            if v is not None:
                q.add_(v, alpha=-(lr * tau))
    return model


def _boundary(t: torch.Tensor, precision: str) -> torch.Tensor:
    """A tensor as it crosses a stage boundary: floating tensors become bfloat16 in bf16 runs."""
    if precision == "bf16" and t.is_floating_point():
        return t.to(torch.bfloat16)
    return t


def backprop(model: nn.Module, batches, lr_of, make_optimizer, seed: int, precision: str = "fp32",
             clip_grad_norm: float | None = None) -> list[float]:
    """Plain backpropagation over `batches` [(x, y), ...]; returns the losses.

    `seed` seeds the global RNG (dropout) before the first batch.
    """
    optimizer = make_optimizer(model.parameters())
    torch.manual_seed(seed)
    losses = []
    for b, (x, y) in enumerate(batches):
        with _compute(precision):
            loss = _loss(model(x), y)
            loss.backward()
        _clip(model, clip_grad_norm)
        _set_lr(optimizer, lr_of(b))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def gradient_accumulation(model: nn.Module, batches, lr_of, make_optimizer, M: int,
                          precision: str = "fp32", clip_grad_norm: float | None = None) -> list[float]:
    """GPipe's and 1F1B's arithmetic in one process: per batch, cross_entropy / M backpropagated for each of
    M equal micro-batches, one step with lr(batch). Returns each batch's loss (the sum over its micro-batches).

    `model` is nn.Sequential of the stages: `clip_grad_norm` clips each stage's gradient on its own."""
    optimizer = make_optimizer(model.parameters())
    out = []
    for b, (x, y) in enumerate(batches):
        losses = []
        for xm, ym in zip(x.chunk(M), y.chunk(M)):
            with _compute(precision):
                loss = _loss(model(xm), ym) / M
                loss.backward()
            losses.append(loss.detach())
        for stage in model:
            _clip(stage, clip_grad_norm)
        _set_lr(optimizer, lr_of(b))
        optimizer.step()
        optimizer.zero_grad()
        out.append(torch.stack(losses).sum().item())
    return out


def features_replay(stages: list[nn.Module], batches, lr_of, make_optimizer, seeds: list[int],
                    before_steps=None, precision: str = "fp32", clip_grad_norm: float | None = None,
                    spike: bool = False, prediction: bool = False, warmup_batches: float | None = None,
                    shrink: float | None = None, replay_chunks: int = 1) -> list[float]:
    """Features Replay with K = len(stages) stages, simulated; returns the losses.

    Iteration t: every stage k < K-1 forwards batch t without a graph and stores
    its input, then replays batch t-(K-1-k) with its current weights and the
    error gradient stage k+1 produced for that batch in iteration t-1; the last
    stage does forward and backward of batch t. After the last batch the
    stages keep replaying until every stored batch is applied. `seeds[k]` seeds
    stage k's RNG stream, which a replay restores to the forward's state.

    The updates of an iteration are applied at its end (nothing in the
    iteration reads them); `before_steps(t, {stage: batch})`, if given, is
    called then, with every stage's raw gradient in its .grad.
    """
    K, T = len(stages), len(batches)
    optimizers = [make_optimizer(s.parameters()) for s in stages]
    rates = [_stage_rate(lr_of, K - 1 - k, warmup_batches) for k in range(K)]
    rng = []
    for seed in seeds:
        torch.manual_seed(seed)
        rng.append(torch.get_rng_state())
    stored = [[] for _ in range(K)]  # stage k: [(batch, input, rng state)] oldest first
    grads = {}  # (stage, batch) -> gradient of that stage's output
    losses = []
    for t in range(T + K - 1):
        new_grads, updates = {}, {}
        x = batches[t][0] if t < T else None
        for k, stage in enumerate(stages):
            torch.set_rng_state(rng[k])
            if t < T and k < K - 1:
                stored[k].append((t, x.clone(), torch.get_rng_state()))
                forward = _predicted(stage, optimizers[k], rates[k](t), K - 1 - k) if prediction else stage
                with torch.no_grad(), _compute(precision):
                    x = _boundary(forward(x), precision)
                if forward is not stage:  # the statistics the forward produced
                    for name, value in forward.named_buffers():
                        stage.get_buffer(name).copy_(value)
            elif t < T:
                x_in = x.detach().requires_grad_(k > 0)
                with _compute(precision):
                    loss = _loss(stage(x_in), batches[t][1])
                    loss.backward()
                losses.append(loss.item())
                if k > 0:
                    new_grads[(k - 1, t)] = _boundary(x_in.grad, precision)
                updates[k] = t
            rng[k] = torch.get_rng_state()
            old = t - (K - 1 - k)
            if k < K - 1 and 0 <= old < T:
                b, x_old, state = stored[k].pop(0)
                assert b == old
                buffers = copy.deepcopy(dict(stage.named_buffers()))
                torch.set_rng_state(state)
                g = grads.pop((k, b))
                if shrink is not None:
                    g = g * shrink
                input_grads = []
                for x_part, g_part in zip(x_old.chunk(replay_chunks), g.chunk(replay_chunks)):
                    x_in = x_part.detach().requires_grad_(k > 0)
                    with _compute(precision):
                        stage(x_in).backward(g_part)
                    input_grads.append(x_in.grad)
                for name, value in buffers.items():  # the replay does not count as statistics
                    stage.get_buffer(name).copy_(value)
                if k > 0:
                    new_grads[(k - 1, b)] = _boundary(torch.cat(input_grads), precision)
                updates[k] = b
        if before_steps is not None:
            before_steps(t, updates)
        for k, b in updates.items():
            _clip(stages[k], clip_grad_norm)
            _set_lr(optimizers[k], rates[k](b))
            _step(optimizers[k], K - 1 - k, spike)
            optimizers[k].zero_grad()
        grads.update(new_grads)
    assert not grads and not any(stored), "every batch is applied exactly once"
    return losses


def ddg(stages: list[nn.Module], batches, lr_of, make_optimizer, seeds: list[int],
        precision: str = "fp32", spike: bool = False, warmup_batches: float | None = None,
        shrink: float | None = None) -> list[float]:
    """Decoupled parallel backprop with delayed gradients (Huo et al. 2018), simulated.

    The schedule of `features_replay`, but stage k < K-1 forwards batch t with
    an autograd graph, on a copy of itself as it is at that moment, and keeps
    that graph; in iteration t it backpropagates the error gradient of batch
    t-(K-1-k) through the graph of that batch (old weights, old activations)
    and applies the result to its current weights. The forward updates the
    BatchNorm statistics once; the delayed backward does not touch them.
    Returns the losses.
    """
    K, T = len(stages), len(batches)
    optimizers = [make_optimizer(s.parameters()) for s in stages]
    rates = [_stage_rate(lr_of, K - 1 - k, warmup_batches) for k in range(K)]
    rng = []
    for seed in seeds:
        torch.manual_seed(seed)
        rng.append(torch.get_rng_state())
    stored = [[] for _ in range(K)]  # stage k: [(batch, copy of the stage, input, output)] oldest first
    grads = {}  # (stage, batch) -> gradient of that stage's output
    losses = []
    for t in range(T + K - 1):
        new_grads = {}
        x = batches[t][0] if t < T else None
        for k, stage in enumerate(stages):
            torch.set_rng_state(rng[k])
            if t < T and k < K - 1:
                old_stage = copy.deepcopy(stage)
                for p in old_stage.parameters():
                    p.grad = None
                x_in = x.detach().requires_grad_(k > 0)
                with _compute(precision):
                    h = old_stage(x_in)
                for name, value in old_stage.named_buffers():  # the statistics the forward produced
                    stage.get_buffer(name).copy_(value)
                stored[k].append((t, old_stage, x_in, h))
                x = _boundary(h.detach(), precision)
            elif t < T:
                x_in = x.detach().requires_grad_(k > 0)
                with _compute(precision):
                    loss = _loss(stage(x_in), batches[t][1])
                    loss.backward()
                losses.append(loss.item())
                if k > 0:
                    new_grads[(k - 1, t)] = _boundary(x_in.grad, precision)
                _set_lr(optimizers[k], lr_of(t))
                optimizers[k].step()
                optimizers[k].zero_grad()
            rng[k] = torch.get_rng_state()
            old = t - (K - 1 - k)
            if k < K - 1 and 0 <= old < T:
                b, old_stage, x_in, h = stored[k].pop(0)
                assert b == old
                g = grads.pop((k, b))
                if shrink is not None:
                    g = g * shrink
                with _compute(precision):
                    h.backward(g)
                for p, p_old in zip(stage.parameters(), old_stage.parameters()):
                    p.grad = p_old.grad  # the old forward's gradient, applied to the current weights
                if k > 0:
                    new_grads[(k - 1, b)] = _boundary(x_in.grad, precision)
                _set_lr(optimizers[k], rates[k](b))
                _step(optimizers[k], K - 1 - k, spike)
                optimizers[k].zero_grad()
        grads.update(new_grads)
    assert not grads and not any(stored), "every batch is applied exactly once"
    return losses


def dni(stages: list[nn.Module], synth_models: list[nn.Module], batches, lr_of, make_optimizer,
        make_synth_optimizer, seeds: list[int], precision: str = "fp32") -> list[float]:
    """Decoupled neural interfaces with synthetic gradients (Jaderberg et al. 2017), simulated.

    `synth_models[k]` (k < K-1) predicts the gradient of stage k's output from
    that output. Iteration t: stage k < K-1 forwards batch t, backpropagates
    the synthetic gradient M_k(h_t) at once and steps with lr(t); its input
    gradient is stage k-1's true gradient of batch t. Then M_k takes one step
    (its own optimizer, from `make_synth_optimizer`) on the mean squared error
    between M_k(h_{t-1}) and the true gradient of batch t-1, which stage k+1
    produced in iteration t-1. The last stage backpropagates the loss. One
    extra iteration trains M_k on batch T-1. Returns the losses.
    """
    K, T = len(stages), len(batches)
    optimizers = [make_optimizer(s.parameters()) for s in stages]
    synth_optimizers = [make_synth_optimizer(m.parameters()) for m in synth_models]
    rng = []
    for seed in seeds:
        torch.manual_seed(seed)
        rng.append(torch.get_rng_state())
    outputs = [[] for _ in range(K)]  # stage k: [(batch, output)] awaiting the true gradient
    grads = {}  # (stage, batch) -> true gradient of that stage's output
    losses = []
    for t in range(T + 1):
        new_grads = {}
        x = batches[t][0] if t < T else None
        for k, stage in enumerate(stages):
            torch.set_rng_state(rng[k])
            if t < T:
                x_in = x.detach().requires_grad_(k > 0)
                if k < K - 1:
                    with _compute(precision):
                        h = stage(x_in)
                    with _compute(precision):  # a block of its own: the synthetic gradient, no graph
                        with torch.no_grad():
                            synthetic = synth_models[k](h.detach())
                        h.backward(synthetic)
                    outputs[k].append((t, h.detach()))
                    x = _boundary(h.detach(), precision)
                else:
                    with _compute(precision):
                        loss = _loss(stage(x_in), batches[t][1])
                        loss.backward()
                    losses.append(loss.item())
                if k > 0:
                    new_grads[(k - 1, t)] = _boundary(x_in.grad, precision)
                _set_lr(optimizers[k], lr_of(t))
                optimizers[k].step()
                optimizers[k].zero_grad()
            rng[k] = torch.get_rng_state()
            if k < K - 1 and 0 <= t - 1 < T:
                b, h_old = outputs[k].pop(0)
                assert b == t - 1
                with _compute(precision):
                    F.mse_loss(synth_models[k](h_old), grads.pop((k, b))).backward()
                synth_optimizers[k].step()
                synth_optimizers[k].zero_grad()
        grads.update(new_grads)
    assert not grads and not any(outputs), "every true gradient is used exactly once"
    return losses
