"""Teachers: classifiers whose probabilities become soft labels.

A teacher is one safetensors file ddcli writes and reads: the model's weights under ``model.``,
and metadata with the registry name, its kwargs, the class list, input size and channels,
normalisation, the fingerprint of the data it was trained on, the training recipe, its
validation accuracy and a checksum.

``train_teacher`` fits one with a per-architecture recipe on a seeded split of the real data
(the rest is its validation set) and caches it under ``$DDCLI_CACHE/teachers`` by
(data fingerprint, architecture, recipe, seed), so the second call returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddcli import __version__
from ddcli.bundle import compute_checksum, utc_now
from ddcli.data import Dataset, NormalizedImages, normalize, resize_images
from ddcli.errors import InputError
from ddcli.io import read_safetensors, regular_file, write_safetensors
from ddcli.models import create_model
from ddcli.protocols import Protocol
from ddcli.runtime import cache_dir, cache_entry_errors, device_key

if TYPE_CHECKING:
    from ddcli.reporting import Reporter
from ddcli.seeding import SEED_SCHEME, derive_seed

FORMAT = "ddcli.teacher"
FORMAT_VERSION = 1

#: training recipes per architecture (CIFAR-sized data): standard augmentation, SGD + cosine.
RECIPES: dict[str, Protocol] = {
    arch: Protocol(
        name=f"teacher-{arch}", model=arch, epochs=epochs, batch_size=256, optimizer="sgd",
        lr=lr, momentum=0.9, weight_decay=5e-4, schedule="cosine", lr_milestones=(),
        augment="standard", loss="ce", labels="hard",
        reference="teacher recipe: SGD momentum 0.9, wd 5e-4, cosine, pad-4 crop + flip",
    )
    for arch, epochs, lr in (
        ("convnet", 30, 0.05),
        ("convnet-bn", 30, 0.05),
        ("resnet18", 30, 0.05),
        ("resnet18-bn", 30, 0.1),
    )
}
VAL_FRACTION = 0.1


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    data_fingerprint: str
    recipe: dict
    val_accuracy: float | None
    checksum: str = ""
    path: str | None = None
    #: the fingerprint of the whole real set this teacher's training images were cut from
    #: (``relabel --data`` before the bundle's subset), where it differs from data_fingerprint:
    #: recorded with the soft labels so that evaluate can refuse a teacher cut from its test set
    source_fingerprint: str | None = None

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        return {"path": self.path, "arch": self.arch, "checksum": self.checksum,
                "data_fingerprint": self.data_fingerprint, "val_accuracy": self.val_accuracy,
                "num_params": self.num_params, "recipe": self.recipe,
                **({"source_fingerprint": self.source_fingerprint}
                   if self.source_fingerprint else {})}

    def to(self, device) -> Teacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Logits for images (n, C, H, W) in 0..1; normalised and resized for this teacher:
        shrunk as the data loader and ``evaluate`` shrink images (antialiased,
        :func:`~ddcli.data.resize_images`), enlarged bilinearly (antialiasing changes nothing
        there)."""
        self.model.eval()
        dev = next(self.model.parameters()).device
        size = tuple(self.image_size)
        out = []
        for i in range(0, pixels.shape[0], chunk):
            x = pixels[i : i + chunk].to(dev).float()
            if x.shape[2] > size[0] or x.shape[3] > size[1]:
                x = resize_images(x, size)
            elif tuple(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out.append(self.model(normalize(x, self.mean, self.std)))
        return torch.cat(out)

    def probs(self, pixels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return torch.softmax(self.logits(pixels) / temperature, dim=-1)


def save_teacher(t: Teacher, path: Path) -> str:
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in t.model.state_dict().items()}
    t.checksum = compute_checksum(tensors)
    meta = {
        "ddcli.format": FORMAT, "ddcli.format_version": str(FORMAT_VERSION),
        "ddcli.version": __version__, "arch": t.arch, "classes": json.dumps(t.classes),
        "channels": str(t.channels), "image_size": json.dumps(list(t.image_size)),
        "mean": json.dumps(t.mean), "std": json.dumps(t.std),
        "data_fingerprint": t.data_fingerprint, "recipe": json.dumps(t.recipe),
        "val_accuracy": json.dumps(t.val_accuracy), "checksum": t.checksum,
        "created": utc_now(), "torch": torch.__version__,
        **({"source_fingerprint": t.source_fingerprint} if t.source_fingerprint else {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, tensors, meta)
    t.path = str(path)
    return t.checksum


def _teacher_metadata(meta: dict[str, str], path: Path) -> dict:
    """The teacher metadata's schema, parsed: one place for every field's kind."""
    def field(key: str, kind, what: str, check=lambda v: True):
        try:
            v = json.loads(meta[key]) if kind is not str else meta[key]
        except (KeyError, ValueError):
            raise InputError(f"{path}: teacher metadata {key!r} is missing or not JSON") from None
        if not (isinstance(v, kind) and not isinstance(v, bool) and check(v)):
            raise InputError(f"{path}: teacher metadata {key!r} must be {what}")
        return v

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    out = {
        "arch": field("arch", str, "a model name"),
        "classes": field("classes", list, "a list of at least two class names",
                         lambda v: len(v) >= 2 and all(isinstance(c, str) for c in v)),
        "channels": field("channels", int, "1 or 3", lambda v: v in (1, 3)),
        "image_size": field("image_size", list, "[height, width]",
                            lambda v: len(v) == 2 and all(isinstance(x, int) and x >= 1
                                                          for x in v)),
        "mean": field("mean", list, "a list of numbers", lambda v: all(map(number, v))),
        "std": field("std", list, "a list of positive numbers",
                     lambda v: all(number(x) and x > 0 for x in v)),
        "data_fingerprint": field("data_fingerprint", str, "a string"),
        "recipe": field("recipe", dict, "a JSON object"),
    }
    if len(out["mean"]) != out["channels"] or len(out["std"]) != out["channels"]:
        raise InputError(f"{path}: teacher metadata mean and std need one value per channel")
    try:
        acc = json.loads(meta.get("val_accuracy") or "null")
    except ValueError:
        acc = "bad"
    if acc is not None and not number(acc):
        raise InputError(f"{path}: teacher metadata 'val_accuracy' must be a number or null")
    out["val_accuracy"] = acc
    return out


def load_teacher(path: str | Path) -> Teacher:
    """Read and check a teacher file: format, version, checksum, metadata schema, and weights
    that fit the recorded architecture exactly."""
    with cache_entry_errors(path):
        return _load_teacher(path)


def _load_teacher(path: str | Path) -> Teacher:
    path = regular_file(path, "teacher")
    tensors, meta = read_safetensors(path, "ddcli teacher")
    if meta.get("ddcli.format") != FORMAT:
        raise InputError(f"{path} is not a ddcli teacher")
    try:
        version = int(meta.get("ddcli.format_version", "0"))
    except ValueError:
        raise InputError(f"{path}: bad teacher ddcli.format_version") from None
    if version > FORMAT_VERSION:
        raise InputError(f"{path} has a newer teacher format; upgrade ddcli")
    if compute_checksum(tensors) != meta.get("checksum"):
        raise InputError(f"{path}: checksum mismatch (the teacher file was modified)")
    m = _teacher_metadata(meta, path)
    classes, size, channels = m["classes"], tuple(m["image_size"]), m["channels"]
    model = create_model(m["arch"], len(classes), channels, size)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    foreign = sorted(set(tensors) - {f"model.{k}" for k in expected})
    missing = sorted(set(expected) - set(state))
    misfit = [k for k in expected if k in state and (state[k].shape != expected[k].shape
                                                    or state[k].dtype != expected[k].dtype)]
    if foreign or missing or misfit:
        what = (f"unexpected {foreign[0]!r}" if foreign else f"missing {missing[0]!r}"
                if missing else f"{misfit[0]!r} is {tuple(state[misfit[0]].shape)}, expected "
                f"{tuple(expected[misfit[0]].shape)}")
        raise InputError(f"{path}: its weights do not fit a {m['arch']} for {len(classes)} "
                         f"classes ({what})")
    model.load_state_dict(state)
    model.eval()
    return Teacher(model, m["arch"], classes, channels, size, m["mean"], m["std"],
                   m["data_fingerprint"], m["recipe"], m["val_accuracy"], meta["checksum"],
                   str(Path(path).absolute()),
                   source_fingerprint=meta.get("source_fingerprint") or None)


def teacher_cache_path(cache: Path, data: Dataset, recipe: Protocol, seed: int,
                       device: torch.device | str = "cpu") -> Path:
    key = json.dumps({"fingerprint": data.fingerprint, "recipe": recipe.to_dict(), "seed": seed,
                      "init": SEED_SCHEME,
                      "format": FORMAT_VERSION, **device_key(device)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache) / "teachers" / f"{recipe.model}-{digest}.safetensors"


def split_train_val(data: Dataset, seed: int, fraction: float = VAL_FRACTION):
    """A seeded per-class split: ``fraction`` of every class (at least 1 image) for validation.
    Returns the (train, val) row indices of ``data``."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in range(data.num_classes):
        idx = torch.nonzero(data.labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        k = max(1, int(round(idx.numel() * fraction))) if idx.numel() > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(val)


def train_teacher(
    data: Dataset,
    arch: str,
    *,
    device: torch.device,
    seed: int = 0,
    epochs: int | None = None,
    cache: Path | None = None,
    progress: Callable[..., None] | None = None,
    source_fingerprint: str | None = None,
) -> tuple[Teacher, bool]:
    """Train (or fetch from the cache) a teacher; returns (teacher, came_from_cache).
    ``source_fingerprint``: that of the whole data set ``data`` was cut from, kept with the
    teacher (its file, and this run's record of a cached one) for evaluate's leak check."""
    from ddcli.training import Ensemble, predict, train_ensemble

    if arch not in RECIPES:
        raise InputError(f"no teacher recipe for {arch!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[arch]
    if epochs is not None:
        if epochs < 1:
            raise InputError(f"--teacher-epochs must be >= 1, got {epochs}")
        recipe = dataclasses.replace(recipe, epochs=epochs)
    path = teacher_cache_path(cache, data, recipe, seed, device) if cache is not None else None
    if path is not None and path.exists():
        t = load_teacher(path).to(device)
        t.source_fingerprint = source_fingerprint or t.source_fingerprint
        return t, True

    mean, std = data.mean_std()
    train, val = split_train_val(data, seed)
    model = create_model(arch, data.num_classes, data.channels, data.image_size)
    model.reset_parameters(torch.Generator().manual_seed(derive_seed("teacher", seed)))
    ens = Ensemble([model], device)
    x = NormalizedImages(data, device, mean, std, rows=train)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    train_ensemble(ens, x, data.labels[train].to(device), recipe, gen, progress)
    val_acc = None
    if len(val):
        xv = NormalizedImages(data, device, mean, std, rows=val)
        hits = predict(ens, xv)[0] == data.labels[val].to(device)
        val_acc = round(float(hits.float().mean()) * 100, 2)
    if ens.vmapped:  # copy the trained stacked parameters back into the module
        state = {k: v[0].detach() for k, v in {**ens.params, **ens.buffers}.items()}
        model.load_state_dict(state)
    model = model.to(device).eval()
    t = Teacher(model, arch, list(data.classes), data.channels, data.image_size, mean, std,
                data.fingerprint, {**recipe.to_dict(), "seed": seed,
                                   "val_fraction": VAL_FRACTION}, val_acc,
                source_fingerprint=source_fingerprint)
    if path is not None:
        save_teacher(t, path)
    return t, False


def check_teacher(t: Teacher, classes: list[str], channels: int) -> None:
    """Refuse a teacher trained on other classes."""
    if t.classes != classes:
        raise InputError(
            f"teacher {t.path or t.arch} was trained on other classes ({len(t.classes)} classes "
            f"{t.classes[:3]}...) than the bundle's ({len(classes)} classes {classes[:3]}...)"
        )
    if t.channels != channels:
        raise InputError(f"teacher {t.path or t.arch} takes {t.channels}-channel images, the "
                         f"bundle has {channels}")


def check_distinct_archs(archs: list[str], flag: str) -> None:
    """Refuse an architecture named twice: the same data and seed train the same teacher, so
    the "ensemble" would average one model (before any teacher is trained)."""
    seen = set()
    for a in archs:
        if a.lower() in seen:
            raise InputError(f"{flag} {a} is given twice: the same data and seed train the same "
                             "teacher, so both would be one model")
        seen.add(a.lower())


def check_distinct_teachers(teachers: list[Teacher]) -> None:
    """Refuse the same teacher (equal checksums) given twice, as a file or trained."""
    seen: dict[str, Teacher] = {}
    for t in teachers:
        if t.checksum in seen:
            raise InputError(f"teacher {t.path or t.arch} is given twice (the same weights as "
                             f"{seen[t.checksum].path or seen[t.checksum].arch}): an average "
                             "of one model")
        seen[t.checksum] = t


def train_teachers(rep: Reporter, ds, archs: list[str], device: torch.device, seed: int,
                   epochs: int | None = None, source_fingerprint: str | None = None,
                   ) -> tuple[list, list[dict]]:
    """Train (or fetch cached) one teacher per architecture on ``ds``, with progress
    (``source_fingerprint``: :func:`train_teacher`'s)."""
    teachers, log = [], []
    for arch in archs:
        if arch not in RECIPES:
            raise InputError(f"no teacher recipe for {arch!r}; choose from {', '.join(RECIPES)}")
        t0 = time.perf_counter()
        epochs_ = epochs if epochs is not None else RECIPES[arch].epochs
        with rep.progress(f"teacher {arch}", epochs_, unit="epochs") as update:
            t, cached = train_teacher(ds, arch, device=device, seed=seed, epochs=epochs,
                                      cache=cache_dir(), progress=update,
                                      source_fingerprint=source_fingerprint)
        took = time.perf_counter() - t0
        rep.info(f"teacher {arch}: validation accuracy {t.val_accuracy}% "
                 f"({'cached' if cached else f'trained in {took:.1f} s'}) -> {t.path}")
        teachers.append(t)
        log.append({"teacher": t.path, "source": "cache" if cached else "trained",
                    "arch": arch, "val_accuracy": t.val_accuracy,
                    "train_time_s": None if cached else round(took, 2)})
    return teachers, log
