"""Running a stage's module without changing its state: the output-spec probe and BatchNorm save/restore."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


class BatchNormState:
    """Saved copies of every BatchNorm running buffer of a module, restored on demand.

    A replay (or a diagnostic pass) recomputes a forward in training mode, which
    updates the running statistics a second time; `save` before it and
    `restore` after its backward leave them as the first forward left them.
    Restore after the backward, not before: autograd saved the running buffers
    with the BatchNorm node, and an in-place change before backward is an error.
    """

    def __init__(self, module: nn.Module):
        self.pairs = [(buf, buf.clone()) for m in module.modules() if isinstance(m, _BatchNorm)
                      for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]

    def save(self) -> None:
        for buf, saved in self.pairs:
            saved.copy_(buf)

    def restore(self) -> None:
        with torch.no_grad():
            for buf, saved in self.pairs:
                buf.copy_(saved)


@torch.no_grad()
def output_spec(module: nn.Module, in_spec, device: torch.device) -> tuple[tuple[int, ...], torch.dtype]:
    """(shape, dtype) of `module`'s output for an input of `in_spec` = (shape, dtype).

    Runs once on zeros in eval mode: no BatchNorm statistics change, no RNG is drawn.
    """
    was_training = module.training
    module.eval()
    try:
        out = module(torch.zeros(in_spec[0], dtype=in_spec[1], device=device))
    finally:
        module.train(was_training)
    return tuple(out.shape), out.dtype
