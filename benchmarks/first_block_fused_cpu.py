"""The ConvNet's first block with its convolution and instance norm fused, on a CPU (issue 12).

A profile of `evaluate`'s compiled step on the built-in sample put about 20 % of its time in
the first convolution (1 -> 128 channels at 32 px: few FLOPs, 52 MB of output a model) and
about 20 % in the fused norm / ReLU / pooling kernels, mostly the first block's. Because that
block's input has few channels, conv + instance norm can be computed without the
convolution's output: per image, the norm's mean and variance of channel c are w_c . m and
w_c^T S w_c, with m and S the mean and covariance of the image's 3x3 patches (9 x 9 for one
channel), so the normalised output is one batched product of per-image, per-channel scaled
weights with the patches (the conv bias cancels). Same arithmetic up to float rounding.

Times one training step (forward, cross-entropy, gradients of every parameter) of one
ConvNet-3 (width 128, instance norm) on 100 images, eager and compiled, standard against
fused, with ddcli's allocator tuning and 2 threads:

    python benchmarks/first_block_fused_cpu.py [fmnist|cifar]

Measured and not adopted (RESULTS.md, "`evaluate` on a CPU").
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ddcli.models.convnet import ConvNet
from ddcli.runtime import tune_cpu_allocator


class FusedConvInstanceNorm(nn.Module):
    """conv (3x3) -> GroupNorm(C, C) of ``conv`` and ``norm``, from patch statistics."""

    def __init__(self, conv: nn.Conv2d, norm: nn.GroupNorm):
        super().__init__()
        self.conv, self.norm = conv, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.conv.padding[0]
        p = F.unfold(x, 3, padding=pad)  # (n, C_in * 9, L)
        m = p.mean(-1)
        pc = p - m[..., None]
        cov = pc @ pc.transpose(1, 2) / p.shape[-1]
        w = self.conv.weight.flatten(1)  # (C, C_in * 9)
        var = ((w @ cov) * w).sum(-1)  # (n, C)
        s = self.norm.weight / torch.sqrt(var + self.norm.eps)
        out = torch.baddbmm((self.norm.bias - s * (m @ w.T))[..., None], w[None] * s[..., None], p)
        side = x.shape[-1] + 2 * pad - 2
        return out.view(x.shape[0], -1, side, side)


def step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool,
            reps: int = 30) -> list[float]:
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    base = copy.deepcopy(model).to("meta")

    def f(p, x):
        return functional_call(base, p, (x,))

    fwd = torch.compile(f, dynamic=False) if compiled else f

    def step():
        loss = F.cross_entropy(fwd(params, x), y)
        torch.autograd.grad(loss, list(params.values()), allow_unused=True)

    for _ in range(5):
        step()
    out = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            step()
        out.append(1000 * (time.perf_counter() - t) / reps)
    return out


def main() -> None:
    tune_cpu_allocator()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    c, h = (3, 32) if sys.argv[1:] == ["cifar"] else (1, 28)
    x, y = torch.randn(100, c, h, h), torch.randint(0, 10, (100,))
    net = ConvNet(10, c, (h, h))
    fused = copy.deepcopy(net)
    f = fused.features
    fused.features = nn.Sequential(FusedConvInstanceNorm(f[0], f[1]), *list(f)[2:])
    with torch.no_grad():
        print(f"{c}x{h}x{h} images; max |standard - fused| logit: "
              f"{(net(x) - fused(x)).abs().max().item():.2e}")
    for name, m in (("standard", net), ("fused first block", fused)):
        for compiled in (False, True):
            ms = step_ms(m, x, y, compiled)
            kind = "compiled" if compiled else "eager"
            print(f"{name}, {kind}: " + ", ".join(f"{v:.1f}" for v in ms) + " ms a step")


if __name__ == "__main__":
    main()
