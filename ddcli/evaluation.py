"""Judging a distilled set: train fresh models on it under a protocol, test them, report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ddcli import augment
from ddcli.bundle import Bundle
from ddcli.data import (
    Dataset,
    NormalizedImages,
    cap_per_class,
    denormalize,
    make_long_tailed,
    nfc,
    normalize,
)
from ddcli.errors import InputError
from ddcli.protocols import Protocol
from ddcli.relabel import apply_tau, last_relabel_step, mean_probs
from ddcli.seeding import derive_seed
from ddcli.teachers import Teacher, check_teacher, load_teacher
from ddcli.training import (
    Views,
    accuracy_report,
    build_ensemble,
    predict,
    should_compile,
    train_ensemble,
)

if TYPE_CHECKING:
    from ddcli.distributed import DistContext


def check_classes(bundle: Bundle, test: Dataset, what: str = "test") -> None:
    """The bundle's classes must be the test classes: same names (compared Unicode-normalised:
    a bundle written before folder names were NFC-normalised keeps a Mac's spelling), same
    order."""
    ours = [nfc(c) for c in bundle.classes]
    theirs = [nfc(c) for c in test.classes]
    if ours != theirs:
        if sorted(ours) == sorted(theirs):
            raise InputError(f"the {what} data lists the bundle's classes in another order; "
                             "labels would be mixed up")
        missing = [c for c in ours if c not in theirs]
        extra = [c for c in theirs if c not in ours]
        raise InputError(
            f"the {what} classes do not match the bundle's ({len(theirs)} vs "
            f"{len(ours)}; missing {missing[:3]}, unexpected {extra[:3]})"
        )


def same_subset(real: Dataset, subset: dict) -> Dataset:
    """Apply a bundle's recorded subset (per-class cap, long-tailed profile, seed) to real data,
    so baselines draw from the data the bundle was distilled from."""
    seed = int(subset.get("subset_seed", 0))
    if subset.get("max_per_class"):
        real = cap_per_class(real, int(subset["max_per_class"]), seed)
    if subset.get("imbalance_factor"):
        real = make_long_tailed(real, float(subset["imbalance_factor"]), seed)
    return real


def as_distilled(real: Dataset, bundle, warn: Callable[[str], None], what: str) -> Dataset:
    """``real`` cut to the bundle's recorded subset (:func:`same_subset`), with a warning where
    it is still not the data the bundle was distilled from (its fingerprint differs)."""
    real = same_subset(real, bundle.dataset.get("subset") or {})
    if real.fingerprint != bundle.dataset.get("fingerprint"):
        warn(f"the {what} is not the data the bundle was distilled from "
             "(fingerprints differ)")
    return real


def model_seeds(seed: int, n: int) -> list[int]:
    """Initialisation seeds of the ``n`` evaluated models: the ``eval`` stream, disjoint from the
    seeds of experts, teachers and pool networks (ddcli.seeding)."""
    return [derive_seed("eval", seed, i) for i in range(n)]


def random_real_subset(real: Dataset, ipc: int, seed: int) -> Dataset:
    """``ipc`` random real images per class (seeded), the baseline of every method; a class
    with fewer images gives all it has."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(real.num_classes):
        idx = torch.nonzero(real.labels == c).flatten()
        if idx.numel() == 0:
            raise InputError(f"the real data has no image of class {real.classes[c]!r}")
        keep.append(idx[torch.randperm(idx.numel(), generator=gen)[:ipc]])
    return real.select(torch.cat(keep), random_ipc=ipc, random_seed=seed)


def teachers_for(bundle: Bundle, files: list[Path], device: torch.device) -> list[Teacher]:
    """The teachers behind a bundle's soft labels: ``files`` if given, else the teacher files
    its last relabel step names (when they still exist with the same checksum)."""
    if files:
        teachers = [load_teacher(f) for f in files]
    else:
        step = last_relabel_step(bundle)
        if step is None:
            raise InputError("this protocol needs teachers: pass --teacher FILE")
        teachers = []
        for rec in step["teachers"]:
            path = rec.get("path")
            if not path or not Path(path).is_file():
                raise InputError(f"teacher {path or rec.get('arch')} of the bundle's soft labels"
                                 " is not on this machine: pass --teacher FILE")
            t = load_teacher(path)
            if t.checksum != rec.get("checksum"):
                raise InputError(f"teacher {path} changed since the bundle was relabelled "
                                 "(checksum differs): pass --teacher FILE")
            teachers.append(t)
    for t in teachers:
        check_teacher(t, bundle.classes, int(bundle.images.shape[1]))
    return [t.to(device) for t in teachers]


def check_no_test_leak(bundle: Bundle, teachers: list[Teacher], test: Dataset) -> None:
    """Refuse soft labels or teachers that come from a teacher trained on the test data, or
    on a subset cut from it (``relabel --data TEST``: the teacher learns the bundle's subset of
    it, whose fingerprint is not the test set's; the whole --data's is recorded beside).
    Only the last relabel step's teachers made the soft labels (and views) the bundle holds:
    a relabel replaces them all, so an earlier step's teachers leave nothing behind."""
    step = last_relabel_step(bundle)
    recorded = list((step or {}).get("teachers", []))
    recorded += [t.describe() for t in teachers]
    for t in recorded:
        if t.get("data_fingerprint") == test.fingerprint:
            raise InputError("a teacher behind these soft labels was trained on the test data "
                             "(same fingerprint); its labels would leak the test set")
        if t.get("source_fingerprint") == test.fingerprint:
            raise InputError("a teacher behind these soft labels was trained on images cut "
                             "from the test data (its relabel --data had the test data's "
                             "fingerprint); its labels would leak the test set")


