"""Looking at bundles: image grids (PNG), terminal previews, ImageFolder export."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from rich.text import Text

from ddcli.data import EXPORT_MARKER
from ddcli.errors import InputError
from ddcli.io import atomic_dir, atomic_path, check_writable


def _display(images: torch.Tensor) -> torch.Tensor:
    """Pixel-scale images for display: clamped to 0..1 (the bundle itself is never clamped)."""
    return images.detach().float().clamp(0, 1)


def class_rows(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int | None = None
) -> tuple[torch.Tensor, int]:
    """Arrange images one row per class (rows padded with blanks); return (tiles, ncols)."""
    counts = torch.bincount(labels, minlength=num_classes)
    ncols = int(counts.max()) if per_class is None else min(per_class, int(counts.max()))
    ncols = max(ncols, 1)
    c, h, w = images.shape[1:]
    tiles = torch.zeros((num_classes * ncols, c, h, w), dtype=images.dtype)
    for k in range(num_classes):
        idx = torch.nonzero(labels == k).flatten()[:ncols]
        tiles[k * ncols : k * ncols + idx.numel()] = images[idx]
    return tiles, ncols


#: the file name suffixes --grid takes and the image format each writes
GRID_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def check_grid(path: Path, force: bool) -> str:
    """Refuse a grid file name of no known format, or an existing file without ``force``;
    returns the format the name says."""
    fmt = GRID_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:  # it wrote PNG bytes under any name (grid.jpg, grid.jpgx, grid)
        raise InputError(f"grid {path}: name the image *.png, *.jpg or *.jpeg "
                         "(the format follows the name)")
    check_writable(Path(path), force)
    return fmt


def save_grid(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, path: Path, force: bool = False
) -> None:
    from torchvision.utils import save_image

    path = Path(path)
    fmt = check_grid(path, force)
    tiles, ncols = class_rows(_display(images), labels, num_classes)
    with atomic_path(path) as tmp:
        save_image(tiles, str(tmp), nrow=ncols, padding=2, pad_value=1.0, format=fmt)


def terminal_preview(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    per_class: int = 8,
    cell: int = 16,
    width: int | None = None,
    gap: int = 1,
) -> Text:
    """A true-colour picture of the grid made of Unicode upper-half blocks (2 pixels a cell),
    tiles ``gap`` cells apart (and class rows a blank line apart), under a line saying how many
    of how many images per class it shows. With ``width`` (terminal columns) the images
    shrink, and if need be fewer are shown, so that a row fits."""
    counts = torch.bincount(labels, minlength=len(classes))
    most = max(int(counts.max()), 1)
    label_w = max(len(c) for c in classes) + 1
    if width is not None:
        per_class = max(1, min(per_class, (width - label_w) // (2 + gap)))
    tiles, ncols = class_rows(_display(images), labels, len(classes), per_class)
    if width is not None:
        cell = max(2, min(cell, (width - label_w) // ncols - gap) // 2 * 2)
    x = torch.nn.functional.interpolate(tiles, size=(cell, cell), mode="area")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = (x * 255).round().to(torch.uint8)
    least = int(counts.min())
    of = str(most) if least == most else f"{least}-{most}"
    out = Text(f"preview: {min(ncols, most)} of {of} images per class "
               f"({len(classes)} classes)\n")
    width = max(len(c) for c in classes)
    for k, name in enumerate(classes):
        if k:
            out.append("\n")  # a blank line between classes
        for y in range(0, cell, 2):
            label = name[:width].ljust(width) if y == 0 else " " * width
            out.append(label + " ")
            for j in range(ncols):
                if j:
                    out.append(" " * gap)
                tile = x[k * ncols + j]  # (3, cell, cell)
                for col in range(cell):
                    top = tile[:, y, col].tolist()
                    bot = tile[:, y + 1, col].tolist() if y + 1 < cell else top
                    out.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on "
                                          f"rgb({bot[0]},{bot[1]},{bot[2]})")
            out.append("\n")
    return out


#: the longest folder name (in UTF-8 bytes) export makes of a class name; file systems allow 255
MAX_NAME_BYTES = 100


def safe_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A class name usable as a folder name (``T-shirt/top`` -> ``T-shirt_top``), at most
    ``max_bytes`` long in UTF-8."""
    s = re.sub(r"[^\w.\- ]+", "_", name).strip(" .")
    s = s.encode()[:max_bytes].decode(errors="ignore").strip(" .")
    return s or "class"


