"""ResNet-18 for small images: torchvision's ResNet with a 3x3 stride-1 stem and no max-pool."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet

from ddcli.models import register_model
from ddcli.models.init import kaiming_fan_out_init_


def _instance_norm(c: int) -> nn.Module:
    return nn.GroupNorm(c, c, affine=True)


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int, channels: int, norm: str = "instance",
                 layers=(2, 2, 2, 2)):
        super().__init__()
        norm_layer = _instance_norm if norm == "instance" else nn.BatchNorm2d
        net = ResNet(BasicBlock, list(layers), num_classes=num_classes, norm_layer=norm_layer)
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.net = net
        self.feature_dim = 512

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.relu(n.bn1(n.conv1(x)))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.embed(x))

    def reset_parameters(self, generator: torch.Generator) -> None:
        kaiming_fan_out_init_(self, generator)


# ``width`` (the ConvNets' channels, which the DM family passes to every model) does not apply:
# ResNet-18's stages are 64 to 512 channels (it was an internal error with --model resnet18)


@register_model("resnet18")
def resnet18(num_classes, channels, image_size, width=None, **kw) -> SmallResNet:
    """ResNet-18 with instance norm, adapted to small images."""
    return SmallResNet(num_classes, channels, norm="instance", **kw)


@register_model("resnet18-bn")
def resnet18_bn(num_classes, channels, image_size, width=None, **kw) -> SmallResNet:
    """ResNet-18 with batch norm, adapted to small images."""
    return SmallResNet(num_classes, channels, norm="batch", **kw)
