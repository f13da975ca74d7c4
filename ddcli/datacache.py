"""Real sets larger than memory: a dataset converted once into a memory-mapped uint8 cache.

On first use (``distill --data-cache on``, or ``auto`` for a set of at least
:func:`auto_min_bytes` of pixels) the images of an npz-shard folder or an image folder are
decoded, brought to the working size and channels, and written to
``$DDCLI_CACHE/data/<key>/``, where ``key`` hashes what identifies the source (its files with
their sizes and modification times, the size and channels asked for):

    images.u8        the pixels, uint8 (N, C, H, W), in the source's order, no header
    bad.u8           one byte per row: its pixels could not be decoded (``--skip-bad``); if
                     any, the other rows are copied to ``images.kept.u8``, the set's file
    labels.npy       int64 (N,)
    class_index.npy  int64 (N,): the rows sorted by class (stable); class c's rows are
                     ``class_index[offsets[c] : offsets[c] + counts[c]]``
    digests.u8       (N, 32) sha256 of every image (for the dataset fingerprint)
    hist.u8          int64 (chunks, C, 256) pixel histograms per chunk (the normalisation)
    done.u8          one byte per chunk written: a killed build resumes where it stopped
    meta.json        written last; the cache is complete when it exists

Chunks (a shard, or a block of image files) are decoded and written by a pool of threads
(decoding, zlib and hashing release the GIL), each straight to its place in the file with
``pwrite``, so building never holds more than a few chunks. Reading maps the file
copy-on-write: the :class:`~ddcli.data.Dataset` sees an ordinary uint8 tensor, the fingerprint
and mean / std come from ``meta.json`` (nothing is read for them), and
:class:`~ddcli.methods.base.ClassPool` reads its real batches from the file image by image
(:meth:`MappedImages.gather`, ``pread``: nothing of the set is mapped into the process), so
resident memory stays flat however large the set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddcli.catalog import CACHE_MODES  # noqa: F401  (re-exported)
from ddcli.errors import DataError
from ddcli.io import build_lock

CACHE_VERSION = 1
#: the most bytes of decoded chunks a build holds at once (large shards: fewer threads)
BUILD_MEMORY = 512 << 20


def auto_min_bytes() -> int:
    """``--data-cache auto`` caches a set with at least this many bytes of pixels:
    ``$DDCLI_DATA_CACHE_MIN_BYTES``, default 1 GiB (CIFAR-10's 150 MB stays in memory)."""
    from ddcli.data import env_bytes

    env = env_bytes("DDCLI_DATA_CACHE_MIN_BYTES")
    return (1 << 30) if env is None else env


@dataclass
class Source:
    """A dataset as chunks to convert: ``read(i)`` gives chunk i's images as uint8
    (k, C, H, W) at the working size, rows ``chunks[i]`` of the set, and which of them could
    not be decoded (a (k,) bool mask, or None for none: those rows are left out of the set)."""

    key: dict
    name: str
    description: str
    classes: list[str]
    labels: np.ndarray
    shape: tuple[int, int, int]
    chunks: list[tuple[int, int]]
    read: Callable[[int], tuple[np.ndarray, np.ndarray | None]]
    #: the most bytes one chunk holds while converted (its decoded arrays): sizes the pool
    chunk_bytes: int = 0

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        c, h, w = self.shape
        return self.n * c * h * w


def cache_key(src: Source) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **src.key}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def file_key(paths: list[Path]) -> list[list]:
    """What identifies files without reading them: name, size, modification time, and change
    time (a file replaced by one of the same size whose modification time was kept, as
    ``cp -p``, ``rsync -a`` and ``tar -x`` keep it, differs only there; not the inode, which
    some network file systems do not keep stable)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return out


# --------------------------------------------------------------------------------------------
# building


def _open_sized(path: Path, size: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)  # sparse: the blocks arrive chunk by chunk
    return fd


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def build(src: Source, folder: Path, workers: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> None:
    """Convert ``src`` into ``folder`` (resuming a killed build); ``progress(rows, total)``."""
    from ddcli.data import (
        fingerprint_from_digests,
        image_digests,
        mean_std_from_hist,
        pixel_histogram,
    )

    folder.mkdir(parents=True, exist_ok=True)
    c, h, w = src.shape
    row = c * h * w
    n_chunks = len(src.chunks)
    done_path = folder / "done.u8"
    if not done_path.exists() or done_path.stat().st_size != n_chunks:
        done_path.write_bytes(bytes(n_chunks))
    done = np.memmap(done_path, dtype=np.uint8, mode="r+", shape=(n_chunks,))
    bad_path = folder / "bad.u8"
    if not bad_path.exists() or bad_path.stat().st_size != src.n:
        bad_path.write_bytes(bytes(src.n))
    bad = np.memmap(bad_path, dtype=np.uint8, mode="r+", shape=(src.n,)) if src.n else \
        np.zeros(0, dtype=np.uint8)
    hist_path = folder / "hist.u8"
    hist = np.memmap(hist_path, dtype=np.int64, mode="r+" if hist_path.exists() else "w+",
                     shape=(n_chunks, c, 256))
    fd = _open_sized(folder / "images.u8", src.n * row)
    dfd = _open_sized(folder / "digests.u8", src.n * 32)
    try:
        rows_done = sum(hi - lo for (lo, hi), d in zip(src.chunks, done, strict=True) if d)
        if progress:
            progress(rows_done, src.n)

        def convert(i: int) -> int:
            lo, hi = src.chunks[i]
            x, failed = src.read(i)
            x = np.ascontiguousarray(x, dtype=np.uint8)
            if x.shape != (hi - lo, c, h, w):
                raise DataError(f"{src.description}: chunk {i} gave {x.shape} images, "
                                f"expected {(hi - lo, c, h, w)}")
            if hi > lo:  # (an empty shard writes nothing)
                flat = x.reshape(hi - lo, row)
                _pwrite_all(fd, memoryview(flat).cast("B"), lo * row)
                _pwrite_all(dfd, memoryview(image_digests(x)).cast("B"), lo * 32)
            failed = np.zeros(hi - lo, dtype=bool) if failed is None else failed
            bad[lo:hi] = failed
            hist[i] = pixel_histogram(torch.from_numpy(x[~failed]))
            return i

        todo = [i for i in range(n_chunks) if not done[i]]
        if workers is None:  # enough to keep the cores busy, within BUILD_MEMORY at once
            workers = min(8, (os.cpu_count() or 2) + 1,
                          max(1, BUILD_MEMORY // max(src.chunk_bytes, 1)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i in pool.map(convert, todo):
                hist.flush()
                if src.n:
                    bad.flush()
                os.fdatasync(fd)
                os.fdatasync(dfd)
                done[i] = 1  # only once its pixels, digests and histogram are on disk
                done.flush()
                rows_done += src.chunks[i][1] - src.chunks[i][0]
                if progress:
                    progress(rows_done, src.n)
    finally:
        os.close(fd)
        os.close(dfd)
    keep = np.flatnonzero(np.asarray(bad) == 0)
    if src.n and not len(keep):
        raise DataError(f"{src.description}: none of its images could be decoded")
    images_file = "images.u8"
    if len(keep) < src.n:  # the rows that decoded, in order, in a file of their own
        images_file = "images.kept.u8"
        _copy_rows(folder / "images.u8", folder / images_file, keep, row)
    labels = src.labels.astype(np.int64)[keep]
    counts = np.bincount(labels, minlength=len(src.classes))
    order = np.argsort(labels, kind="stable")
    _save_synced(folder / "labels.npy", labels)  # (on disk before meta.json says complete:
    _save_synced(folder / "class_index.npy", order.astype(np.int64))  # a power loss left
    # an empty labels.npy under a complete meta.json)
    digests = np.fromfile(folder / "digests.u8", dtype=np.uint8).reshape(src.n, 32)[keep]
    mean, std = mean_std_from_hist(np.asarray(hist).sum(axis=0))
    meta = {"version": CACHE_VERSION, "name": src.name, "source": src.description,
            "classes": list(src.classes), "shape": [len(keep), c, h, w],
            "images_file": images_file, "skipped": int(src.n - len(keep)),
            "counts": counts.tolist(), "offsets": (np.cumsum(counts) - counts).tolist(),
            "fingerprint": fingerprint_from_digests(digests, labels, src.classes, (c, h, w)),
            "mean": mean, "std": std, "key": src.key}
    tmp = folder / "meta.json.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(folder / "meta.json")
    if images_file != "images.u8":
        (folder / "images.u8").unlink()


def _save_synced(path: Path, array: np.ndarray) -> None:
    """``np.save``, then the file's data on disk."""
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _copy_rows(src: Path, dst: Path, rows: np.ndarray, row: int, block: int = 64 << 20) -> None:
    """Write ``rows`` of the (N, row)-byte file ``src`` to ``dst`` one after the other, from
    scratch (a killed copy is redone whole: ``src`` is intact until the cache is complete)."""
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = _open_sized(dst, len(rows) * row)
    try:
        out = 0
        for run in runs:
            start, size = int(run[0]) * row, len(run) * row
            for off in range(0, size, block):
                data = os.pread(fd_in, min(block, size - off), start + off)
                _pwrite_all(fd_out, memoryview(data), out)
                out += len(data)
        os.fdatasync(fd_out)
    finally:
        os.close(fd_in)
        os.close(fd_out)