def _pixels_u8(images: torch.Tensor) -> torch.Tensor:
    """Pixels clamped to 0..1 and rounded to 8 bits (NCHW uint8), as exports store them."""
    return (_display(images) * 255).round().to(torch.uint8)


def _mark_export(folder: Path, info: dict) -> None:
    """The file that marks ``folder`` as a ddcli export (``--force`` replaces only such)."""
    import json

    (folder / EXPORT_MARKER).write_text(json.dumps(info, indent=1) + "\n")


def export_image_folder(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    out_dir: Path,
    force: bool = False,
    soft: torch.Tensor | None = None,
) -> list[str]:
    """Write DIR/<class>/<index>.png (pixels clamped to 0..1 and rounded to 8 bits), and
    ``DIR/metadata.jsonl`` in the Hugging Face imagefolder convention (``file_name``,
    ``label``, the class name, and ``soft_label`` when the bundle has soft labels), so that
    ``datasets.load_dataset("imagefolder", data_dir=DIR)`` reads the labels.

    Folder names are the class names made safe for a file system (and shortened), prefixed
    with the class index so that sorted order is the bundle's class order; the real names go in
    ``DIR/.ddcli-export``, which marks the folder as ddcli's: ``force`` replaces an existing
    folder only if it has that mark. Returns the folder names.
    """
    import json

    from PIL import Image

    width = len(str(len(classes) - 1))
    names = [f"{k:0{width}d}_{safe_name(c)}" for k, c in enumerate(classes)]
    pix = _pixels_u8(images)
    with atomic_dir(Path(out_dir), force, marker=EXPORT_MARKER) as tmp:
        _mark_export(tmp, {"format": "ddcli.export", "classes": list(classes),
                           "folders": names})
        for folder in names:
            (tmp / folder).mkdir()
        counters = [0] * len(classes)
        rows = []
        for i in range(pix.shape[0]):
            k = int(labels[i])
            arr = pix[i].permute(1, 2, 0).numpy()
            img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            name = f"{names[k]}/{counters[k]:05d}.png"
            img.save(tmp / name)
            counters[k] += 1
            row = {"file_name": name, "label": k, "class": classes[k]}
            if soft is not None:
                row["soft_label"] = [round(float(p), 6) for p in soft[i]]
            rows.append(json.dumps(row))
        (tmp / "metadata.jsonl").write_text("".join(r + "\n" for r in rows))
    return names


def export_shards(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    out_dir: Path,
    force: bool = False,
    soft: torch.Tensor | None = None,
) -> Path:
    """Write ddcli's own shard format: ``DIR/train.npz`` (``images`` uint8 NHWC, pixels
    clamped to 0..1 and rounded to 8 bits; ``labels`` int64; ``soft_labels`` float32 when
    present) and ``DIR/classes.json``: any tool (or ``ddcli distill/evaluate``) that reads
    shards reads the bundle. The folder is marked as ddcli's, like the PNG export."""
    import json

    import numpy as np

    pix = _pixels_u8(images).permute(0, 2, 3, 1).numpy()
    arrays = {"images": pix, "labels": labels.to(torch.int64).numpy()}
    if soft is not None:
        arrays["soft_labels"] = soft.float().numpy()
    with atomic_dir(Path(out_dir), force, marker=EXPORT_MARKER) as tmp:
        _mark_export(tmp, {"format": "ddcli.export.npz", "classes": list(classes)})
        np.savez_compressed(tmp / "train.npz", **arrays)
        (tmp / "classes.json").write_text(json.dumps(list(classes)) + "\n")
    return Path(out_dir) / "train.npz"
