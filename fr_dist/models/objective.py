"""The training objective every stage's loss uses: cross entropy over the last dimension."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Scores (N, C) against labels (N,), or next-token logits (N, T, V) against tokens (N, T).

    Flattening the leading dimensions makes a language model's mean over tokens
    the same call as a classifier's mean over samples (a no-op for (N, C)).
    """
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction)


def perplexity(loss: float) -> float:
    """exp of a mean per-token loss; a diverged loss (above 700 nats) reads as exp(700) instead of overflowing."""
    return math.exp(min(loss, 700.0))