def ensure(src: Source, root: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """The complete cache folder of ``src`` under ``root``, built (or resumed) if need be."""
    folder = root / cache_key(src)
    if (folder / "meta.json").exists():
        return folder
    with build_lock(folder / ".lock"):  # one builder per entry: the others wait for it
        if not (folder / "meta.json").exists():
            build(src, folder, progress=progress)
    return folder


# --------------------------------------------------------------------------------------------
# reading


class MappedImages:
    """The cache's pixels: ``tensor`` (N, C, H, W) uint8 maps the file copy-on-write (read
    lazily, writable without touching the file); :meth:`gather` reads rows from the file."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int]):
        self.path = path
        self.shape = shape
        self._fd = os.open(path, os.O_RDONLY)
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.tensor = torch.from_numpy(np.frombuffer(mapping, dtype=np.uint8).reshape(shape))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def gather(self, rows: np.ndarray, pin: bool = False) -> torch.Tensor:
        """uint8 (len(rows), C, H, W) in memory (pinned with ``pin``, for a copy to a GPU), in
        the order of ``rows``: read with one ``pread`` per image, not through the mapping (a
        page fault there maps a whole large page-cache folio into the process: 320 random
        3 KB images mapped 460 MB, measured), so the process holds nothing of the set but the
        batch (2,560 images of 32 px: 7 ms)."""
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        flat = out.numpy().reshape(len(rows), -1)
        size = flat.shape[1]
        for i, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            if os.preadv(self._fd, [flat[i]], r * size) != size:
                raise DataError(f"{self.path}: short read at image {r} (file truncated?)")
        return out

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)


def open_dataset(folder: Path, source: str, name: str | None = None):
    """The cached set as a :class:`~ddcli.data.Dataset` over the mapping, named ``name`` (the
    folder the caller read: an entry is shared by every folder that holds the same files, by
    symbolic links, so the name it was built under may be another's) or the entry's."""
    from ddcli.data import Dataset

    try:  # a damaged entry failed with internal errors (exit 1) or a bare "No such file"
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(int(d) for d in meta["shape"])
        images = folder / meta.get("images_file", "images.u8")
        if images.stat().st_size != math.prod(shape):
            raise ValueError(f"{images.name} holds {images.stat().st_size} bytes, "
                             f"{math.prod(shape)} expected")
        labels = torch.from_numpy(np.load(folder / "labels.npy"))
        if labels.shape != shape[:1]:
            raise ValueError(f"{len(labels)} labels for {shape[0]} images")
        mapped = MappedImages(images, shape)
        ds = Dataset(mapped.tensor, labels, meta["classes"], name=name or meta["name"],
                     source=source, mapped=mapped)
        fingerprint, mean_std = meta["fingerprint"], (meta["mean"], meta["std"])
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:  # (np.load of an
        # empty file raises EOFError, which click turned into "interrupted", exit 130)
        raise DataError(f"the data cache entry {folder} is damaged ({e}); run 'ddcli cache "
                        "clear data' (or delete that folder) and it is built again") from None
    ds.__dict__["fingerprint"] = fingerprint  # cached_property values, not recomputed
    ds.__dict__["_mean_std"] = mean_std
    return ds


def skipped(folder: Path) -> int:
    """How many rows of the cached set were left out (their pixels could not be decoded)."""
    return int(json.loads((folder / "meta.json").read_text()).get("skipped", 0))
