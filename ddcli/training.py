"""Training N fresh models on one small image set at once, and testing them.

Models without batch norm are trained together: their parameters are stacked, one optimiser
steps them all, and on a GPU one ``torch.func.vmap``-ed forward pass runs all N (each with its
own batches and augmentation), which the backend turns into batched / grouped kernels. On a
CPU the stacked models run one after another (``functional_call`` on each model's slice of the
stacked parameters): PyTorch's CPU backward of the grouped convolutions vmap produces is about
3× slower than N ordinary ones, and everything else — the parameters, the optimiser, every
random draw — is shared by the two paths, so they train the same models. Models with batch norm
(whose running statistics cannot be updated under vmap) are kept as separate modules.

The N models are independent: each has its own seed for its weights, its own data order and its
own augmentation draws; SGD with momentum and weight decay acts elementwise, so one optimiser
over the stacked parameters equals N optimisers.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from ddcli import augment
from ddcli.data import is_long_tailed
from ddcli.errors import RunError
from ddcli.losses import kd_loss, otm_loss
from ddcli.models import create_model
from ddcli.protocols import Protocol
from ddcli.runtime import is_compile_failure


def _has_batchnorm(m: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


class Ensemble:
    """N models behind one interface: ``forward(x (N, b, ...)) -> (N, b, K)``."""

    def __init__(self, models: list[nn.Module], device: torch.device,
                 serial: bool | None = None):
        self.n = len(models)
        self.vmapped = not _has_batchnorm(models[0])  # parameters stacked
        #: run the stacked models one after another (default: on a CPU) instead of under vmap
        self.serial = torch.device(device).type == "cpu" if serial is None else serial
        #: why torch.compile was given up for eager (None: it was not, or never asked for)
        self.compile_error: str | None = None
        if self.vmapped:
            params, buffers = stack_module_state([m.to(device) for m in models])
            self.params, self.buffers = params, buffers
            base = copy.deepcopy(models[0]).to("meta")

            def f(p, b, x):
                return functional_call(base, (p, b), (x,))

            self._f = f
            self._train_f = f  # the serial training forward: ``f``, or ``f`` compiled
            self._train_fwd = torch.vmap(f)
            self._eval_fwd = torch.vmap(f, in_dims=(0, 0, None))
        else:
            self.models = [m.to(device) for m in models]

    def parameters(self) -> list[torch.Tensor]:
        if self.vmapped:
            return list(self.params.values())
        return [p for m in self.models for p in m.parameters()]

    def train(self, mode: bool = True) -> None:
        if not self.vmapped:
            for m in self.models:
                m.train(mode)

    def _model(self, i: int) -> tuple[dict, dict]:
        return ({k: v[i] for k, v in self.params.items()},
                {k: v[i] for k, v in self.buffers.items()})

    def compile(self) -> bool:
        """Train through a ``torch.compile``-d forward (the serial CPU path only): inductor
        fuses each block's norm, ReLU and pooling, which are memory-bound passes over the
        activations on a CPU (about 1.4× per step; ``benchmarks/evaluate_speed_cpu.py``).
        The arithmetic is the same up to float rounding; prediction stays eager. Returns
        whether it is on; the first step falls back to eager where inductor cannot build (no
        C++ compiler), recording why in ``compile_error``."""
        if not (self.vmapped and self.serial):
            return False
        if not self.compiled:
            self._train_f = torch.compile(self._f, dynamic=False)
        return True

    @property
    def compiled(self) -> bool:
        return self.vmapped and self._train_f is not self._f

    def _serial_forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return torch.stack([self._train_f(*self._model(i), x[i]) for i in range(self.n)])
        except Exception as e:  # inductor failed to build: eager gives the same arithmetic
            if not self.compiled or not is_compile_failure(e):
                raise
            first = (str(e).splitlines() or [""])[0][:200]
            self.compile_error = f"{type(e).__name__}: {first}"
            self._train_f = self._f
            return self._serial_forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vmapped and self.serial:
            return self._serial_forward(x)
        if self.vmapped:
            return self._train_fwd(self.params, self.buffers, x)
        return torch.stack([m(x[i]) for i, m in enumerate(self.models)])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every model on the same images: (N, n, K)."""
        if self.vmapped and self.serial:
            return torch.stack([self._f(*self._model(i), x) for i in range(self.n)])
        if self.vmapped:
            return self._eval_fwd(self.params, self.buffers, x)
        return torch.stack([m(x) for m in self.models])


#: ``compile="auto"`` compiles the serial CPU step when the run passes at least this many
#: images through the models: enough eager work (about a minute on 2 cores) to repay
#: inductor's first-use build (about 20 s; seconds once its on-disk cache is warm)
AUTO_COMPILE_MIN_IMAGES = 30_000


