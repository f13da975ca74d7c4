"""Atomic file writing: never leave a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ddcli.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: Path, force: bool) -> None:
    """Refuse to overwrite ``path`` unless ``force``; check its folder exists."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} already exists; pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise InputError(f"{path} is a folder, not a file")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # writers may create 0600 files; honour the umask
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool) -> Iterator[Path]:
    """Build a folder under a temporary name, then move it into place."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not force:
        raise InputError(f"{path} exists and is not empty; pass --force to replace it")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_safetensors(path: Path, what: str) -> tuple[dict, dict[str, str]]:
    """All tensors and the metadata of a safetensors file; an unreadable file is an
    :class:`InputError` naming ``what`` it should have been."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{path} cannot be read as a {what} (safetensors): {e}") from None
    return tensors, meta
