"""Batch augmentation on tensors: random crop with zero padding and random horizontal flip."""

from __future__ import annotations

import torch


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Randomly crop (after zero padding by ``pad``) and flip each sample of ``x``.

    ``x`` is ``[B, C, H, W]`` of any dtype and device; the result has the same shape,
    dtype and device. Sample ``i`` is ``zero_pad(x[i])[:, oy:oy+H, ox:ox+W]``, then
    flipped along W when ``f[i] == 1``, where (drawn in this order from ``generator``
    only, on its device, never the global RNG) ``oy = randint(0, 2*pad+1, (B,))``,
    ``ox = randint(0, 2*pad+1, (B,))`` and, only if ``flip``, ``f = randint(0, 2, (B,))``.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects [B, C, H, W], got shape {list(x.shape)}")
    if pad < 0:
        raise ValueError(f"augment pad must be >= 0, got {pad}")
    b, c, h, w = x.shape
    gdev = generator.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = x.new_zeros((b, c, hp, wp))
    padded[:, :, pad : pad + h, pad : pad + w] = x
    cols = ox[:, None] + torch.arange(w, device=x.device)  # [B, W]
    if flip:
        f = torch.randint(0, 2, (b,), generator=generator, device=gdev).to(x.device).bool()
        cols = torch.where(f[:, None], cols.flip(-1), cols)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    # One gather over the flattened padded image: index [B, 1, H*W] broadcast over C.
    idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, hp * wp).gather(2, idx).view(b, c, h, w)