def should_compile(mode: str, ens: Ensemble, protocol: Protocol, num_images: int,
                   amp: str = "off") -> bool:
    """``mode``: ``on``, ``off`` or ``auto`` (on for a long enough serial CPU run in float32;
    under ``amp`` bf16 compiling gained nothing, so ``auto`` leaves it off)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"unknown compile mode {mode!r}")
    if mode == "off" or not (ens.vmapped and ens.serial):
        return False
    if mode == "on":
        return True
    if amp != "off":
        return False
    work = ens.n * protocol.train_epochs() * num_images
    return work >= AUTO_COMPILE_MIN_IMAGES and shutil.which("c++") is not None


def build_ensemble(
    protocol: Protocol,
    num_classes: int,
    channels: int,
    image_size: tuple[int, int],
    seeds: list[int],
    device: torch.device,
) -> Ensemble:
    models = []
    for s in seeds:
        m = create_model(protocol.model, num_classes, channels, image_size)
        m.reset_parameters(torch.Generator().manual_seed(int(s)))  # same init on any device
        models.append(m)
    return Ensemble(models, device)


@dataclass
class TrainResult:
    ensemble: Ensemble
    train_time_s: float
    steps: int


@dataclass
class Views:
    """Recorded augmentations per image (``relabel --views K``), replayed exactly in training:
    ``family`` (n, V), ``u`` (n, V, 11) parameter rows, ``soft`` (n, V, K) their soft labels."""

    families: tuple[str, ...]
    all_families: bool
    family: torch.Tensor
    u: torch.Tensor
    soft: torch.Tensor

    def to(self, device) -> Views:
        return Views(self.families, self.all_families, self.family.to(device),
                     self.u.to(device), self.soft.to(device))


def _lr_at(protocol: Protocol, epoch: int) -> float:
    if protocol.schedule == "cosine":
        return protocol.lr * 0.5 * (1 + math.cos(math.pi * epoch / protocol.epochs))
    drops = sum(1 for m in protocol.milestone_epochs() if epoch >= m)
    return protocol.lr * protocol.lr_gamma**drops


def _optimizer(protocol: Protocol, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum,
                               weight_decay=protocol.weight_decay)
    if protocol.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=protocol.lr, weight_decay=protocol.weight_decay)
    raise ValueError(f"unknown optimizer {protocol.optimizer!r}")


def cutmix(x: torch.Tensor, protocol: Protocol, generator: torch.Generator):
    """CutMix per model batch (Yun et al. 2019): with probability ``cutmix_prob`` paste a box of
    a partner image (a random permutation of the batch) of area ≈ 1 − λ, λ ~ Beta(β, β).

    Args:
        x: (N, b, C, H, W). Returns (x flattened to (N·b, C, H, W), partner (N, b), λ (N,)),
        λ being the kept fraction (1 where no CutMix was applied)."""
    n_models, b, _, h, w = x.shape
    dev = x.device
    partner = torch.rand((n_models, b), generator=generator, device=dev).argsort(dim=1)
    beta = torch.full((n_models,), float(protocol.cutmix_beta), device=dev)
    g1 = torch._standard_gamma(beta, generator=generator)
    g2 = torch._standard_gamma(beta, generator=generator)
    lam = g1 / (g1 + g2)
    apply_it = torch.rand((n_models,), generator=generator, device=dev) < protocol.cutmix_prob
    cut = torch.sqrt(1 - lam)
    ch, cw = (h * cut).long(), (w * cut).long()
    cy = (torch.rand((n_models,), generator=generator, device=dev) * h).long()
    cx = (torch.rand((n_models,), generator=generator, device=dev) * w).long()
    y1, y2 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    x1, x2 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = ((rows >= y1.view(-1, 1, 1)) & (rows < y2.view(-1, 1, 1))
           & (cols >= x1.view(-1, 1, 1)) & (cols < x2.view(-1, 1, 1)))
    box = box & apply_it.view(-1, 1, 1)  # (N, H, W)
    other = torch.gather(x, 1, partner.view(n_models, b, 1, 1, 1).expand_as(x))
    mixed = torch.where(box.view(n_models, 1, 1, h, w), other, x)
    kept = 1 - box.flatten(1).float().mean(1)
    return mixed.flatten(0, 1), partner, kept


def train_ensemble(
    ens: Ensemble,
    images: torch.Tensor,
    targets: torch.Tensor,
    protocol: Protocol,
    generator: torch.Generator,
    progress: Callable[..., None] | None = None,
    soft: torch.Tensor | None = None,
    views: Views | None = None,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 1.0,
    epoch_end: Callable[[int], None] | None = None,
    amp: str = "off",
    models_total: int | None = None,
    own: tuple[int, int] | None = None,
) -> TrainResult:
    """Train every model of ``ens`` on (images, targets) under ``protocol``.

    Args:
        images: normalised (n, C, H, W) on the device.
        targets: hard labels (n,).
        soft: (n, K) soft labels for the ``kd`` / ``otm`` losses.
        views: recorded augmentations with their soft labels; replace fresh augmentation.
        teacher: maps an augmented normalised batch to probabilities (``kd-online``).
        temperature: the KD temperature (the protocol's, if it sets one, wins).
        epoch_end: called with the number of finished epochs (expert snapshots).
        amp: ``off`` or ``bf16``: the models' forward passes under bfloat16 autocast (losses
            and the optimiser in float32); faster on CPUs with AVX512-BF16 and on GPUs, not
            the same arithmetic (evaluate's opt-in ``--amp bf16``).
        models_total, own: under torchrun, ``ens`` holds models [lo, hi) of ``models_total``:
            every random draw (data order, augmentation, CutMix) is made for all of them, as a
            single process would, and only this process's models are trained, so each model
            trains exactly as it would in one process.
    """
    if amp not in ("off", "bf16"):
        raise ValueError(f"unknown amp {amp!r}")
    device = images.device
    n_models, n = models_total or ens.n, images.shape[0]  # the draws are made for n_models
    lo, hi = own or (0, n_models)
    if hi - lo != ens.n:
        raise ValueError(f"the ensemble holds {ens.n} models, own says {hi - lo}")
    bs = min(protocol.batch_size, n)
    opt = _optimizer(protocol, ens.parameters())
    model_of = torch.arange(n_models, device=device)
    t_kd = protocol.temperature or temperature
    if protocol.loss in ("kd", "otm") and soft is None and views is None:
        raise ValueError(f"the {protocol.loss} loss needs soft labels")
    if protocol.loss == "kd-online" and teacher is None:
        raise ValueError("the kd-online loss needs a teacher")
    ens.train(True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    steps = 0
    # a non-finite loss anywhere (kept on the device: no host sync a step), told at the end:
    # NaN weights predicted one class and were reported as an accuracy
    finite = torch.ones((), dtype=torch.bool, device=device)
    restart_at = set(protocol.milestone_epochs()) if protocol.restarts_optimizer else set()
    for epoch in range(protocol.train_epochs()):
        if epoch in restart_at:  # the reference re-creates its optimiser: momentum reset
            opt = _optimizer(protocol, ens.parameters())
        for g in opt.param_groups:
            g["lr"] = _lr_at(protocol, epoch)
        perm = torch.rand((n_models, n), generator=generator, device=device).argsort(dim=1)
        batches = -(-n // bs)
        for k, start in enumerate(range(0, n, bs)):
            idx = perm[:, start : start + bs]  # (N, b): each model its own batch
            b = idx.shape[1]
            flat = idx.flatten()
            x = images[flat]
            y = targets[flat].view(n_models, b)
            t = soft[flat] if soft is not None else None
            if views is not None:  # replay one recorded view per image
                v = torch.randint(views.u.shape[1], (flat.numel(),), generator=generator,
                                  device=device)
                p = augment.DSAParams(views.families, views.family[flat, v], views.u[flat, v],
                                      views.all_families)
                x = augment.apply(x, p)
                t = views.soft[flat, v]
            elif protocol.augment == "dsa":
                groups = model_of.repeat_interleave(b)  # one family per model's batch
                x = augment.augment(x, generator, protocol.dsa_strategy, family_groups=groups,
                                    always=protocol.dsa_always)
            elif protocol.augment == "dsa-all":
                x = augment.augment(x, generator, protocol.dsa_strategy, all_families=True)
            elif protocol.augment == "standard":
                x = augment.augment(x, generator, augment.STANDARD_STRATEGY, all_families=True)
            partner, lam = None, None
            if protocol.cutmix_prob > 0 and protocol.loss == "ce":
                x, partner, lam = cutmix(x.view(n_models, b, *x.shape[1:]), protocol, generator)
            # this process's models (all of them outside torchrun: a view, no copy)
            x = x.view(n_models, b, *x.shape[1:])[lo:hi]
            y = y[lo:hi]
            if partner is not None:
                partner, lam = partner[lo:hi], lam[lo:hi]
            if protocol.loss == "kd-online":
                t = teacher(x.flatten(0, 1))
            elif t is not None:
                t = t.view(n_models, b, -1)[lo:hi]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = ens.forward(x)
            logits = logits.float()
            if t is not None:
                t = t.reshape(hi - lo, b, -1)
            if protocol.loss == "ce":
                per = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                per_model = per.view(hi - lo, b).mean(dim=1)
                if partner is not None:
                    y2 = torch.gather(y, 1, partner)
                    per2 = F.cross_entropy(logits.flatten(0, 1), y2.flatten(), reduction="none")
                    per_model = lam * per_model + (1 - lam) * per2.view(hi - lo, b).mean(dim=1)
            elif protocol.loss in ("kd", "kd-online"):
                per_model = kd_loss(logits, t, t_kd).mean(dim=1)
            elif protocol.loss == "otm":
                per_model = otm_loss(logits, y, t, protocol.w_ce, protocol.w_mse, protocol.w_ot,
                                     protocol.ot_reg)
            else:
                raise ValueError(f"unknown loss {protocol.loss!r}")
            loss = per_model.sum()  # each model its own mean loss: gradients stay separate
            finite &= torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if progress and k + 1 < batches:  # part-way through a long epoch (host side only)
                progress(epoch + (k + 1) / batches)
        if progress:
            progress(epoch + 1)
        if epoch_end:
            epoch_end(epoch + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ens.train(False)
    if not bool(finite):
        raise RunError(f"the training loss became non-finite (NaN or infinity) under the "
                       f"{protocol.name} protocol; nothing is reported (soft labels of an extreme "
                       "temperature, or too large a learning rate?)")
    return TrainResult(ens, time.perf_counter() - t0, steps)


@torch.no_grad()
def predict(ens: Ensemble, images: torch.Tensor, chunk: int = 1000,
            progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Predicted classes (N, n) of every model; ``images`` normalised on the device.
    ``progress(done, total)`` is called once with 0 and after each chunk of ``chunk``
    images."""
    starts = range(0, len(images), chunk)
    if progress:
        progress(0, len(starts))
    preds = []
    for k, s in enumerate(starts):
        preds.append(ens.predict(images[s : s + chunk]).argmax(-1))
        if progress:
            progress(k + 1, len(starts))
    return torch.cat(preds, dim=1)


def class_groups(class_counts: list[int]) -> dict[str, list[int]] | None:
    """Long-tailed class groups by the real class counts: the classes ranked by count, the
    first third ``many``, the last third ``few``, the rest ``medium``; classes of one count
    share a group, the one most of their ranks fall in (the one nearer the tail on a tie),
    and of two classes the larger is ``many``, the smaller ``few``. None unless the counts
    are long-tailed (``ddcli.data.is_long_tailed``). (Ties were split by class index: of nine
    100-image classes beside a 1-image one, three were "few".)"""
    if not is_long_tailed(class_counts):
        return None
    c = len(class_counts)
    order = sorted(range(c), key=lambda k: (-class_counts[k], k))
    names = ("many", "medium", "few")

    def third(rank: int) -> int:
        if c == 2:
            return 2 * rank
        return 0 if rank < c / 3 else 2 if rank >= 2 * c / 3 else 1

    groups: dict[str, list[int]] = {name: [] for name in names}
    for count in sorted(set(class_counts), reverse=True):
        ranks = [r for r, k in enumerate(order) if class_counts[k] == count]
        votes = [sum(third(r) == g for r in ranks) for g in range(3)]
        g = max(range(3), key=lambda i: (votes[i], i))  # (a tie: the one nearer the tail)
        groups[names[g]] += [k for k in order if class_counts[k] == count]
    return {name: sorted(ks) for name, ks in groups.items()}


def accuracy_report(preds: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    class_counts: list[int] | None = None) -> dict:
    """Per-model accuracy, mean ± std (population std, as the reference's numpy), per-class,
    and, for long-tailed training data, many / medium / few group accuracies."""
    correct = (preds == labels.view(1, -1)).float()  # (N, n)
    per_model = correct.mean(dim=1)
    tested = torch.bincount(labels, minlength=num_classes)
    per_class = torch.zeros((preds.shape[0], num_classes), device=preds.device)
    per_class.index_add_(1, labels, correct)
    per_class = per_class / tested.clamp_min(1).float()
    # a class the test set lacks has no accuracy (None), not 0: it was counted as 0 / 1
    has = [int(n) > 0 for n in tested.tolist()]
    groups = class_groups(class_counts) if class_counts else None
    group_acc = None
    if groups:
        group_acc = {name: round(float(per_class[:, [k for k in ks if has[k]]].mean()) * 100, 2)
                     for name, ks in groups.items() if any(has[k] for k in ks)}
        group_acc["classes"] = groups
        group_acc["definition"] = ("classes ranked by real image count: first third many, "
                                   "last third few, classes of one count in one group; mean "
                                   "of per-class test accuracy")
    return {
        "group_accuracy": group_acc,
        "accuracy_per_model": [round(float(a) * 100, 2) for a in per_model],
        "accuracy_mean": round(float(per_model.mean()) * 100, 2),
        "accuracy_std": round(float(per_model.std(unbiased=False)) * 100, 2),
        "per_class_accuracy": [round(float(a) * 100, 2) if h else None
                               for a, h in zip(per_class.mean(0), has, strict=True)],
    }
