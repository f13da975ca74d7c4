"""How a teacher should shrink larger images (a ``--syn-res`` bundle relabelled by a teacher
trained at the data's size): a ConvNet teacher trained on CIFAR-10 train_1 read at S px (the
loader's antialiased resize, as ``--image-size`` reads data) classifies the 32 px images of
train_3 (train_4, the test split, untouched) shrunk to S px with plain bilinear interpolation
(``Teacher.logits`` until this change) and with the antialiased ``resize_images`` (after).

usage: python benchmarks/teacher_resize.py --data-root ../shared/datasets [--sizes 16 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import run_main

from ddcli.data import load_dataset, resize_images
from ddcli.teachers import train_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cache", default=None, help="teacher cache folder (default: a new one)")
    a = ap.parse_args()
    src = Path(a.data_root) / "cifar10"
    val = load_dataset(src, files="train_3.npz")
    pixels = val.images.float() / 255
    cache = Path(a.cache or tempfile.mkdtemp(prefix="teacher-resize-"))
    print("| teacher size | shrink | plain bilinear % | antialiased % | McNemar z | its own val % "
          "| train s |")
    print("|---|---|---|---|---|---|---|")
    for s in a.sizes:
        t0 = time.perf_counter()
        train = load_dataset(src, files="train_1.npz", image_size=(s, s))
        t, _ = train_teacher(train, "convnet", device=torch.device("cpu"), seed=0,
                             epochs=a.epochs, cache=cache)
        secs = time.perf_counter() - t0
        plain = F.interpolate(pixels, size=(s, s), mode="bilinear", align_corners=False)
        hit = [t.logits(x).argmax(1) == val.labels for x in (plain, resize_images(pixels, (s, s)))]
        acc = [round(h.float().mean().item() * 100, 2) for h in hit]
        # the paired test: images right one way and wrong the other
        b, c = int((hit[0] & ~hit[1]).sum()), int((hit[1] & ~hit[0]).sum())
        z = (c - b) / max(1, b + c) ** 0.5
        print(f"| {s} px | {32 // s}x | {acc[0]} | {acc[1]} | {z:+.2f} ({b} / {c}) "
              f"| {t.val_accuracy} | {secs:.0f} |")


if __name__ == "__main__":
    run_main(main)
