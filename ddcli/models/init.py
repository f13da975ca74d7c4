"""Generator-driven weight initialisation (the same distributions as PyTorch's defaults)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


@torch.no_grad()
def default_init_(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default init, drawn from ``generator``.

    Conv / Linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what
    ``kaiming_uniform_(a=sqrt(5))`` gives); norm layers get weight 1, bias 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            m.weight.uniform_(-bound, bound, generator=generator)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, nn.GroupNorm | nn.BatchNorm2d):
            if m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()


@torch.no_grad()
def kaiming_fan_out_init_(module: nn.Module, generator: torch.Generator) -> None:
    """torchvision's ResNet init: convs ~ N(0, 2/fan_out), norms 1/0, linear as PyTorch default."""
    default_init_(module, generator)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
