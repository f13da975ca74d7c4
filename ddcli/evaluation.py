"""Judging a distilled set: train fresh models on it under a protocol, test them, report."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddcli.bundle import Bundle
from ddcli.data import Dataset
from ddcli.errors import InputError
from ddcli.protocols import Protocol
from ddcli.training import accuracy_report, build_ensemble, predict, train_ensemble


def check_classes(bundle: Bundle, test: Dataset, what: str = "test") -> None:
    """The bundle's classes must be the test classes: same names, same order."""
    if bundle.classes != test.classes:
        if sorted(bundle.classes) == sorted(test.classes):
            raise InputError(f"the {what} data lists the bundle's classes in another order; "
                             "labels would be mixed up")
        missing = [c for c in bundle.classes if c not in test.classes]
        extra = [c for c in test.classes if c not in bundle.classes]
        raise InputError(
            f"the {what} classes do not match the bundle's ({len(test.classes)} vs "
            f"{len(bundle.classes)}; missing {missing[:3]}, unexpected {extra[:3]})"
        )


def model_seeds(seed: int, n: int) -> list[int]:
    return [seed * 1000 + i for i in range(n)]


def random_real_subset(real: Dataset, ipc: int, seed: int) -> Dataset:
    """``ipc`` random real images per class (seeded), the baseline of every method."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(real.num_classes):
        idx = torch.nonzero(real.labels == c).flatten()
        if idx.numel() == 0:
            raise InputError(f"the real data has no image of class {real.classes[c]!r}")
        keep.append(idx[torch.randperm(idx.numel(), generator=gen)[:ipc]])
    return real.select(torch.cat(keep), random_ipc=ipc, random_seed=seed)


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
) -> dict:
    """Train ``num_models`` fresh models on pixel-scale ``images`` and test them on ``test``."""
    c = images.shape[1]
    m = torch.tensor(mean, device=device).view(1, c, 1, 1)
    s = torch.tensor(std, device=device).view(1, c, 1, 1)
    x = (images.to(device).float() - m) / s
    y = labels.to(device)
    seeds = model_seeds(seed, num_models)
    ens = build_ensemble(protocol, test.num_classes, c, tuple(images.shape[2:]), seeds, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    result = train_ensemble(ens, x, y, protocol, gen, progress)
    test_x = (test.images.to(device).float() / 255.0 - m) / s
    preds = predict(result.ensemble, test_x)
    report = accuracy_report(preds, test.labels.to(device), test.num_classes)
    report.update(
        model_seeds=seeds,
        train_time_s=round(result.train_time_s, 3),
        train_time_per_model_s=round(result.train_time_s / num_models, 3),
        train_steps=result.steps,
        batched=result.ensemble.vmapped,
        num_train_images=int(images.shape[0]),
    )
    return report
