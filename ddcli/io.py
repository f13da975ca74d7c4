"""Files in and out: regular-file checks before anything is opened, and atomic writing (a
recognisable temporary name beside the output, renamed over it on success) so that an output is
never half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ddcli.errors import InputError

#: temporary files and folders are named ``.<output name>.ddcli-tmp-<pid>`` beside the output
TMP_TAG = ".ddcli-tmp-"
#: a temporary file of a live process older than this is stale all the same (pid reuse)
STALE_AFTER_S = 24 * 3600
_NAME_MAX = 255


# --------------------------------------------------------------------------------------------
# reading


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file (symlinks followed); else an :class:`InputError`.

    Called before a file is opened: a FIFO, a device or a socket would block or stream
    forever."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path} is a folder, not {_a(what)} file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file (a FIFO, device or socket); the "
                         f"{what} must be a file")
    return path


def _a(noun: str) -> str:
    """``noun`` with its indefinite article ("an expert trajectory")."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def read_safetensors(path: Path, what: str) -> tuple[dict, dict[str, str]]:
    """All tensors and the metadata of a safetensors file; an unreadable file is an
    :class:`InputError` naming ``what`` it should have been."""
    from safetensors import safe_open

    regular_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{path} cannot be read as {_a(what)} (safetensors): {e}") from None
    return tensors, meta


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold ``.<name>.ddcli-lock`` beside ``path`` while a run writes it: a second run with the
    same output (another shell, a CI job started twice) is refused at once instead of both
    running, overwriting each other's checkpoint, and the second failing at the end."""
    import fcntl

    path = Path(path)
    lock = path.with_name(fit_name(path.name, ".", ".ddcli-lock"))
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"another ddcli run is writing {path} (it holds {lock}); wait for "
                             "it to end or choose another output") from None
        try:  # the file locked is still the one at that name (a run ending deletes its lock:
            # a file opened just before that, locked just after, was no lock any more)
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def build_lock(lock: Path) -> Iterator[None]:
    """One builder of a cache entry at a time (two CI jobs, torchrun ranks, two shells): the
    others wait here, then find the entry built. The lock file stays, unless the entry is
    complete and every waiter checks for it once it holds the lock (deleting it otherwise would
    let a waiting process and a new one lock two files); ``cache clear`` leaves an entry whose
    lock is held (:func:`lock_held`)."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (Lustre noflock, some FUSE):
            if e.errno not in _NO_LOCKS:  # build as before there, unguarded
                raise
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: what flock says on a file system that has no locks
_NO_LOCKS = (errno.ENOSYS, errno.ENOTSUP, errno.ENOLCK, errno.EINVAL)


def lock_held(lock: Path) -> bool:
    """Whether a running process holds ``lock`` (:func:`build_lock`); False where locks cannot
    be taken at all."""
    import fcntl

    try:  # (for writing: an NFS client's flock is a byte-range lock, which needs it)
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, through ddcli's own temporary name (a killed write
    leaves a file that the next write of ``path`` removes): safetensors' ``save_file`` writes
    through a randomly named temporary file of its own, which a kill left behind for good."""
    from safetensors.torch import save

    atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


# --------------------------------------------------------------------------------------------
# temporary names


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(folder: Path) -> None:
    """Give the files and folders under ``folder`` the modes the umask allows (0644 / 0755
    under the usual 022): writers such as safetensors create 0600 files, which left a cache
    shared by a group unreadable to the others."""
    mask = _umask()
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def fit_name(name: str, before: str = "", after: str = "", room: int = 0) -> str:
    """``before + name + after`` for a file beside ``name``, with ``name`` shortened where the
    whole (and ``room`` more bytes) would be too long for the file system (with a hash of the
    full name, so two long names do not share the file)."""
    if len(os.fsencode(f"{before}{name}{after}")) + room <= _NAME_MAX:
        return f"{before}{name}{after}"
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    short = name
    while short and len(os.fsencode(f"{before}{short}~{digest}{after}")) + room > _NAME_MAX:
        short = short[:-1]
    return f"{before}{short}~{digest}{after}"


