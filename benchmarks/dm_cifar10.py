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

import json
import platform
import sys
import time

from common import append_results, ddcli, eval_args, parser, workdir


def main() -> None:
    ap = parser(__doc__, [1, 10, 50])
    ap.add_argument("--iterations", type=int, default=None, help="default: the method's")
    ap.add_argument("--batch-real", type=int, default=None)
    ap.add_argument("--extra", default="", help="more distill flags, e.g. '--amp bf16'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-only", action="store_true")
    a = ap.parse_args()

    work = workdir(a, "ddcli-bench-")
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
            ev = eval_args(a, "--seed", str(a.seed))
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
    append_results(a.out, lines)


if __name__ == "__main__":
    main()
