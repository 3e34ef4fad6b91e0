"""CIFAR ResNets (He et al. 2016, section 4.2) as blocks: stem, residual blocks, head.

Depth 6n+2 uses basic blocks (resnet8..110), depth 9n+2 bottleneck blocks
(resnet164); three groups of n blocks with `width`, 2x and 4x channels, the
last two starting with stride 2.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110, 164)
BOTTLENECK_DEPTHS = (164,)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True), *conv_bn(width, width, 3))
        self.shortcut = (
            nn.Sequential(*conv_bn(cin, width, 1, stride)) if stride != 1 or cin != width else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *conv_bn(cin, width, 1), nn.ReLU(inplace=True),
            *conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *conv_bn(width, cout, 1),
        )
        self.shortcut = (
            nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def resnet_blocks(depth: int, in_shape, classes: int, width: int = 16) -> list[nn.Module]:
    """Blocks of a CIFAR ResNet of `depth` for inputs of shape `in_shape` (C, H, W)."""
    block = Bottleneck if depth in BOTTLENECK_DEPTHS else BasicBlock
    per_block = 9 if block is Bottleneck else 6
    if (depth - 2) % per_block:
        raise ValueError(f"depth {depth} is not {per_block}n+2")
    n = (depth - 2) // per_block
    blocks: list[nn.Module] = [nn.Sequential(*conv_bn(in_shape[0], width, 3), nn.ReLU(inplace=True))]
    cin = width
    for group in range(3):
        for i in range(n):
            stride = 2 if group > 0 and i == 0 else 1
            blocks.append(block(cin, width * 2**group, stride))
            cin = width * 2**group * block.expansion
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)))
    for b in blocks:
        for m in b.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return blocks
