"""Soft labels from teachers: LIA teacher sets, ADSA calibration, augmentation-aware views.

* **LIA** (label-image-aligned relabeling, methods.md §5.3): the soft label of an image is the
  mean of the probabilities of an IPC-dependent set of teachers; fewer, simpler teachers at low
  IPC, more at high IPC. Teachers are ranked by parameter count (simplest first) and the
  schedule says how many of them to average: by default 1 for IPC <= 10, 2 for IPC <= 20, 3 for
  IPC <= 50 and all above.
* **ADSA** (methods.md §6.2): p(y|x; τ) ∝ exp(log p̄(y|x) − τ·log π_y) with π the real class
  frequencies; τ* (searched on a grid over [0, 2]) minimises the std over classes of the
  class-averaged confidence on the distilled images. On balanced data π is uniform and nothing
  changes.
* **Views**: ``views`` recorded augmentations per image (standard augmentation: pad-4 crop +
  flip, applied in the student's normalised space), with their parameters and their own soft
  labels, so evaluation replays exactly what the teachers saw.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddcli import __version__, augment
from ddcli.bundle import VIEW_KEYS, Bundle
from ddcli.data import denormalize, normalize
from ddcli.errors import InputError
from ddcli.reporting import device_label
from ddcli.teachers import Teacher, check_teacher

DEFAULT_LIA_SCHEDULE: tuple[tuple[int, int], ...] = ((10, 1), (20, 2), (50, 3))
ADSA_GRID = tuple(round(0.05 * i, 2) for i in range(41))  # τ in 0, 0.05, ..., 2


def parse_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """``"10:1,20:2,50:3"`` -> ((10, 1), (20, 2), (50, 3)): up to IPC a, average b teachers."""
    try:
        pairs = tuple(tuple(int(v) for v in part.split(":")) for part in text.split(",") if part)
        assert pairs and all(len(p) == 2 and p[0] >= 1 and p[1] >= 1 for p in pairs)
    except (ValueError, AssertionError):
        raise InputError(f"--lia-schedule must look like '10:1,20:2,50:3', got {text!r}") from None
    return tuple(sorted(pairs))  # type: ignore[arg-type]


def lia_count(ipc: int, available: int, schedule=DEFAULT_LIA_SCHEDULE) -> int:
    for max_ipc, k in schedule:
        if ipc <= max_ipc:
            return min(k, available)
    return available


def select_teachers(teachers: list[Teacher], ipc: int, num_teachers: int | None = None,
                    schedule=DEFAULT_LIA_SCHEDULE) -> list[Teacher]:
    """The LIA set: the ``k`` simplest teachers (fewest parameters; ties keep the given order)."""
    ranked = sorted(teachers, key=lambda t: t.num_params)
    k = num_teachers if num_teachers is not None else lia_count(ipc, len(teachers), schedule)
    if not 1 <= k <= len(teachers):
        raise InputError(f"--num-teachers must be between 1 and {len(teachers)}, got {k}")
    return ranked[:k]


def mean_probs(teachers: list[Teacher], pixels: torch.Tensor, temperature: float,
               progress: Callable[[int], None] | None = None, chunk: int = 1024) -> torch.Tensor:
    """Mean over teachers of softmax(logits / T) on pixel-scale images; ``progress(n)`` after
    every ``chunk`` images a teacher has labelled."""
    out = []
    for i in range(0, max(pixels.shape[0], 1), chunk):  # no images: one empty chunk
        part = pixels[i : i + chunk]
        probs = []
        for t in teachers:
            probs.append(t.probs(part, temperature))
            if progress:
                progress(part.shape[0])
        out.append(torch.stack(probs).mean(0))
    return torch.cat(out)


def adsa_calibrate(probs: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor,
                   grid=ADSA_GRID) -> tuple[torch.Tensor, float]:
    """ADSA: the τ from ``grid`` minimising the std over classes of the class-averaged
    confidence mean_{i: y_i = c} p(c | x_i; τ); returns (calibrated probs, τ). Ties go to the
    smallest τ."""
    k = probs.shape[1]
    if torch.all(prior == prior.flatten()[0]):  # uniform prior: every τ gives the same labels
        return probs, 0.0
    logp = probs.clamp_min(1e-12).log()
    log_prior = (prior / prior.sum()).clamp_min(1e-12).log().to(probs.device)
    onehot = torch.nn.functional.one_hot(labels.to(probs.device), k).float()
    present = onehot.sum(0) > 0
    best = None
    for tau in grid:
        q = torch.softmax(logp - tau * log_prior, dim=1)
        conf = (q * onehot).sum(0)[present] / onehot.sum(0)[present]
        spread = float(conf.std(unbiased=False))
        if best is None or spread < best[0] * (1 - 1e-6):
            best = (spread, tau, q)
    return best[2], float(best[1])


def apply_tau(probs: torch.Tensor, prior: torch.Tensor, tau: float) -> torch.Tensor:
    log_prior = (prior / prior.sum()).clamp_min(1e-12).log().to(probs.device)
    return torch.softmax(probs.clamp_min(1e-12).log() - tau * log_prior, dim=-1)


@dataclass
class RelabelSettings:
    temperature: float = 1.0
    calibrate: str | None = None  # None | "adsa"
    views: int = 0
    num_teachers: int | None = None
    schedule: tuple[tuple[int, int], ...] = DEFAULT_LIA_SCHEDULE
    seed: int = 0

    def validate(self) -> None:
        from ddcli.configs import check_option_value

        for key in ("temperature", "views", "num_teachers"):
            check_option_value("--" + key.replace("_", "-"), getattr(self, key))
        if not TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1]:
            # beyond, logits / T overflow float32 (NaN soft labels, found only when written) or
            # evaluate's T² KL does; within, the ends are already one-hot and uniform labels
            raise InputError(f"--temperature must be from {TEMPERATURE_RANGE[0]:g} to "
                             f"{TEMPERATURE_RANGE[1]:g}, got {self.temperature:g}")
        if self.calibrate not in (None, "adsa"):
            raise InputError(f"--calibrate must be adsa, got {self.calibrate!r}")
        if self.views < 0:
            raise InputError(f"--views must be >= 0, got {self.views}")
        if self.num_teachers is not None and self.num_teachers < 1:
            raise InputError(f"--num-teachers must be >= 1, got {self.num_teachers}")


#: the soft labels' temperatures that stay finite in float32, kd's T² loss included
TEMPERATURE_RANGE = (1e-4, 1e4)


def views_storage_bytes(n: int, views: int, num_classes: int) -> int:
    """Extra bytes the views add to a bundle: family int64, the float32 params, K float32
    probs."""
    return n * views * (8 + augment.NUM_PARAMS * 4 + num_classes * 4)


def relabel_images(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    teachers: list[Teacher],
    settings: RelabelSettings,
    *,
    ipc: int,
    prior: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    progress: Callable[..., None] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """Soft labels (and views) for pixel-scale images; returns (soft, extras, record).
    ``progress(done, total=...)`` counts teacher passes over images (views included)."""
    chosen = select_teachers(teachers, ipc, settings.num_teachers, settings.schedule)
    for t in chosen:
        t.to(device)
    x = pixels.to(device).float()
    total = x.shape[0] * (1 + settings.views) * len(chosen)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total=total)

    if progress:
        progress(0, total=total)
    soft = mean_probs(chosen, x, settings.temperature, advance)
    record: dict = {
        "teachers": [t.describe() for t in chosen],
        "teachers_available": len(teachers),
        "lia": {"ipc": ipc, "schedule": [list(p) for p in settings.schedule],
                "num_teachers": len(chosen), "rank": "fewest parameters first"},
        "temperature": settings.temperature,
        "calibrate": None,
        "views": None,
    }
    tau = None
    if settings.calibrate == "adsa":
        soft, tau = adsa_calibrate(soft, labels, prior)
        record["calibrate"] = {"method": "adsa", "tau": tau,
                               "prior": [round(float(p), 6) for p in prior / prior.sum()]}
    extras: dict[str, torch.Tensor] = {}
    if settings.views:
        n, k = x.shape[0], settings.views
        gen = torch.Generator(device=device)
        gen.manual_seed(settings.seed)
        params = augment.sample_params(n * k, gen, augment.STANDARD_STRATEGY, device,
                                       all_families=True)
        normed = normalize(x, mean, std).repeat_interleave(k, dim=0)
        viewed = denormalize(augment.apply(normed, params), mean, std)  # what the student sees
        vsoft = mean_probs(chosen, viewed, settings.temperature, advance)
        if tau is not None:
            vsoft = apply_tau(vsoft, prior, tau)
        extras = {
            "views.family": params.family.view(n, k).cpu(),
            "views.u": params.u.view(n, k, -1).cpu(),
            "views.soft_labels": vsoft.view(n, k, -1).cpu(),
        }
        record["views"] = {"k": k, "strategy": augment.STANDARD_STRATEGY, "all_families": True,
                           "seed": settings.seed,
                           "bytes": views_storage_bytes(n, k, soft.shape[1])}
    return soft.cpu(), extras, record


def check_relabelable(bundle: Bundle) -> None:
    if bundle.factor > 1:
        raise InputError("relabel of multi-formation bundles (factor > 1) is not supported; "
                         "export the decoded images first (ddcli inspect --decode --export)")


def relabel_bundle(bundle: Bundle, teachers: list[Teacher], settings: RelabelSettings, *,
                   device: torch.device, command: str,
                   progress: Callable[..., None] | None = None) -> Bundle:
    """A new bundle with soft labels from ``teachers`` and a provenance step appended."""
    settings.validate()
    check_relabelable(bundle)
    for t in teachers:
        check_teacher(t, bundle.classes, int(bundle.images.shape[1]))
    counts = bundle.dataset.get("class_counts") or [1] * bundle.num_classes
    prior = torch.tensor(counts, dtype=torch.float32).clamp_min(1)
    ipc = bundle.ipc or max(bundle.images_per_class)
    soft, extras, record = relabel_images(
        bundle.images.float(), bundle.labels, teachers, settings, ipc=ipc, prior=prior,
        mean=bundle.dataset["mean"], std=bundle.dataset["std"], device=device,
        progress=progress,
    )
    new = copy.copy(bundle)
    new.soft_labels = soft
    new.extras = {k: v for k, v in bundle.extras.items() if k not in VIEW_KEYS} | extras
    new.created = ""  # this file's: set when it is saved
    new.torch_version = ""
    new.ddcli_version = __version__
    new.checksum = ""
    new.provenance = list(bundle.provenance) + [
        {"command": command, "step": "relabel", **record, "seed": settings.seed,
         "device": device_label(str(device)), "ddcli_version": __version__,
         "parent_checksum": bundle.checksum}
    ]
    return new


def last_relabel_step(bundle: Bundle) -> dict | None:
    steps = [s for s in bundle.provenance if s.get("step") == "relabel"]
    return steps[-1] if steps else None
