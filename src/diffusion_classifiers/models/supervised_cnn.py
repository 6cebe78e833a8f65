"""A small supervised conv net: the baseline the diffusion classifiers are compared against.

It is about the size of a small U-Net's encoder; `training.train_supervised_cnn` trains it with labels.
"""

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["SupervisedCNN", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


def _conv_norm_act(in_channels: int, out_channels: int, stride: int, groups: int) -> list:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(math.gcd(groups, out_channels), out_channels),
        nn.SiLU(),
    ]


class SupervisedCNN(nn.Module):
    r"""
    Conv stages (conv-GroupNorm-SiLU twice; every stage after the first starts with a stride-2 conv), global
    average pooling and a linear classifier.

    Args:
        in_channels (`int`, *optional*, defaults to 1): image channels.
        num_classes (`int`, *optional*, defaults to 2): number of classes `K`; `forward` returns logits `[N, K]`.
        widths (`Sequence[int]`, *optional*, defaults to `(32, 64, 128)`): channels of each stage; the resolution
            halves from one stage to the next.
        norm_num_groups (`int`, *optional*, defaults to 8): GroupNorm groups (reduced to a divisor of each stage's
            width).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths: Sequence[int] = (32, 64, 128), norm_num_groups: int = 8):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or not widths or min(widths) < 1:
            raise ValueError(
                f"expected in_channels >= 1, num_classes >= 2 and positive widths, got {in_channels}, {num_classes}, {list(widths)}"
            )
        layers, channels = [], in_channels
        for stage, width in enumerate(widths):
            layers += _conv_norm_act(channels, width, stride=1 if stage == 0 else 2, groups=norm_num_groups)
            layers += _conv_norm_act(width, width, stride=1, groups=norm_num_groups)
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).mean(dim=(2, 3)))  # (N, K)