def views_from(extras: dict[str, torch.Tensor], step: dict | None) -> Views | None:
    """Recorded views from ``extra.views.*`` tensors and the relabel step that made them."""
    if "views.u" not in extras:
        return None
    rec = (step or {}).get("views") or {}
    return Views(augment.views_families(rec), bool(rec.get("all_families", True)),
                 extras["views.family"], extras["views.u"].float(),
                 extras["views.soft_labels"].float())


def bundle_views(bundle: Bundle) -> Views | None:
    return views_from(bundle.extras, last_relabel_step(bundle))


def online_teacher(teachers: list[Teacher], mean: list[float], std: list[float],
                   temperature: float, calibration: dict | None = None,
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``kd-online`` target: normalised batch -> the teachers' mean probabilities at
    ``temperature``, calibrated as the bundle's soft labels were (``calibration``: the relabel
    step's ``calibrate`` record, e.g. ADSA's τ and class prior), so ``kd`` and ``kd-online``
    learn from the same teacher distribution."""
    tau = float((calibration or {}).get("tau") or 0.0)
    prior = torch.tensor((calibration or {}).get("prior") or [1.0])

    def fn(batch: torch.Tensor) -> torch.Tensor:
        p = mean_probs(teachers, denormalize(batch, mean, std), temperature)
        return apply_tau(p, prior, tau) if tau else p

    return fn


def evaluate_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: list[float],
    std: list[float],
    test: Dataset,
    protocol: Protocol,
    num_models: int,
    seed: int,
    device: torch.device,
    progress: Callable[..., None] | None = None,
    test_progress: Callable[[int, int], None] | None = None,
    soft: torch.Tensor | None = None,
    views: Views | None = None,
    teachers: list[Teacher] | None = None,
    temperature: float = 1.0,
    class_counts: list[int] | None = None,
    calibration: dict | None = None,
    compile: str = "auto",
    amp: str = "off",
    dist: DistContext | None = None,
) -> dict:
    """Train ``num_models`` fresh models on pixel-scale ``images`` and test them on ``test``.

    With ``dist`` (under torchrun) each process trains and tests its block of the models (the
    random draws made for all of them, so every model trains as in one process) and the
    predictions are gathered: every process returns the whole report.

    ``soft`` / ``views`` feed the soft-label losses; ``teachers`` run on every augmented batch
    for ``kd-online``, with the relabel step's ``calibration`` (ADSA τ) applied.
    ``progress(epoch)`` follows the training, ``test_progress(done, total)`` the test
    prediction (chunks of test images)."""
    c = images.shape[1]
    x = normalize(images.to(device), mean, std)
    y = labels.to(device)
    seeds = model_seeds(seed, num_models)
    lo, hi = dist.classes(num_models) if dist is not None else (0, num_models)  # same blocks
    ens = build_ensemble(protocol, test.num_classes, c, tuple(images.shape[2:]), seeds[lo:hi],
                         device)
    if should_compile(compile, ens, protocol, int(images.shape[0]), amp):
        ens.compile()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    teacher_fn = None
    if protocol.loss == "kd-online":
        teacher_fn = online_teacher(teachers, mean, std, protocol.temperature or temperature,
                                    calibration)

    result = train_ensemble(
        ens, x, y, protocol, gen, progress,
        soft=soft.to(device).float() if soft is not None else None,
        views=views.to(device) if views is not None else None,
        teacher=teacher_fn, temperature=temperature, amp=amp,
        models_total=num_models, own=(lo, hi),
    )
    test_x = NormalizedImages(test, device, mean, std)  # uint8 until each chunk
    preds = predict(result.ensemble, test_x, progress=test_progress)
    train_s = result.train_time_s
    if dist is not None:  # every process's predictions, in model order (exchanged as they are)
        full = preds.new_zeros((num_models, *preds.shape[1:]))
        full[lo:hi] = preds
        preds = dist.gather_classes(full, num_models)
        train_s = float(dist.all_reduce(torch.tensor([train_s], dtype=torch.float64), "max"))
    report = accuracy_report(preds, test.labels.to(device), test.num_classes, class_counts)
    report.update(
        model_seeds=seeds,
        train_time_s=round(train_s, 3),
        train_time_per_model_s=round(train_s / num_models, 3),
        train_steps=result.steps,
        batched=result.ensemble.vmapped,
        execution=(("stacked, one model after another"
                    + (", compiled" if result.ensemble.compiled else "")
                    if result.ensemble.serial else "stacked, vmap")
                   if result.ensemble.vmapped else "separate modules"),
        amp=amp,
        compile_fallback=result.ensemble.compile_error,
        num_train_images=int(images.shape[0]),
    )
    if dist is not None:
        report["world_size"] = dist.world_size
    return report
