"""OT generative distillation benchmark (issue 8), cifar10-30k, IPC 10 and 50.

otgen (with and without the OT term), random real and DM, all relabelled by the same LIA
teachers and evaluated with the `otm` protocol; prior-training and sampling times.

    python benchmarks/otgen_cifar10.py --data ../shared/datasets/cifar10 --ipc 10 50
"""

from __future__ import annotations

import time

from common import append_results, ddcli, eval_args, parser, workdir


def main() -> None:
    ap = parser(__doc__, [10, 50])
    ap.add_argument("--prior-steps", type=int, default=20000)
    ap.add_argument("--extra", default="", help="more otgen flags, e.g. '--ot-scale 0.2'")
    a = ap.parse_args()

    work = workdir(a, "ddcli-otgen-")
    data = [a.data, "--train-files", a.train_files]
    t0 = time.perf_counter()
    p = ddcli("prior", *data, "--prior-steps", str(a.prior_steps), "--device", a.device)
    prior_s = time.perf_counter() - t0
    lines = [f"## OT generative distillation — cifar10-30k (real = {a.train_files}, test = "
             f"{a.test_files})", "",
             f"{time.strftime('%Y-%m-%d')}; prior {p['prior']} ({a.prior_steps} steps, "
             f"{prior_s:.0f} s, 0 = cached); all sets relabelled by the same LIA teachers; "
             f"protocol otm, {a.models} models.", "",
             "| IPC | set | otm acc % | sampling s |", "|---|---|---|---|"]
    for ipc in a.ipc:
        rows = {"otgen (OT)": [], "otgen (no OT term)": ["--ot-scale", "0"], "dm": None}
        for name, extra in rows.items():
            out = work / f"{name.split()[0]}-{'noot' if extra else 'ot'}-ipc{ipc}.safetensors"
            args = (["-m", "dm"] if extra is None else
                    ["-m", "otgen", "--prior", p["prior"], *extra, *a.extra.split()])
            d = ddcli("distill", *data, *args, "--ipc", str(ipc), "-o", str(out), "--force",
                      "--device", a.device, "--checkpoint-every", "0", "--relabel")
            ev = eval_args(a, "-p", "otm")
            if name == "otgen (OT)":
                ev += ["--baseline", "random", "--real", a.data, "--real-files", a.train_files]
            e = ddcli("evaluate", str(out), "--test", a.data, "--test-files", a.test_files, *ev)
            r = e["result"]
            lines.append(f"| {ipc} | {name} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} "
                         f"| {d['stats']['wall_time_s']} |")
            if e.get("baseline"):
                b = e["baseline"]
                lines.append(f"| {ipc} | random real + relabel | {b['accuracy_mean']:.2f} ± "
                             f"{b['accuracy_std']:.2f} | - |")
            print(lines[-1], flush=True)
    append_results(a.out, lines)


if __name__ == "__main__":
    main()
