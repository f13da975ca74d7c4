"""Soft-label benchmark (issue 4): DM bundles, teachers, relabel, then hard vs kd vs otm, each
against random real images relabelled by the same teachers.

    python benchmarks/soft_labels_cifar10.py --data ../shared/datasets/cifar10 --ipc 10 50

Reuses DM bundles from ``--workdir`` when present (e.g. those of dm_cifar10.py).
"""

from __future__ import annotations

import time

from common import append_results, ddcli, eval_args, parser, workdir


def main() -> None:
    ap = parser(__doc__, [10, 50])
    ap.add_argument("--teachers", nargs="+", default=["convnet"], help="teacher architectures")
    ap.add_argument("--teacher-epochs", type=int, default=None)
    ap.add_argument("--protocols", nargs="+", default=["dm", "kd", "otm"])
    ap.add_argument("--iterations", type=int, default=None)
    a = ap.parse_args()

    work = workdir(a, "ddcli-bench-")
    data = [a.data, "--train-files", a.train_files]
    lines = [f"## Soft labels — cifar10-30k: real = {a.train_files}, test = {a.test_files}", "",
             f"{time.strftime('%Y-%m-%d')}; teachers {a.teachers}; {a.models} models per cell; "
             "'random' = random real images of the same IPC, relabelled by the same teachers.",
             "", "| IPC | protocol | DM bundle acc % | random acc % | gain | eval s/model |",
             "|---|---|---|---|---|---|"]
    notes = []
    for ipc in a.ipc:
        hard = work / f"dm-ipc{ipc}.safetensors"
        if not hard.exists():
            extra = ["--iterations", str(a.iterations)] if a.iterations else []
            ddcli("distill", *data, "--ipc", str(ipc), "-o", str(hard), "--device", a.device,
                  "--checkpoint-every", "0", *extra)
        soft = work / f"dm-ipc{ipc}-soft.safetensors"
        t_args = [x for arch in a.teachers for x in ("--train-teacher", arch)]
        t_args += ["--teacher-epochs", str(a.teacher_epochs)] if a.teacher_epochs else []
        r = ddcli("relabel", str(hard), "--data", a.data, "--train-files", a.train_files,
                  *t_args, "-o", str(soft), "--force", "--device", a.device)
        notes.append(f"- IPC {ipc}: teachers " + ", ".join(
            f"{t.get('arch', t['teacher'])} val {t['val_accuracy']}% ({t['source']}, "
            f"{t.get('train_time_s')} s)" for t in r["teachers"])
            + f"; relabel {r['relabel_time_s']} s; bundle {r['bundle_bytes'] / 1e6:.2f} MB")
        for proto in a.protocols:
            ev = eval_args(a, "-p", proto)
            target = hard if proto == "dm" else soft
            e = ddcli("evaluate", str(target), "--test", a.data, "--test-files", a.test_files,
                      *ev, "--baseline", "random", "--real", a.data, "--real-files",
                      a.train_files)
            lines.append(
                f"| {ipc} | {proto} | {e['result']['accuracy_mean']:.2f} ± "
                f"{e['result']['accuracy_std']:.2f} | {e['baseline']['accuracy_mean']:.2f} ± "
                f"{e['baseline']['accuracy_std']:.2f} | {e['improvement_points']:+.2f} | "
                f"{e['result']['train_time_per_model_s']:.2f} |")
    text = "\n".join(lines + [""] + notes + [""])
    append_results(a.out, text.splitlines())
    print(text)


if __name__ == "__main__":
    main()
