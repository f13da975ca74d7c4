"""The ddcli bundle: one versioned ``.safetensors`` file per distilled dataset.

Tensors: ``images`` (N, C, H, W) float32 or float16 in pixel scale (0..1 for real images;
synthetic images may leave that range and are never clamped), ``labels`` int64 (N,), optional
``soft_labels`` float32 (N, K) probabilities, and method-specific tensors under ``extra.``.

Metadata (string -> string, JSON where structured): see ``docs/bundle-format.md``.
Reading checks format, version, shapes, label range, class count and the checksum, and migrates
older format versions through :data:`MIGRATIONS`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ddcli import __version__
from ddcli.errors import BundleError, InputError, RunError
from ddcli.io import (
    check_writable,
    path_argument,
    read_safetensors,
    regular_file,
    write_safetensors,
)

FORMAT = "ddcli.bundle"
FORMAT_VERSION = 2
EXTRA_PREFIX = "extra."
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_JSON_KEYS = ("config", "dataset", "provenance")
#: the floating types read for images and soft labels (another tool's bfloat16 or float64
#: too); float8's have too few operations in torch to be checked or shown
READ_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as its users spell it: ``float32``, not ``torch.float32``."""
    return str(dtype).replace("torch.", "")


def _read_dtype_names() -> str:
    return ", ".join(map(dtype_name, READ_DTYPES))


@dataclass
class Bundle:
    """A distilled dataset and everything needed to trust and reuse it."""

    images: torch.Tensor
    labels: torch.Tensor
    soft_labels: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    method: str = ""
    config: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    seed: int | None = None
    created: str = ""
    torch_version: str = ""
    device: str = ""
    provenance: list = field(default_factory=list)
    ddcli_version: str = __version__
    checksum: str = ""
    checksum_ok: bool | None = None
    #: the same hash over the tensors alone (set on save and load): equal for two runs of the
    #: same seed on the same device, whose checksums differ by creation time and command line
    content_checksum: str = ""
    format_version: int = FORMAT_VERSION
    #: the format of the file it was read from (older ones are migrated on read)
    file_format_version: int = FORMAT_VERSION

    @property
    def metadata_checksummed(self) -> bool:
        """Whether the checksum covers the metadata too (format 2 and later)."""
        return self.file_format_version >= 2

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.get("classes", []))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def factor(self) -> int:
        """Multi-formation factor: each stored image holds factor×factor sub-images."""
        return int(self.config.get("factor") or 1)

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(images, labels, soft labels) with multi-formation images decoded."""
        from ddcli.formation import decode, decode_labels

        f = self.factor
        soft = None if self.soft_labels is None else decode_labels(self.soft_labels, f)
        return decode(self.images.float(), f), decode_labels(self.labels, f), soft

    @property
    def images_per_class(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    @property
    def ipc(self) -> int | None:
        """Images per class if every class has the same number, else None."""
        counts = set(self.images_per_class)
        return counts.pop() if len(counts) == 1 else None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images, "labels": self.labels}
        if self.soft_labels is not None:
            out["soft_labels"] = self.soft_labels
        for k, v in self.extras.items():
            out[EXTRA_PREFIX + k] = v
        return out

    def metadata(self) -> dict[str, str]:
        return {
            "ddcli.format": FORMAT,
            "ddcli.format_version": str(FORMAT_VERSION),
            "ddcli.version": self.ddcli_version,
            "method": self.method,
            "config": json.dumps(self.config, sort_keys=True),
            "dataset": json.dumps(self.dataset, sort_keys=True),
            "seed": "" if self.seed is None else str(self.seed),
            "created": self.created,
            "torch": self.torch_version,
            "device": self.device,
            "provenance": json.dumps(self.provenance),
            "checksum": self.checksum,
        }


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def compute_checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                     ) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order; with
    ``metadata`` (bundle format 2) also over every metadata field but ``checksum`` itself."""
    return checksums(tensors, metadata)[0]


