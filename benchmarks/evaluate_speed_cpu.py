"""`ddcli evaluate` speed on a CPU, before and after, in the same run (issue 12).

Runs the same evaluation with the code of a git revision (``--before``, checked out into a
temporary worktree) and with the working tree, one after the other, on an otherwise idle
machine, and prints the training time, the whole command's time (start-up, data, compilation,
testing) and the per-model accuracies of both:

    python benchmarks/evaluate_speed_cpu.py fmnist-dm.safetensors --before 27600f0 \
        --models 3 --epochs 300 --after-args '' --after-args '--compile off'

``--before`` may be repeated (each revision is measured, in order); speed-ups are against the
first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def evaluate(code: Path, bundle: str, models: int, epochs: int, seed: int,
             extra: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "ddcli", "evaluate", bundle, "--models", str(models),
           "--epochs", str(epochs), "--seed", str(seed), "--device", "cpu", "--json",
           "--quiet", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    if r.returncode != 0:  # ddcli's own one line (a bad bundle: exit 2), else its last line
        lines = r.stderr.strip().splitlines() or [f"exit {r.returncode}"]
        msg = next((x for x in lines if x.startswith("error:")), f"error: {lines[-1]}")
        print(f"{msg} (evaluate with the code in {code})", file=sys.stderr)
        sys.exit(2 if r.returncode == 2 else 1)
    rep = json.loads(r.stdout)
    res = rep["result"]
    return {"ddcli": rep["ddcli_version"], "args": " ".join(extra),
            "command_s": round(time.perf_counter() - t0, 1), "train_s": res["train_time_s"],
            "acc": res["accuracy_per_model"], "mean": res["accuracy_mean"],
            "std": res["accuracy_std"], "execution": res.get("execution", "vmap"),
            "microbatch": res.get("microbatch")}


def training_flops(bundle: str, protocol: str, models: int, epochs: int) -> float:
    """FLOPs of the whole training (forward + backward of every step, all models), counted by
    torch's FlopCounterMode on one step of the protocol's network at the bundle's shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import ddcli
    from ddcli.models import create_model
    from ddcli.protocols import get_protocol

    b = ddcli.load_bundle(bundle)
    proto = get_protocol(protocol, epochs=epochs)
    n, c, h, w = b.images.shape
    net = create_model(proto.model, b.num_classes, c, (h, w))
    bs = min(proto.batch_size, n)
    steps_per_epoch = -(-n // bs)
    with FlopCounterMode(display=False) as counter:
        x = torch.randn(bs, c, h, w)
        torch.nn.functional.cross_entropy(net(x), torch.zeros(bs, dtype=torch.long)).backward()
    return counter.get_total_flops() * steps_per_epoch * proto.train_epochs() * models


def gemm_rate(dtype: str = "float32", size: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of a square matrix product on this CPU (a reference for the rates above)."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def measure_revision(rev: str, bundle: str, a: argparse.Namespace) -> dict:
    """The evaluation with the code of git revision ``rev`` (a temporary worktree)."""
    with tempfile.TemporaryDirectory(prefix="ddcli-before-") as tmp:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, rev],
                       check=True, capture_output=True)
        try:
            return {"rev": rev, **evaluate(Path(tmp), bundle, a.models, a.epochs, a.seed)}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp],
                           capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--before", required=True, action="append",
                    help="git revision to compare with (repeatable; speed-ups against the first)")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--after-args", action="append", default=None,
                    help="extra evaluate options for a run of the working tree (repeatable; "
                         "one run per value, e.g. '' and '--compile off')")
    a = ap.parse_args()
    bundle = str(Path(a.bundle).resolve())
    before = [measure_revision(rev, bundle, a) for rev in a.before]
    after = [evaluate(ROOT, bundle, a.models, a.epochs, a.seed, tuple(x.split()))
             for x in (a.after_args or [""])]
    flops = training_flops(bundle, "dm", a.models, a.epochs)
    for r in (*before, *after):
        r["training_gflop_per_s"] = round(flops / r["train_s"] / 1e9, 1)
    for r in (*before[1:], *after):
        r["speedup_train"] = round(before[0]["train_s"] / r["train_s"], 2)
        r["speedup_command"] = round(before[0]["command_s"] / r["command_s"], 2)
    print(json.dumps({"before": before, "after": after,
                      "training_tflop": round(flops / 1e12, 2),
                      "gemm_gflop_per_s": {"float32": round(gemm_rate("float32"), 1),
                                           "bfloat16": round(gemm_rate("bfloat16"), 1)}},
                     indent=1))


if __name__ == "__main__":
    main()
