"""SFM / LGM benchmark (issue 7): cifar10-30k, EfficientNet-Lite0 features, IPC 1 and 10.

Linear-probe accuracy of SFM, LGM, random real and class centroids, with and without classifier
inheritance, the golden head (full-data linear probe) as the ceiling, and SFM vs LGM wall time
and peak GPU memory for the same iterations.

    python benchmarks/sfm_cifar10.py --data ../shared/datasets/cifar10 --ipc 1 10
"""

from __future__ import annotations

import time

from common import append_results, ddcli, eval_args, parser, workdir


def main() -> None:
    ap = parser(__doc__, [1, 10], models=3)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--iterations", type=int, default=5000)
    a = ap.parse_args()

    work = workdir(a, "ddcli-sfm-")
    data = [a.data, "--train-files", a.train_files]
    test = ["--test", a.data, "--test-files", a.test_files]
    real = ["--real", a.data, "--real-files", a.train_files]
    lines = [f"## SFM / LGM — cifar10-30k, {a.backbone} features, linear probe", "",
             f"{time.strftime('%Y-%m-%d')}; {a.iterations} iterations each; {a.models} heads per "
             "cell; linear probe = fresh heads, inherit = golden head + projector.", "",
             "| IPC | set | linear probe % | inherit % | distill s | peak GPU MB |",
             "|---|---|---|---|---|---|"]
    for ipc in a.ipc:
        ceiling = None
        for method in ("sfm", "lgm"):
            out = work / f"{method}-ipc{ipc}.safetensors"
            d = ddcli("distill", *data, "-m", method, "--ipc", str(ipc), "--backbone",
                      a.backbone, "--iterations", str(a.iterations), "-o", str(out), "--force",
                      "--device", a.device, "--checkpoint-every", "0")
            cells, bases = [], {}
            for inherit in ([], ["--inherit"]):
                ev = eval_args(a, "-p", "linear-probe")
                e = ddcli("evaluate", str(out), *test, *ev, *inherit)
                r = e["result"]
                cells.append(f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}")
                ceiling = e.get("golden_head_test_accuracy")
                if method == "sfm":
                    for kind in ("random", "centroids"):
                        bb = ddcli("evaluate", str(out), *test, *ev, *inherit, "--baseline",
                                   kind, *real)["baseline"]
                        bases.setdefault(kind, []).append(
                            f"{bb['accuracy_mean']:.2f} ± {bb['accuracy_std']:.2f}")
            s = d["stats"]
            lines.append(f"| {ipc} | {method} | {cells[0]} | {cells[1]} | {s['wall_time_s']} | "
                         f"{s['peak_memory_mb']} |")
            for kind, c in bases.items():
                lines.append(f"| {ipc} | {kind} real | {c[0]} | {c[1]} | - | - |")
        lines.append(f"| {ipc} | golden head (full data, ceiling) | {ceiling} | - | - | - |")
        print("\n".join(lines[-5:]), flush=True)
    append_results(a.out, lines)


if __name__ == "__main__":
    main()
