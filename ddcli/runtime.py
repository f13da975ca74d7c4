"""Process-level tuning done once at CLI start-up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in the process instead of returning them to the OS (glibc).

    A distillation step allocates and frees activations of hundreds of MB. By default glibc
    serves blocks above 32 MB with mmap and unmaps them on free, so every step page-faults them
    in again; measured on a 2-core machine this doubles the time of a ConvNet forward pass.
    Raising the mmap and trim thresholds removes that. ``DDCLI_NO_MALLOPT=1`` skips it.
    Returns whether the tuning was applied.
    """
    if sys.platform != "linux" or os.environ.get("DDCLI_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    ok = libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok
    return ok


def cache_dir(write: bool = True) -> Path:
    """Where teachers, experts and priors are cached: $DDCLI_CACHE or ~/.cache/ddcli; one that
    exists and is not a folder is refused (the work was done, then its writing failed), and so
    is one that cannot be written (``write``: the caller fills it; checked before the work,
    where a read-only cache failed after it, in an internal error)."""
    from ddcli.errors import InputError

    path = Path(os.environ.get("DDCLI_CACHE") or Path.home() / ".cache" / "ddcli")
    if path.exists() and not path.is_dir():
        raise InputError(f"the cache {path} ($DDCLI_CACHE) is not a folder")
    if write:
        nearest = path
        while not nearest.exists() and nearest != nearest.parent:  # the folder to be made in
            nearest = nearest.parent
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise InputError(f"the cache {path} ($DDCLI_CACHE) cannot be written ({nearest} is "
                             "read-only for this user); point $DDCLI_CACHE to a writable folder")
    return path


#: the caches under :func:`cache_dir`, one folder each: what fills them
CACHES: dict[str, str] = {
    "teachers": "trained teachers (relabel --train-teacher, distill --relabel)",
    "experts": "expert trajectories (ddcli experts, distill -m tgdd) and csdm's network pools",
    "priors": "diffusion priors (ddcli prior, distill -m otgen)",
    "features": "backbone features of real data (distill -m sfm / lgm)",
    "data": "memory-mapped uint8 copies of real sets (distill --data-cache)",
}


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            files += 1
            total += p.stat().st_size
    return files, total


def cache_usage() -> list[dict]:
    """Each cache: name, path, entries (items at its top level), files, bytes."""
    root = cache_dir(write=False)
    out = []
    for name, what in CACHES.items():
        path = root / name
        entries = [p for p in sorted(path.iterdir()) if p.suffix != ".lock"] \
            if path.is_dir() else []  # (a prior's build lock beside it is no entry)
        files, size = _size(path) if path.is_dir() else (0, 0)
        out.append({"name": name, "path": str(path), "holds": what,
                    "entries": len(entries), "files": files, "bytes": size})
    return out


def clear_cache(name: str | None = None) -> list[dict]:
    """Delete one cache (or all of them); return what was removed (name, entries, bytes, and
    ``in_use``: the entries left because a running process is building them). Only the cache
    folders are touched, nothing else under the cache directory."""
    import shutil

    from ddcli.errors import InputError
    from ddcli.io import lock_held

    if name is not None and name not in CACHES:
        raise InputError(f"unknown cache {name!r}; choose from {', '.join(CACHES)}")
    removed = []
    for usage in cache_usage():
        if name is not None and usage["name"] != name:
            continue
        path = Path(usage["path"])
        in_use = []
        if path.is_dir():  # (a cache moved to another disk by a link: its contents)
            for child in sorted(path.iterdir()):
                # an entry being built (its lock held: a data cache's own .lock, a prior's
                # <key>.lock beside it) is left: deleting it ended that run with an error
                key = child.name.split(".")[0]
                if lock_held(child / ".lock") or lock_held(path / f"{key}.lock"):
                    in_use.append(child.name)
                elif child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            if not in_use and not path.is_symlink():
                path.rmdir()
        removed.append({**{k: usage[k] for k in ("name", "path", "entries", "bytes")},
                        "in_use": in_use})
    return removed


@contextlib.contextmanager
def cache_entry_errors(path: str | Path) -> Iterator[None]:
    """Refusals of a file or folder inside one of the caches (a damaged teacher, expert
    trajectory or prior) end with the remedy, which they did not say: clear that cache and the
    next run builds the entry again. Files outside the caches (``--teacher F``) are unchanged."""
    from ddcli.errors import InputError

    try:
        yield
    except InputError as e:
        try:
            rel = Path(path).resolve().relative_to(cache_dir(write=False).resolve())
        except Exception:  # outside the caches, or no usable cache folder
            raise e from None
        if not rel.parts or rel.parts[0] not in CACHES:
            raise
        raise type(e)(f"{e} (a damaged cache entry: run 'ddcli cache clear {rel.parts[0]}' "
                      "and the next run builds it again)") from None


def device_key(device: Any) -> dict[str, str]:
    """What a cache key adds for the device that builds the entry: its kind (``cuda``), so
    that experts, teachers, priors or features built on a GPU (other random streams, other
    rounding) are never reused by a run on a CPU, whose bundle would then depend on what the
    cache held. Nothing for the CPU: CPU caches keep the keys they had."""
    kind = str(device).split(":")[0]
    return {} if kind == "cpu" else {"device": kind}


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def is_compile_failure(e: Exception) -> bool:
    """An error of torch.compile's machinery (no C++ compiler, a backend failure), as opposed
    to an error of the model's own arithmetic: the caller falls back to eager."""
    import subprocess

    mod = type(e).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or isinstance(
        e, (OSError, subprocess.CalledProcessError))


@contextlib.contextmanager
def stop_signals() -> Iterator[dict[str, bool]]:
    """Within it, Ctrl-C (SIGINT) or SIGTERM (``timeout``, a batch scheduler, torchrun passing
    one on) sets ``flag["flag"]`` instead of ending the process: a training loop finishes its
    step, saves a checkpoint and stops (in the main thread; elsewhere nothing changes)."""
    flag = {"flag": False}

    def on_signal(signum, frame) -> None:
        flag["flag"] = True

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
