"""`ddcli evaluate` speed on a CPU, before and after, in the same run (issue 12).

Runs the same evaluation with the code of a git revision (``--before``, checked out into a
temporary worktree) and with the working tree, one after the other, on an otherwise idle
machine, and prints the training time and the per-model accuracies of both:

    python benchmarks/evaluate_speed_cpu.py fmnist-dm.safetensors --before 27600f0 \
        --models 3 --epochs 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def evaluate(code: Path, bundle: str, models: int, epochs: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "ddcli", "evaluate", bundle, "--models", str(models),
           "--epochs", str(epochs), "--seed", str(seed), "--device", "cpu", "--json",
           "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    rep = json.loads(r.stdout)
    res = rep["result"]
    return {"ddcli": rep["ddcli_version"], "train_s": res["train_time_s"],
            "acc": res["accuracy_per_model"], "mean": res["accuracy_mean"],
            "std": res["accuracy_std"], "execution": res.get("execution", "vmap")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--before", required=True, help="git revision to compare with")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    bundle = str(Path(a.bundle).resolve())
    with tempfile.TemporaryDirectory(prefix="ddcli-before-") as tmp:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, a.before],
                       check=True, capture_output=True)
        try:
            before = evaluate(Path(tmp), bundle, a.models, a.epochs, a.seed)
            after = evaluate(ROOT, bundle, a.models, a.epochs, a.seed)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp],
                           capture_output=True)
    print(json.dumps({"before": {"rev": a.before, **before}, "after": after,
                      "speedup": round(before["train_s"] / after["train_s"], 2)}, indent=1))


if __name__ == "__main__":
    main()
