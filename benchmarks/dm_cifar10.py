"""DM benchmark: distill, evaluate, compare with random real images; write a Markdown table.

Runs the product itself (``python -m ddcli ... --json``), so the figures are what users get.

Default: the project's ``cifar10-30k`` protocol (real = train_1..3, test = train_4) on the GPU:

    python benchmarks/dm_cifar10.py --data ../shared/datasets/cifar10 --ipc 1 10 50

The built-in sample on a CPU (what the README quotes):

    python benchmarks/dm_cifar10.py --data sample --ipc 10 --models 3 --epochs 300 \
        --out benchmarks/RESULTS-sample-cpu.md

Speed only (no evaluation), e.g. 500 iterations per IPC:

    python benchmarks/dm_cifar10.py --data ../shared/datasets/cifar10 --ipc 10 50 \
        --iterations 500 --speed-only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ddcli(*args: str) -> dict:
    cmd = [sys.executable, "-m", "ddcli", *args, "--json", "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.strip()}")
    out = json.loads(r.stdout)
    out["_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/cifar10",
                    help="dataset root, or 'sample' for the built-in Fashion-MNIST sample")
    ap.add_argument("--train-files", default="train_[123].npz")
    ap.add_argument("--test-files", default="train_4.npz")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--iterations", type=int, default=None, help="default: the method's")
    ap.add_argument("--batch-real", type=int, default=None)
    ap.add_argument("--extra", default="", help="more distill flags, e.g. '--amp bf16'")
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's (1000)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ddcli-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sample = a.data == "sample"
    data_args = [] if sample else [a.data, "--train-files", a.train_files]
    test_args = [] if sample else ["--test", a.data, "--test-files", a.test_files]
    real_args = [] if sample else ["--real", a.data, "--real-files", a.train_files]
    protocol = "built-in Fashion-MNIST sample (300/class train, 100/class test)" if sample \
        else f"cifar10-30k: real = {a.train_files}, test = {a.test_files}"

    rows = []
    for ipc in a.ipc:
        out = work / f"dm-ipc{ipc}.safetensors"
        extra = ["--iterations", str(a.iterations)] if a.iterations is not None else []
        extra += ["--batch-real", str(a.batch_real)] if a.batch_real is not None else []
        extra += a.extra.split()
        d = ddcli("distill", *data_args, "--method", "dm", "--ipc", str(ipc), "-o", str(out),
                  "--force", "--device", a.device, "--seed", str(a.seed),
                  "--checkpoint-every", "0", *extra)
        row = {"ipc": ipc, "distill": d}
        if not a.speed_only:
            ev = ["--models", str(a.models), "--device", a.device, "--seed", str(a.seed)]
            ev += ["--epochs", str(a.epochs)] if a.epochs else []
            row["eval"] = ddcli("evaluate", str(out), *test_args, *ev, "--baseline", "random",
                                *real_args)
        rows.append(row)
        print(json.dumps({"ipc": ipc, "stats": d["stats"],
                          "acc": row.get("eval", {}).get("result", {}).get("accuracy_mean")}),
              file=sys.stderr)

    lines = [
        f"## DM — {protocol}",
        "",
        f"Device: {rows[0]['distill']['device']}; torch {rows[0].get('eval', {}).get('torch', '')}"
        f"; {platform.node()}; {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    if not a.speed_only:
        p = rows[0]["eval"]["protocol"]
        lines += [
            f"Evaluation: protocol `{p['name']}` ({p['model']}, {p['epochs']} epochs, batch "
            f"{p['batch_size']}, SGD lr {p['lr']} momentum {p['momentum']} wd "
            f"{p['weight_decay']}, lr x{p['lr_gamma']} at {p['lr_milestones']}, DSA "
            f"`{p['dsa_strategy']}`, {p['labels']} labels), {a.models} models, mean ± std.",
            "",
            "| IPC | iterations | batch_real | DM acc % | random real acc % | gain (points) | "
            "distill s | it/s | peak GPU MB | eval s/model |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            d, e = r["distill"], r["eval"]
            lines.append(
                f"| {r['ipc']} | {d['config']['iterations']} | {d['config']['batch_real']} | "
                f"{e['result']['accuracy_mean']:.2f} ± {e['result']['accuracy_std']:.2f} | "
                f"{e['baseline']['accuracy_mean']:.2f} ± {e['baseline']['accuracy_std']:.2f} | "
                f"{e['improvement_points']:+.2f} | {d['stats']['wall_time_s']:.1f} | "
                f"{d['stats']['iterations_per_s']} | {d['stats']['peak_memory_mb']} | "
                f"{e['result']['train_time_per_model_s']:.2f} |"
            )
    else:
        lines += ["| IPC | iterations | batch_real | distill s | it/s | peak GPU MB |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            d = r["distill"]
            lines.append(f"| {r['ipc']} | {d['config']['iterations']} | "
                         f"{d['config']['batch_real']} | {d['stats']['wall_time_s']:.1f} | "
                         f"{d['stats']['iterations_per_s']} | {d['stats']['peak_memory_mb']} |")
    lines.append("")
    out_path = Path(a.out)
    old = out_path.read_text() if out_path.exists() else "# Benchmark results\n\n"
    out_path.write_text(old.rstrip("\n") + "\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
