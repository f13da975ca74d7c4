"""Memory and speed of `ddcli distill` as the real set grows (issue 16, item 1).

Generates sets of N random 32 px (or ``--size``) RGB images in 10 classes as npz shards,
distills each with DM for a few iterations on the CPU, and reports the peak resident memory of
the ddcli process, its wall time and iterations per second, so the growth of peak RSS with N
shows what ddcli holds per real image:

    python benchmarks/scale_data.py --sizes 2000 20000 100000 [--size 64] [--data-cache auto]

With the memory-mapped data cache in play (``--data-cache on``, or ``auto`` for sets of 1 GiB
of pixels and more) each size is distilled twice with a fresh ``$DDCLI_CACHE``: the first run
builds the cache (its extra time is the build), the second reads it.

Issue 16's targets: peak RSS grows by less than 100 MB from 2k to 20k images of 32 px, and by
less than 1 GB from 10k to 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_cpu import run  # noqa: E402  (the child that reports its own peak RSS)

CLASSES = [f"c{k}" for k in range(10)]
SHARD = 50_000  # images per generated shard


def make_set(folder: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, SHARD)):
        m = min(SHARD, n - start)
        np.savez(folder / f"train_{i}.npz",
                 images=rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8),
                 labels=(np.arange(start, start + m) % len(CLASSES)).astype(np.int64))
    (folder / "classes.json").write_text(json.dumps(CLASSES))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--data-cache", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddcli-scale-") as tmp:
        for n in a.sizes:
            data = Path(tmp) / f"set{n}"
            make_set(data, n, a.size)
            cache = Path(tmp) / "cache"
            os.environ["DDCLI_CACHE"] = str(cache)  # the children inherit it
            runs = []
            for _ in range(2):
                runs.append(run("distill", str(data), "-m", "dm", "--ipc", "10", "--iterations",
                                str(a.iterations), "--batch-real", "32", "--width", "32",
                                "--device", a.device, "--checkpoint-every", "0", "--data-cache",
                                a.data_cache, "-o", str(Path(tmp) / f"b{n}.safetensors"),
                                "--force"))
                if not (cache / "data").exists():
                    break  # in memory: one run says it all
            d = runs[-1]
            row = {"images": n, "size": a.size,
                   "pixels_mb": round(n * a.size * a.size * 3 / 2**20, 1),
                   "data_cache": len(runs) == 2, "peak_rss_mb": d["_peak_rss_mb"],
                   "wall_s": d["_wall_s"], "it_per_s": d["stats"]["iterations_per_s"]}
            if len(runs) == 2:
                row.update(build_run_peak_rss_mb=runs[0]["_peak_rss_mb"],
                           build_s=round(runs[0]["_wall_s"] - runs[1]["_wall_s"], 1))
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(data)
            shutil.rmtree(cache, ignore_errors=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"{base['images']} -> {r['images']} images: peak RSS "
              f"{r['peak_rss_mb'] - base['peak_rss_mb']:+.0f} MB for "
              f"{r['pixels_mb'] - base['pixels_mb']:+.0f} MB of pixels")


if __name__ == "__main__":
    main()
