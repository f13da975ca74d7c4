"""ConvNet-D, the network of the DM / IDM / TGDD / NCFM line (methods.md §1.2).

D blocks of Conv3x3(width) -> norm -> ReLU -> AvgPool2x2. The depth follows the image size
(3 for 32 px, 4 for 64, 5 for 128, 6 for 256); 28 px images are treated as 32 px (first conv
padded by 3), as in the reference code. "instance" norm is GroupNorm(width, width).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ddcli.models import register_model
from ddcli.models.init import default_init_


def depth_for(size: tuple[int, int]) -> int:
    """Largest depth that keeps the feature map at least 4 px (32 -> 3, 64 -> 4, 128 -> 5)."""
    s = min(32 if x == 28 else x for x in size)
    return max(1, int(math.floor(math.log2(s / 4))))


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        channels: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int | None = None,
        norm: str = "instance",
    ):
        super().__init__()
        h, w = image_size
        pad28 = (h, w) == (28, 28)
        eff = (32, 32) if pad28 else (h, w)
        self.depth = depth or depth_for((h, w))
        self.width = width
        layers: list[nn.Module] = []
        c_in = channels
        for d in range(self.depth):
            layers += [
                nn.Conv2d(c_in, width, 3, padding=3 if (pad28 and d == 0) else 1),
                _norm(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            c_in = width
            eff = (eff[0] // 2, eff[1] // 2)
        if min(eff) < 1:
            raise ValueError(f"image size {image_size} too small for depth {self.depth}")
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * eff[0] * eff[1]
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def reset_parameters(self, generator: torch.Generator) -> None:
        default_init_(self, generator)


@register_model("convnet")
def convnet(num_classes, channels, image_size, **kw) -> ConvNet:
    """ConvNet-D with instance norm (the DM reference network)."""
    return ConvNet(num_classes, channels, image_size, norm="instance", **kw)


@register_model("convnet-bn")
def convnet_bn(num_classes, channels, image_size, **kw) -> ConvNet:
    """ConvNet-D with batch norm."""
    return ConvNet(num_classes, channels, image_size, norm="batch", **kw)
