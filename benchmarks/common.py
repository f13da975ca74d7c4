"""What the benchmark scripts share: running the CLI, the common arguments, writing results."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ddcli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run ``python -m ddcli ARGS --json --quiet`` (with ``env`` added to the environment,
    in ``cwd``); return its JSON (exit on failure)."""
    import os

    cmd = [sys.executable, "-m", "ddcli", *args, "--json", "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, **env} if env else None)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.strip()}")
    out = json.loads(r.stdout)
    out["_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def run_main(main, *args) -> None:
    """Call ``main(*args)``; a ddcli error (a missing bundle or dataset, a bad option) ends the
    script as it ends the CLI: one ``error:`` line on stderr and the error's exit code (2 for
    bad input), not a traceback."""
    from ddcli.errors import DDCliError, Interrupted

    try:
        main(*args)
    except (DDCliError, Interrupted) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None


def parser(doc: str, ipc: list[int], models: int = 5) -> argparse.ArgumentParser:
    """The arguments every benchmark takes (cifar10-30k defaults)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--train-files", default="train_[123].npz")
    ap.add_argument("--test-files", default="train_4.npz")
    ap.add_argument("--ipc", type=int, nargs="+", default=ipc)
    ap.add_argument("--models", type=int, default=models)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    return ap


def workdir(a: argparse.Namespace, prefix: str) -> Path:
    work = Path(a.workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def eval_args(a: argparse.Namespace, *extra: str) -> list[str]:
    out = ["--models", str(a.models), "--device", a.device, *extra]
    return out + (["--epochs", str(a.epochs)] if a.epochs else [])


def append_results(path: str, lines: list[str]) -> None:
    out = Path(path)
    old = out.read_text() if out.exists() else "# Benchmark results\n\n"
    out.write_text(old.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def per_class_subset(src: Path, dest: Path, per_class: int, shard: str = "train_4.npz") -> Path:
    """The first ``per_class`` images of every class of ``src/shard`` as ``dest/test.npz`` (plus
    ``classes.json``), class by class: a smaller test set by a fixed rule, not a choice."""
    return held_out_subset(src, shard, (), dest, per_class, by_class=True)


def held_out_subset(src: Path, shard: str, exclude, dest: Path, per_class: int = 100,
                    name: str = "test.npz", classes: Path | None = None,
                    by_class: bool = False) -> Path:
    """The first ``per_class`` images of every class of ``src/shard`` that are not among the
    images ``exclude`` (compared byte for byte, in the shard's layout), as ``dest/name`` plus
    ``classes.json`` (from ``classes``, ``src``'s otherwise): a validation split held out from
    a distilled subset by a fixed rule. ``by_class`` orders it class by class, the shard's order
    otherwise."""
    import hashlib

    import numpy as np

    used = {hashlib.sha256(x.tobytes()).hexdigest() for x in exclude}
    z = np.load(src / shard)
    images, labels = z["images"], z["labels"]
    keep, count = [], {}
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        if count.get(y, 0) < per_class and hashlib.sha256(x.tobytes()).hexdigest() not in used:
            keep.append(i)
            count[y] = count.get(y, 0) + 1
    if by_class:
        keep.sort(key=lambda i: (labels[i], i))
    dest.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest / name, images=images[keep], labels=labels[keep])
    (dest / "classes.json").write_text(((classes or src) / "classes.json").read_text())
    return dest
