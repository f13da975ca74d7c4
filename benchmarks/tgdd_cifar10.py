"""TGDD benchmark (issue 6): expert training time, then TGDD vs DM vs random real at several
IPC under both the `dm` and the `tgdd` evaluation protocols, on cifar10-30k.

    python benchmarks/tgdd_cifar10.py --data ../shared/datasets/cifar10 --ipc 1 10 50

Reuses DM bundles from ``--workdir`` when present (e.g. those of dm_cifar10.py).
"""

from __future__ import annotations

import time

from common import append_results, ddcli, eval_args, parser, workdir


def main() -> None:
    ap = parser(__doc__, [1, 10, 50])
    ap.add_argument("--protocols", nargs="+", default=["dm", "tgdd"])
    ap.add_argument("--num-experts", type=int, default=5)
    ap.add_argument("--expert-epochs", type=int, default=60)
    ap.add_argument("--iterations", type=int, default=None)
    a = ap.parse_args()

    work = workdir(a, "ddcli-tgdd-")
    data = [a.data, "--train-files", a.train_files]
    t0 = time.perf_counter()
    ddcli("experts", *data, "--num-experts", str(a.num_experts), "--expert-epochs",
          str(a.expert_epochs),
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
                ev = eval_args(a, "-p", proto)
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
    append_results(a.out, lines)


if __name__ == "__main__":
    main()