def checksums(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
              ) -> tuple[str, str]:
    """(:func:`compute_checksum`, the same without ``metadata``) in one pass over the
    tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        # reshape: a 0-dim tensor (batch norm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    content = h.hexdigest()
    if metadata is not None:
        fields = {k: v for k, v in metadata.items() if k != "checksum"}
        h.update(b"\0metadata\0")
        h.update(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest(), content


def seal(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Put the checksum of ``tensors`` and ``metadata`` into ``metadata["checksum"]`` (a
    checkpoint's, an expert trajectory's): :func:`seal_broken` finds any byte changed since."""
    metadata["checksum"] = checksums(tensors, metadata)[0]


def seal_broken(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Whether a file's contents no longer match the checksum :func:`seal` put in its
    metadata (files written before there was one pass)."""
    recorded = metadata.get("checksum")
    return recorded is not None and recorded != checksums(tensors, metadata)[0]


def _check_consistency(b: Bundle, where: str) -> None:
    n = b.images.shape[0] if b.images.ndim == 4 else -1
    if b.images.ndim != 4:
        raise BundleError(f"{where}: images must be (N, C, H, W), got {tuple(b.images.shape)}")
    if b.images.dtype not in READ_DTYPES:  # (float8 failed later, as internal errors)
        raise BundleError(f"{where}: images must be {_read_dtype_names()}, got "
                          f"{dtype_name(b.images.dtype)}")
    if n == 0 or min(b.images.shape[1:]) < 1:
        raise BundleError(f"{where}: the bundle holds no images")
    if b.images.shape[1] not in (1, 3):  # what ddcli's data, models' stems and exports take
        raise BundleError(f"{where}: images must have 1 or 3 channels (greyscale or RGB), got "
                          f"{b.images.shape[1]}")
    if b.labels.dtype != torch.int64 or b.labels.shape != (n,):
        raise BundleError(f"{where}: labels must be int64 ({n},), got "
                          f"{dtype_name(b.labels.dtype)} "
                          f"{tuple(b.labels.shape)}")
    k = b.num_classes
    if k < 2:
        raise BundleError(f"{where}: the dataset metadata must list at least two classes")
    if n and (int(b.labels.min()) < 0 or int(b.labels.max()) >= k):
        raise BundleError(f"{where}: a label lies outside the {k} classes")
    if b.soft_labels is not None and b.soft_labels.dtype not in READ_DTYPES:
        raise BundleError(f"{where}: soft_labels must be {_read_dtype_names()}, got "
                          f"{dtype_name(b.soft_labels.dtype)}")
    if b.soft_labels is not None and tuple(b.soft_labels.shape) != (n, k):
        raise BundleError(
            f"{where}: soft_labels must be ({n}, {k}), got {tuple(b.soft_labels.shape)}"
        )
    _check_views(b, n, k, where)
    counts = b.dataset.get("class_counts")
    if counts is not None and len(counts) != k:
        raise BundleError(f"{where}: class_counts has {len(counts)} entries for {k} classes")
    c = b.dataset.get("channels")
    if c is not None and b.images.shape[1] != c:
        raise BundleError(f"{where}: images have {b.images.shape[1]} channels, metadata says {c}")
    for key in ("mean", "std"):  # the normalisation: one value per channel, std > 0
        v = b.dataset.get(key)
        if v is not None and len(v) != b.images.shape[1]:
            raise BundleError(f"{where}: dataset.{key} has {len(v)} values for "
                              f"{b.images.shape[1]} channels")
    if any(x <= 0 for x in b.dataset.get("std") or []):
        raise BundleError(f"{where}: dataset.std must be positive")
    try:
        f = b.factor
    except (TypeError, ValueError):
        f = None
    side = min(b.images.shape[2:])
    if f is None or not 1 <= f <= side:  # each stored image holds factor x factor sub-images
        raise BundleError(f"{where}: config.factor must be an integer from 1 to {side} (the "
                          f"images' side), got {b.config.get('factor')!r}")


#: the recorded augmentations of ``relabel --views K`` (extras): family (N, K) integers,
#: parameter rows u (N, K, slots) in [0, 1], soft labels (N, K, classes)
VIEW_KEYS = ("views.family", "views.u", "views.soft_labels")


def _check_views(b: Bundle, n: int, k: int, where: str) -> None:
    """The views' tensors: all three or none, of the images' count and the classes' width
    (a mismatch failed evaluate with an internal IndexError)."""
    from ddcli.augment import NUM_PARAMS

    have = [key for key in VIEW_KEYS if key in b.extras]
    if not have:
        return
    if len(have) < len(VIEW_KEYS):
        missing = next(key for key in VIEW_KEYS if key not in b.extras)
        raise BundleError(f"{where}: extra.{missing} is missing beside extra.{have[0]}")
    fam, u, soft = (b.extras[key] for key in VIEW_KEYS)
    v = fam.shape[1] if fam.ndim == 2 else -1
    want = {"views.family": (n, v), "views.u": (n, v, NUM_PARAMS),
            "views.soft_labels": (n, v, k)}
    for key, t in zip(VIEW_KEYS, (fam, u, soft), strict=True):
        if v < 1 or tuple(t.shape) != want[key]:
            raise BundleError(f"{where}: extra.{key} must be {want[key] if v >= 1 else '(N, K)'}"
                              f" for {n} images and {k} classes, got {tuple(t.shape)}")
    if fam.is_floating_point() or fam.dtype == torch.bool:
        raise BundleError(f"{where}: extra.views.family must be integers")
    if not (u.is_floating_point() and soft.is_floating_point()):
        raise BundleError(f"{where}: extra.views.u and extra.views.soft_labels must be floating "
                          "point")


def _probabilities(p: torch.Tensor) -> bool:
    """Finite, >= 0, summing to 1 along the last dimension."""
    p = p.float()
    return (bool(torch.isfinite(p).all()) and bool((p >= 0).all())
            and bool(((p.sum(-1) - 1).abs() < 1e-3).all()))


def _views_problem(b: Bundle) -> str | None:
    """Values of the views: family indexes the strategy's families, u in [0, 1], soft labels
    probabilities (out-of-range families trained unaugmented without a word)."""
    from ddcli.augment import views_families
    from ddcli.relabel import last_relabel_step

    if VIEW_KEYS[0] not in b.extras:
        return None
    fam, u, soft = (b.extras[key] for key in VIEW_KEYS)
    record = (last_relabel_step(b) or {}).get("views") or {}
    try:
        families = views_families(record)
    except ValueError as e:
        return f"the views' recorded strategy: {e}"
    if fam.numel() and (int(fam.min()) < 0 or int(fam.max()) >= len(families)):
        return (f"extra.views.family lies outside the {len(families)} augmentation families "
                f"({'_'.join(families)})")
    uf = u.float()
    if not (bool(torch.isfinite(uf).all()) and bool((uf >= 0).all()) and bool((uf <= 1).all())):
        return "extra.views.u lies outside [0, 1]"
    if not _probabilities(soft):
        return "extra.views.soft_labels are not probabilities (finite, >= 0, summing to 1)"
    return None


def value_problem(b: Bundle) -> str | None:
    """What is wrong with values a bundle ddcli writes always has right (another tool's may
    not): finite images, soft labels that are probabilities; None when nothing is."""
    if not bool(torch.isfinite(b.images).all()):
        return "the images are not finite"
    if b.soft_labels is not None and not _probabilities(b.soft_labels):
        return "soft_labels are not probabilities (finite, >= 0, each row summing to 1)"
    return _views_problem(b)


# names that promise another format: a bundle written as ``x.npz`` (accepted before) was
# read as an array shard by every tool, ddcli's own included
_FOREIGN_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".pkl", ".pickle", ".png", ".jpg", ".jpeg",
                     ".json", ".csv", ".txt", ".zip", ".tar", ".gz", ".h5", ".hdf5")


def check_bundle_name(path: str | Path) -> None:
    """Refuse a bundle file name whose suffix promises another format (``-o x.npz``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _FOREIGN_SUFFIXES:
        raise InputError(
            f"{path.name}: a bundle is a safetensors file, not {suffix[1:]}; name it "
            f"{path.stem}.safetensors"
            + (" (to get arrays or images, write the bundle, then 'ddcli inspect BUNDLE "
               "--export DIR --export-format npz' or png)" if suffix in (".npz", ".npy", ".png",
                                                                  ".jpg", ".jpeg") else ""))


def save_bundle(
    bundle: Bundle, path: str | Path, *, force: bool = False, dtype: str = "float32"
) -> str:
    """Write ``bundle`` atomically; return its checksum. Refuses to overwrite without force,
    and refuses (before writing) anything :func:`load_bundle` would refuse to read back. The
    caller's tensors are left as they are; its ``checksum``, ``content_checksum``, ``created``,
    ``ddcli_version`` and format fields are set to the file's (``created``: now; the version:
    this ddcli's, the writer's)."""
    if not isinstance(bundle, Bundle):
        raise InputError(f"save_bundle writes a ddcli Bundle, got {type(bundle).__name__}")
    path = Path(path_argument("path", path))
    check_bundle_name(path)
    check_writable(path, force, "force=True")  # (the commands check theirs before)
    if dtype not in STORAGE_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype}")
    labels = bundle.labels.detach().cpu()
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise InputError(f"not writing {path}: labels must be class indices (integers), got "
                         f"{labels.dtype} values that are not whole numbers")
    stored = replace(
        bundle,
        images=bundle.images.detach().cpu().to(STORAGE_DTYPES[dtype]).contiguous(),
        labels=labels.to(torch.int64).contiguous(),
        soft_labels=None if bundle.soft_labels is None
        else bundle.soft_labels.detach().cpu().float().contiguous(),
        extras={k: v.detach().cpu().contiguous() for k, v in bundle.extras.items()},
        # this file's: written now, by this ddcli (a re-saved bundle kept its first writer's)
        created=utc_now(), ddcli_version=__version__,
        torch_version=bundle.torch_version or torch.__version__,
        format_version=FORMAT_VERSION, file_format_version=FORMAT_VERSION, checksum="",
    )
    for name in ("images", "soft_labels"):
        t = getattr(stored, name)
        if t is not None and not bool(torch.isfinite(t).all()):
            given = getattr(bundle, name).detach()
            if name == "images" and dtype != "float32" and bool(torch.isfinite(given).all()):
                # finite as computed: the storage dtype's range overflowed
                top = float(given.abs().max())
                raise RunError(f"not writing {path}: the images reach {top:.3g}, beyond "
                               f"{dtype}'s range ({torch.finfo(STORAGE_DTYPES[dtype]).max:.5g});"
                               " write them with --dtype float32")
            raise RunError(f"not writing {path}: the {name.replace('_', ' ')} are not finite "
                           "(NaN or infinity)")
    # what load_bundle checks, before anything is written: a bundle it would refuse is lost
    try:
        meta = stored.metadata()
        for key in ("config", "dataset", "provenance"):
            json.loads(meta[key], parse_constant=_refuse_constant)
        _parse_metadata(meta, f"not writing {path}")
    except (TypeError, ValueError) as e:
        raise InputError(f"not writing {path}: its metadata is not plain JSON ({e})") from None
    _check_consistency(stored, f"not writing {path}")
    problem = value_problem(stored)
    if problem:
        raise InputError(f"not writing {path}: {problem}")
    tensors = stored.tensors()
    stored.checksum, stored.content_checksum = checksums(tensors, meta)
    write_safetensors(path, tensors, stored.metadata())
    for name in ("checksum", "content_checksum", "created", "torch_version", "ddcli_version",
                 "format_version", "file_format_version"):
        setattr(bundle, name, getattr(stored, name))
    bundle.checksum_ok = True
    return bundle.checksum


def _refuse_constant(name: str):
    """json's hook for NaN / Infinity, which strict JSON readers refuse."""
    raise ValueError(f"{name} is not a JSON number")


# --------------------------------------------------------------------------------------------
# reading and migration


def _check_header(header: object, path: Path, size: int, n: int) -> None:
    """The safetensors header's schema: an object of tensor entries (dtype, shape,
    data_offsets within the file) and string metadata."""
    if not isinstance(header, dict):
        raise BundleError(f"{path} is not a ddcli bundle (its header is not a JSON object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(
                    isinstance(v, str) for v in entry.values()):
                raise BundleError(f"{path}: the metadata must map names to strings")
            continue
        ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(_is_count(d) for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 \
            and all(_is_count(o) for o in offsets) and offsets[0] <= offsets[1]
        if not ok:
            raise BundleError(f"{path}: header entry {key!r} needs a dtype, a shape and "
                              "data_offsets")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise BundleError(f"{path} is truncated ({size} bytes, header needs {8 + n + end})")


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        regular_file(path, "bundle")
    except InputError as e:
        raise BundleError(str(e)) from None
    size = path.stat().st_size
    not_bundle = f"{path} is not a ddcli bundle (not a safetensors file)"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BundleError(not_bundle)
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise BundleError(not_bundle)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise BundleError(not_bundle) from None
    _check_header(header, path, size, n)
    try:
        return read_safetensors(path, "bundle")
    except InputError as e:
        raise BundleError(str(e)) from None


def _migrate_v0(tensors: dict, meta: dict) -> tuple[dict, dict]:
    """v0 (the draft layout of methods.md §7) -> v1.

    v0 stored ``labels_hard`` / ``labels_soft`` and one JSON string under ``metadata`` holding
    method, config, dataset, seed and created; it had no checksum.
    """
    tensors = dict(tensors)
    if "labels_hard" in tensors:
        tensors["labels"] = tensors.pop("labels_hard").to(torch.int64)
    if "labels_soft" in tensors:
        tensors["soft_labels"] = tensors.pop("labels_soft").float()
    try:
        old = json.loads(meta.get("metadata") or "{}")
    except ValueError:
        old = None
    if not isinstance(old, dict):
        raise BundleError("its v0 'metadata' field is not a JSON object")
    new = {
        "ddcli.format": FORMAT,
        "ddcli.format_version": "1",
        "ddcli.version": meta.get("ddcli.version", "0"),
        "method": str(old.get("method", "")),
        "config": json.dumps(old.get("config", {})),
        "dataset": json.dumps(old.get("dataset", {})),
        "seed": str(old.get("seed", "")),
        "created": str(old.get("created", "")),
        "torch": str(old.get("torch", "")),
        "device": str(old.get("device", "")),
        "provenance": json.dumps(_as_list(old.get("provenance"))
                                 + [{"command": "migrate v0->v1"}]),
        "checksum": compute_checksum(tensors),
    }
    return tensors, new


def _as_list(x: object) -> list:
    return x if isinstance(x, list) else []


def _migrate_v1(tensors: dict, meta: dict) -> tuple[dict, dict]:
    """v1 -> v2: the layout is the same; v1's checksum covers the tensors only (which
    :func:`load_bundle` checks as such, with a warning that the metadata was not covered)."""
    return tensors, {**meta, "ddcli.format_version": "2"}


#: format version -> function migrating a (tensors, metadata) pair one version up.
MIGRATIONS: dict[int, Callable[[dict, dict], tuple[dict, dict]]] = {
    0: _migrate_v0, 1: _migrate_v1,
}


def _parse_metadata(meta: dict[str, str], where: str) -> dict:
    """The metadata's schema: JSON fields of the right kinds, an integer seed, a dataset
    record whose class names, counts, size and normalisation have the right types."""
    parsed = {}
    for key, default, kind in (("config", "{}", dict), ("dataset", "{}", dict),
                               ("provenance", "[]", list)):
        try:
            value = json.loads(meta.get(key) or default)
        except ValueError:
            raise BundleError(f"{where}: the {key} metadata is not valid JSON") from None
        if not isinstance(value, kind):
            raise BundleError(f"{where}: the {key} metadata must be a JSON "
                              f"{'object' if kind is dict else 'list'}")
        parsed[key] = value
    if not all(isinstance(step, dict) for step in parsed["provenance"]):
        raise BundleError(f"{where}: every provenance step must be a JSON object")
    seed = meta.get("seed") or ""
    if seed and not (seed.isdecimal() or (seed[0] == "-" and seed[1:].isdecimal())) or \
            len(seed) > 40:  # (thousands of digits: Python's int() refused, an internal error)
        raise BundleError(f"{where}: the seed metadata must be an integer, got {seed[:40]!r}")
    parsed["seed"] = int(seed) if seed else None
    d = parsed["dataset"]

    def bad(key: str, what: str):
        return BundleError(f"{where}: dataset.{key} must be {what}")

    classes = d.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of class names")
    from ddcli.data import nfc, nfc_duplicate

    twice = nfc_duplicate(classes)
    if twice:  # (as the data readers refuse: exports of such a bundle read back under other
        # names, or not at all)
        spellings = {c for c in classes if nfc(c) == twice}
        raise bad("classes", f"distinct names (it names {twice!r} twice"
                  + ("" if len(spellings) == 1 else ", once composed, once decomposed") + ")")
    counts = d.get("class_counts")
    if counts is not None and not (isinstance(counts, list) and all(map(_is_count, counts))):
        raise bad("class_counts", "a list of counts")
    if d.get("channels") is not None and not (_is_count(d["channels"]) and d["channels"] >= 1):
        raise bad("channels", "a positive integer")
    size = d.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_is_count(v) and v >= 1 for v in size)):
        raise bad("image_size", "[height, width]")
    for key in ("mean", "std"):
        v = d.get(key)
        if v is not None and not (isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in v)):
            raise bad(key, "a list of numbers")
    for key in ("name", "fingerprint", "source"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise bad(key, "a string")
    if d.get("subset") is not None and not isinstance(d["subset"], dict):
        raise bad("subset", "an object")
    factor = parsed["config"].get("factor")
    if factor is not None and not (_is_count(factor) and factor >= 1):
        raise BundleError(f"{where}: config.factor must be a positive integer")
    return parsed


def load_bundle(path: str | Path, *, verify: bool = True,
                warn: Callable[[str], None] | None = None, values: bool = True) -> Bundle:
    """Read and check a bundle. With ``verify`` a checksum mismatch is an error; without it,
    ``Bundle.checksum_ok`` tells the result. With ``values``, non-finite images or soft labels
    that are not probabilities are an error (:func:`value_problem`). ``warn`` hears that an
    older bundle's metadata was not covered by its checksum."""
    path = Path(path_argument("path", path))
    for name, value in (("verify", verify), ("values", values)):
        if not isinstance(value, bool):  # ("no" is true: it verified)
            raise InputError(f"{name} must be True or False, got {value!r}")
    tensors, meta = _read_raw(path)
    if meta.get("ddcli.format") != FORMAT:
        raise BundleError(f"{path} is not a ddcli bundle (no ddcli.format metadata)")
    try:
        version = int(meta.get("ddcli.format_version", ""))
    except ValueError:
        raise BundleError(f"{path}: bad ddcli.format_version") from None
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format {version}, newer than this ddcli ({__version__}) reads "
            f"(format {FORMAT_VERSION}); upgrade ddcli"
        )
    if version < 0:
        raise BundleError(f"{path}: bad ddcli.format_version")
    file_version, file_meta = version, meta
    while version < FORMAT_VERSION:
        try:
            tensors, meta = MIGRATIONS[version](tensors, meta)
        except BundleError as e:
            raise BundleError(f"{path}: {e}") from None
        version += 1
    for name in ("images", "labels"):
        if name not in tensors:
            raise BundleError(f"{path} lacks the {name!r} tensor")
    parsed = _parse_metadata(meta, str(path))
    b = Bundle(
        images=tensors["images"],
        labels=tensors["labels"],
        soft_labels=tensors.get("soft_labels"),
        extras={k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)},
        method=meta.get("method", ""),
        config=parsed["config"],
        dataset=parsed["dataset"],
        seed=parsed["seed"],
        created=meta.get("created", ""),
        torch_version=meta.get("torch", ""),
        device=meta.get("device", ""),
        provenance=parsed["provenance"],
        ddcli_version=meta.get("ddcli.version", ""),
        checksum=meta.get("checksum", ""),
        file_format_version=file_version,
    )
    covers_metadata = file_version >= 2
    expected, b.content_checksum = checksums(tensors, file_meta if covers_metadata else None)
    b.checksum_ok = expected == b.checksum
    if verify and not b.checksum_ok:
        raise BundleError(f"{path}: checksum mismatch (the file was modified or damaged)")
    _check_consistency(b, str(path))
    # ``values``: refuse a bundle whose values are wrong (inspect shows one), whether or not
    # its checksum was verified (``verify=False`` skipped them: NaN images reached training)
    problem = value_problem(b) if values else None
    if problem:
        raise BundleError(f"{path}: {problem}")
    if file_version == 0 and warn is not None:  # (its checksum is computed on reading)
        warn(f"{path} is a bundle of format 0: it has no checksum, so nothing in it can be "
             "verified")
    elif not covers_metadata and warn is not None:
        warn(f"{path} is a bundle of format {file_version}: its checksum covers the tensors "
             "only, not the metadata (class names, dataset, config, provenance)")
    return b
