"""inductor's compile modes for `evaluate`'s training step on a CPU (issue 12).

`evaluate` compiles each model's training forward with ``torch.compile(dynamic=False)`` (the
default mode; its backward is compiled with it). ``max-autotune`` asks inductor to benchmark
alternative kernels (on a CPU its C++ GEMM templates) and keep the fastest. This times one
training step (forward, cross-entropy, backward, SGD) of one ConvNet-3 (width 128, instance
norm) on 100 images, with ddcli's allocator tuning and the process's threads, for each mode
given, one after the other, three timings of 30 steps each:

    python benchmarks/compile_mode_cpu.py [fmnist|cifar] [MODE ...]

MODE: eager, default, max-autotune-no-cudagraphs (default: default, max-autotune-no-cudagraphs,
default). Measured and not adopted (RESULTS.md, "`evaluate` on a CPU").
"""

from __future__ import annotations

import sys
import time

import torch
from torch.func import functional_call

from ddcli.models import create_model
from ddcli.runtime import tune_cpu_allocator

MODES = ("eager", "default", "max-autotune-no-cudagraphs")


def time_mode(mode: str, channels: int, size: int, steps: int = 30, repeats: int = 3
              ) -> list[float]:
    """ms per training step, ``repeats`` times, after three warm-up steps (the build)."""
    torch.manual_seed(0)
    net = create_model("convnet", 10, channels, (size, size))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    base = net.to("meta")

    def forward(p, x):
        return functional_call(base, (p, buffers), (x,))

    f = forward if mode == "eager" else torch.compile(
        forward, dynamic=False, mode=None if mode == "default" else mode)
    x, y = torch.randn(100, channels, size, size), torch.randint(0, 10, (100,))
    opt = torch.optim.SGD(list(params.values()), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(f(params, x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        out.append((time.perf_counter() - t0) / steps * 1000)
    return out


def main(argv: list[str]) -> None:
    data = argv[0] if argv else "fmnist"
    if data not in ("fmnist", "cifar"):
        sys.exit(f"error: the data is fmnist or cifar, got {data!r}")
    modes = argv[1:] or ["default", "max-autotune-no-cudagraphs", "default"]
    for m in modes:
        if m not in MODES:
            sys.exit(f"error: a mode is one of {', '.join(MODES)}, got {m!r}")
    tune_cpu_allocator()
    channels, size = (1, 28) if data == "fmnist" else (3, 32)
    print(f"{data}: one ConvNet-3 training step on 100 images, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}")
    for m in modes:
        ms = time_mode(m, channels, size)
        print(f"{m:28s} " + "  ".join(f"{v:6.1f}" for v in ms) + " ms/step", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
