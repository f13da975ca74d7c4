"""Long-tailed benchmark (issue 5): CIFAR-10-LT from the cifar10-30k real set at several
imbalance factors; DM vs CSDM vs random real, evaluated on the balanced test batch.

    python benchmarks/lt_cifar10.py --data ../shared/datasets/cifar10 --if 10 50 100 200 \
        --ipc 10 50 --methods dm csdm

Random real images are drawn from the same long-tailed subset (a tail class gives all it has).
"""

from __future__ import annotations

import time

from common import append_results, ddcli, eval_args, parser, workdir

PUBLISHED = {  # methods.md §6.3, CIFAR-10-LT, ConvNet-3 (IF, IPC): {method: acc}
    (10, 10): {"IDM": 54.8, "DAMED": 58.1, "Cui AAAI-26": 63.6},
    (10, 50): {"IDM": 60.1, "DAMED": 70.5, "Cui AAAI-26": 74.1},
    (50, 10): {"IDM": 51.9, "DAMED": 54.2, "Cui AAAI-26": 62.9},
    (50, 50): {"IDM": 56.1, "DAMED": 65.8, "Cui AAAI-26": 70.6},
    (100, 10): {"IDM": 49.8, "DAMED": 53.4, "Cui AAAI-26": 62.7},
    (100, 50): {"IDM": 53.1, "DAMED": 64.0, "Cui AAAI-26": 68.8},
    (200, 50): {"DAMED": 62.3},
}


def main() -> None:
    ap = parser(__doc__, [10, 50])
    ap.add_argument("--if", dest="factors", type=float, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--methods", nargs="+", default=["dm", "csdm"])
    ap.add_argument("--extra", default="", help="more distill flags for every method")
    ap.add_argument("--iterations", type=int, default=None)
    a = ap.parse_args()

    work = workdir(a, "ddcli-lt-")
    head = ["IF", "IPC", *a.methods, "random real", "published (methods.md §6.3)",
            "distill s / peak GPU MB"]
    lines = [f"## Long-tailed CIFAR-10 — cifar10-30k LT subsets (real = {a.train_files}, "
             f"test = {a.test_files}, balanced)", "",
             f"{time.strftime('%Y-%m-%d')}; protocol dm, {a.models} models; accuracy % mean ± "
             "std, then many / medium / few.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in a.factors:
        for ipc in a.ipc:
            cells, timing, base = [], [], None
            for m in a.methods:
                out = work / f"{m}-if{f:g}-ipc{ipc}.safetensors"
                extra = ["--iterations", str(a.iterations)] if a.iterations else []
                d = ddcli("distill", a.data, "--train-files", a.train_files, "-m", m,
                          "--imbalance-factor", str(f), "--ipc", str(ipc), "-o", str(out),
                          "--force", "--device", a.device, "--checkpoint-every", "0", *extra,
                          *a.extra.split())
                ev = eval_args(a)
                if base is None:
                    ev += ["--baseline", "random", "--real", a.data, "--real-files",
                           a.train_files]
                e = ddcli("evaluate", str(out), "--test", a.data, "--test-files", a.test_files,
                          *ev)
                base = base or e.get("baseline")
                g = e["result"]["group_accuracy"] or {}
                r = e["result"]
                cells.append(f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}"
                             f" ({g.get('many', 0):.0f}/{g.get('medium', 0):.0f}/"
                             f"{g.get('few', 0):.0f})")
                timing.append(f"{m} {d['stats']['wall_time_s']:.0f} / "
                              f"{d['stats']['peak_memory_mb']}")
            pub = ", ".join(f"{k} {v}" for k, v in PUBLISHED.get((int(f), ipc), {}).items())
            lines.append(f"| {f:g} | {ipc} | " + " | ".join(cells)
                         + f" | {base['accuracy_mean']:.2f} ± {base['accuracy_std']:.2f} | "
                         f"{pub or '-'} | {'; '.join(timing)} |")
            print(lines[-1], flush=True)
    append_results(a.out, lines)


if __name__ == "__main__":
    main()
