"""The frozen-backbone methods' speed on a CPU, before and after, in the same run (issue 12).

SFM and LGM distil through a frozen EfficientNet-Lite0 at 224 px, and the linear-probe judge
embeds augmented images through it every epoch: on a 2-core CPU these dominate the quality
suite's backbone rows. This runs the same three commands with the code of a git revision
(``--before``, checked out into a temporary worktree) and with the working tree, one after the
other, each with its own empty ``$DDCLI_CACHE`` (so SFM embeds the real set both times), and
prints wall time, iterations per second and the probe's per-model accuracies:

    python benchmarks/backbone_speed_cpu.py --data-root ../shared/datasets --before HEAD~1
    python benchmarks/backbone_speed_cpu.py --data-root ../shared/datasets --before HEAD~1 \
        --ipc 10 --lgm-augs 1 --iterations 20 --epochs 10

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import ddcli as run_ddcli  # noqa: E402
from common import per_class_subset  # noqa: E402


def ddcli(code: Path, cache: Path, *args: str) -> dict:
    """``common.ddcli`` with the code of ``code`` and the cache ``cache``."""
    return run_ddcli(*args, env={"PYTHONPATH": str(code), "DDCLI_CACHE": str(cache)}, cwd=code)


def workload(code: Path, work: Path, cifar: Path, test: Path, a: argparse.Namespace) -> dict:
    cache = work / "cache"
    work.mkdir(parents=True, exist_ok=True)
    data = [str(cifar), "--train-files", "train_[123].npz", "--max-per-class",
            str(a.per_class), "--ipc", str(a.ipc), "--seed", "0", "--device", "cpu", "--force",
            "--checkpoint-every", "0"]
    res = {}
    for m, augs in (("sfm", 1), ("lgm", a.lgm_augs)):
        out = work / f"{m}.safetensors"
        d = ddcli(code, cache, "distill", *data, "-m", m, "--iterations", str(a.iterations),
                  "--augs", str(augs), "-o", str(out))
        res[m] = {"wall_s": d["_wall_s"], "it_per_s": d["stats"]["iterations_per_s"]}
    e = ddcli(code, cache, "evaluate", str(work / "sfm.safetensors"), "--test", str(test),
              "-p", "linear-probe", "--models", "3", "--epochs", str(a.epochs), "--seed", "0",
              "--device", "cpu")
    r = e["result"]
    res["probe"] = {"wall_s": e["_wall_s"], "train_s": r["train_time_s"],
                    "acc": r["accuracy_per_model"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, type=Path)
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--per-class", type=int, default=20, help="real images per class")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--lgm-augs", type=int, default=3,
                    help="LGM's views per step (3 at IPC 10 exceeds 24 GB)")
    ap.add_argument("--epochs", type=int, default=30, help="linear-probe epochs")
    a = ap.parse_args()
    cifar = a.data_root.resolve() / "cifar10"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test = per_class_subset(cifar, tmp / "test", 20)
        before = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), a.before], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            rows = {"before": workload(before, tmp / "b", cifar, test, a),
                    "after": workload(ROOT, tmp / "a", cifar, test, a)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           capture_output=True)
    print(json.dumps(rows, indent=1))
    print("| code | sfm distill s (it/s) | lgm distill s (it/s) | probe train s | probe % |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['sfm']['wall_s']} ({r['sfm']['it_per_s']}) | {r['lgm']['wall_s']} "
              f"({r['lgm']['it_per_s']}) | {r['probe']['train_s']} | "
              f"{', '.join(map(str, r['probe']['acc']))} |")


if __name__ == "__main__":
    main()