def _tmp_prefix(path: Path) -> str:
    """``.<name>.ddcli-tmp-``, shortened where need be (room for the pid and a kind)."""
    return fit_name(path.name, ".", TMP_TAG, room=24)


def tmp_path_for(path: Path, kind: str = "") -> Path:
    """The temporary name of ``path`` for this process (``kind`` tells uses apart)."""
    path = Path(path)
    return path.with_name(f"{_tmp_prefix(path)}{os.getpid()}{kind}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale_tmp(path: Path) -> list[Path]:
    """Remove temporary files and folders of ``path`` left by processes that died (SIGKILL, a
    power cut) or older than :data:`STALE_AFTER_S`; return what was removed.

    Also removes those of ddcli 0.2.0 and earlier (``.<name>.tmp-<pid>``) under the same rule.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefixes = (_tmp_prefix(path), f".{path.name}.tmp-")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None:
            continue
        tail = entry.name[len(prefix):]
        digits = tail.split("-", 1)[0]
        if not digits.isdigit():
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
        except OSError:
            continue
        pid = int(digits)
        if pid != os.getpid() and _pid_alive(pid) and not old:
            continue  # another process is writing this output now
        p = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------------------------
# writing


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (read 1 MiB at a time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(folder: Path) -> str:
    """The sha256 of a folder's files: each one's relative path ('/'-separated, sorted) and the
    sha256 of its bytes (a diffusers pipeline's weights and configs); ddcli's own marks
    (``.ddcli-*``) are left out, so a copy made by ``prior -o`` hashes as its original."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(folder).rglob("*")
                    if q.is_file() and not q.name.startswith(".ddcli-")):  # ddcli's own marks
        h.update(os.fsencode(p.relative_to(folder).as_posix()) + b"\0")
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def path_argument(name: str, value: object, optional: bool = False
                  ) -> str | os.PathLike | None:
    """A path argument of the Python API: a str or an os.PathLike (an int failed deep in
    pathlib), or None where ``optional``; ``~`` expanded as a shell would ("~/b.safetensors"
    was "output folder ~ does not exist"). A str stays a str: ``Path`` drops the trailing "/"
    of "runs/", which :func:`output_path` refuses."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name} must be a path (a str or Path), got {value!r}")
    expanded = os.path.expanduser(os.fspath(value))
    return expanded if isinstance(value, str) else Path(expanded)


def output_path(value: str | os.PathLike) -> Path:
    """An output file's path. A name that ends in a path separator (``-o runs/``) names a
    folder: refused (``Path`` drops the separator: such a run wrote a file named ``runs``)."""
    text = os.fspath(value)
    if text == "-":  # (a file named "-" was written)
        raise InputError("- is not a file: ddcli writes its outputs to files (--json prints the "
                         "report on stdout); name a file (one named - by its full path)")
    if text.endswith(("/", os.sep)):
        raise InputError(f"{text} names a folder; give a file name (e.g. {text}NAME)")
    try:  # (a name of other bytes was an internal error, or a bundle nothing could read back)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{text.encode('utf-8', 'backslashreplace').decode()}: the name is not "
                         "valid UTF-8 (safetensors reads no other names)") from None
    return Path(text)


def check_folder_writable(folder: Path, for_path: Path | None = None) -> None:
    """Refuse a missing or unwritable output folder before any work starts (a probe file with
    the output's temporary name is created and removed)."""
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.exists():
        raise InputError(f"output folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"output folder {folder} is not a folder")
    probe = tmp_path_for(for_path or folder / "out", "-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot write to output folder {folder}: {e.strerror or e}") from None


def check_writable(path: Path, force: bool, force_flag: str = "--force") -> None:
    """Refuse to overwrite ``path`` unless ``force``; check its folder exists and is writable.
    ``force_flag``: how the caller passes force (``force=True`` from Python)."""
    path = Path(path)
    if len(os.fsencode(path.name)) > _NAME_MAX:  # (is_dir raised an internal error on it)
        raise InputError(f"{path.name[:40]}...: the file name is {len(os.fsencode(path.name))} "
                         f"bytes long, more than the file system takes ({_NAME_MAX})")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a file")
    if path.exists() and not force:
        raise InputError(f"{path} already exists; pass {force_flag} to overwrite it")
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a regular file; ddcli will not replace it")
    check_folder_writable(path.parent, path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    Stale temporary files of ``path`` (from killed processes) are removed first.
    """
    path = Path(path)
    remove_stale_tmp(path)
    tmp = tmp_path_for(path)
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


def _entries(folder: Path, marker: str) -> list[str]:
    """Everything under ``folder`` but the mark: relative '/' paths, a folder's ending in '/'."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel != marker:
            out.append(rel + "/" if p.is_dir() and not p.is_symlink() else rel)
    return out


def _marked_entries(mark: Path) -> set[str] | None:
    """What the mark says ddcli wrote in its folder (None: it says nothing readable)."""
    try:
        files = json.loads(mark.read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return set(files) if isinstance(files, list) else None


#: the mark of a folder that ``experts -o`` / ``prior -o`` wrote: ``--force`` replaces only
#: such a folder (it replaced any, the input data set included)
COPY_MARKER = ".ddcli-copy"


def check_dir_replaceable(path: Path, force: bool, marker: str | None = None) -> None:
    """Refuse to write the folder ``path`` over a file, over a non-empty folder without
    ``force``, or (with ``marker``) over a non-empty folder that ddcli did not write, or that
    holds anything it did not write there (the mark lists what it wrote); and ``.`` / ``..``,
    which name no folder of their own (the current folder or its parent)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise InputError(f"{path} names no new folder (the current folder or "
                         "a parent); give the output folder a name")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise InputError(f"{path} exists and is not a folder")
        if any(path.iterdir()):
            if not force:
                raise InputError(f"{path} exists and is not empty; pass --force to replace it")
            if marker is not None and not (path / marker).is_file():
                raise InputError(
                    f"{path} is not a folder ddcli wrote (it has no {marker} file): --force "
                    "replaces only those; remove it yourself or choose another folder"
                )
            if marker is not None:
                listed = _marked_entries(path / marker)
                extra = [e for e in _entries(path, marker) if listed is None or e not in listed]
                if extra:
                    raise InputError(
                        f"{path} holds {path / extra[0]}, which ddcli did not write there: "
                        "--force replaces only a folder as ddcli wrote it; move that out or "
                        "choose another folder")
    check_folder_writable(path.parent, path)


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool, marker: str | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name, then move it into place.

    With ``marker`` (a file name) the folder is marked as ddcli's, and an existing non-empty
    folder is replaced only if it carries that mark."""
    path = Path(path)
    check_dir_replaceable(path, force, marker)
    remove_stale_tmp(path)
    tmp = tmp_path_for(path)
    old = tmp_path_for(path, "-old")
    tmp.mkdir()
    try:
        yield tmp
        if marker is not None:  # the mark lists what was written, so that --force later
            # replaces nothing else
            mark = tmp / marker
            try:
                info = json.loads(mark.read_text()) if mark.exists() else {}
            except ValueError:
                info = {}
            info = info if isinstance(info, dict) else {}
            info["files"] = _entries(tmp, marker)
            mark.write_text(json.dumps(info, indent=1) + "\n")
        if path.is_dir() and not path.is_symlink():
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old)
        else:
            if path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become null, never ``NaN``."""
    return json.dumps(_finite(obj), indent=indent, sort_keys=False, default=str,
                      allow_nan=False)
