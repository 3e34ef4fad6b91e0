"""A multilayer perceptron as blocks: one block per hidden layer, then the head."""

from __future__ import annotations

import math

import torch.nn as nn


def mlp_blocks(in_shape, classes: int, hidden=(64, 64, 64), dropout: float = 0.0) -> list[nn.Module]:
    """[Flatten?, Linear, ReLU, Dropout?] per hidden width, then Linear(classes)."""
    blocks, width = [], math.prod(in_shape)
    for i, h in enumerate(hidden):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        width = h
    head = [nn.Flatten()] if not hidden else []
    blocks.append(nn.Sequential(*head, nn.Linear(width, classes)))
    return blocks
