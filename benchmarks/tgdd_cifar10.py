"""TGDD benchmark (issue 6): expert training time, then TGDD vs DM vs random real at several
IPC under both the `dm` and the `tgdd` evaluation protocols, on cifar10-30k.

    python benchmarks/tgdd_cifar10.py --data ../shared/datasets/cifar10 --ipc 1 10 50

Reuses DM bundles from ``--workdir`` when present (e.g. those of dm_cifar10.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dm_cifar10 import ddcli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--train-files", default="train_[123].npz")
    ap.add_argument("--test-files", default="train_4.npz")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--protocols", nargs="+", default=["dm", "tgdd"])
    ap.add_argument("--num-experts", type=int, default=5)
    ap.add_argument("--expert-epochs", type=int, default=60)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ddcli-tgdd-"))
    work.mkdir(parents=True, exist_ok=True)
    data = [a.data, "--train-files", a.train_files]
    t0 = time.perf_counter()
    ddcli("experts", *data, "--num", str(a.num_experts), "--epochs", str(a.expert_epochs),
          "--device", a.device)
    expert_s = time.perf_counter() - t0
    lines = [f"## TGDD — cifar10-30k (real = {a.train_files}, test = {a.test_files})", "",
             f"{time.strftime('%Y-%m-%d')}; {a.num_experts} expert trajectories x "
             f"{a.expert_epochs} epochs built in {expert_s:.0f} s (0 s = already cached); "
             f"{a.models} models per cell.", "",
             "| IPC | method | " + " | ".join(f"{p} protocol %" for p in a.protocols)
             + " | distill s | it/s | peak GPU MB |",
             "|---|---|" + "---|" * (len(a.protocols) + 3)]
    for ipc in a.ipc:
        for method in ("tgdd", "dm"):
            out = work / f"{method}-ipc{ipc}.safetensors"
            stats = {}
            if method == "tgdd" or not out.exists():
                extra = ["--iterations", str(a.iterations)] if a.iterations else []
                extra += (["--num-experts", str(a.num_experts), "--expert-epochs",
                           str(a.expert_epochs)] if method == "tgdd" else [])
                d = ddcli("distill", *data, "-m", method, "--ipc", str(ipc), "-o", str(out),
                          "--force", "--device", a.device, "--checkpoint-every", "0", *extra)
                stats = d["stats"]
            cells, base = [], []
            for proto in a.protocols:
                ev = ["--models", str(a.models), "--device", a.device, "-p", proto]
                ev += ["--epochs", str(a.epochs)] if a.epochs else []
                if method == "tgdd":
                    ev += ["--baseline", "random", "--real", a.data, "--real-files",
                           a.train_files]
                e = ddcli("evaluate", str(out), "--test", a.data, "--test-files", a.test_files,
                          *ev)
                r = e["result"]
                cells.append(f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}")
                if e.get("baseline"):
                    b = e["baseline"]
                    base.append(f"{b['accuracy_mean']:.2f} ± {b['accuracy_std']:.2f}")
            lines.append(f"| {ipc} | {method} | " + " | ".join(cells)
                         + f" | {stats.get('wall_time_s', '-')} | "
                         f"{stats.get('iterations_per_s', '-')} | "
                         f"{stats.get('peak_memory_mb', '-')} |")
            if base:
                lines.append(f"| {ipc} | random real | " + " | ".join(base) + " | - | - | - |")
            print(lines[-1], flush=True)
    out_md = Path(a.out)
    old = out_md.read_text() if out_md.exists() else "# Benchmark results\n\n"
    out_md.write_text(old.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
