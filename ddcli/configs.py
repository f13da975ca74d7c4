"""Every method's configuration: the one source of its option names, defaults, choices and help.

Each method's knobs are a frozen dataclass (diffusers' ``register_to_config`` idea: every knob
captured, stored in the bundle, rebuilt from it). A field is an option of ``ddcli distill``
named after it (``batch_real`` -> ``--batch-real``); its default is the field's default, its
help the ``Attributes:`` entry of the class docstring, its choices the class's ``choices``, and
``presets`` hold the named presets (``sample-cpu`` for the built-in sample). The command line
(:mod:`ddcli.cli.distill`), ``ddcli list methods`` and the bundle's metadata all read these
classes; nothing is spelled twice.

This module imports no torch: ``ddcli distill --help`` builds its options from it in a fraction
of a second. The method classes (:mod:`ddcli.methods`) take their ``Config`` from here.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import operator
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from ddcli.catalog import (
    ALPHA_SCHEDULES,
    AMPS,
    BATCH_NORM_MODELS,
    EXTRACTORS,
    FLOW_DENOMINATORS,
    INITS,
    KERNELS,
    MODELS,
    OPTIMIZERS,
    REDUCTIONS,
    SAMPLERS,
    STEP_MODES,
    WIDTHLESS_MODELS,
)
from ddcli.errors import InputError
from ddcli.protocols import DSA_STRATEGY, parse_strategy

#: the largest integer an option takes (iterations, widths, counts)
MAX_INT_OPTION = 2**31 - 1
#: the diffusion priors' training timesteps (DDPM's 1,000; ddcli.priors)
PRIOR_TIMESTEPS = 1000
#: the largest float an option takes: float32's (the tensors' type; 1e39 overflowed into an
#: internal error, or gave a temperature that made every soft label uniform)
MAX_FLOAT_OPTION = 3.4028234663852886e38
#: ``--syn-res`` ceiling (LGM / SFM reference: 256; 1024 px images are 12 MB each in float32)
MAX_SYN_RES = 1024


def flag(name: str) -> str:
    """The command-line spelling of a field: ``batch_real`` -> ``--batch-real``."""
    return "--" + name.replace("_", "-")


def check_option_value(flag: str, value: Any) -> None:
    """Refuse a non-finite float, one beyond float32's range (:data:`MAX_FLOAT_OPTION`) or an
    integer beyond :data:`MAX_INT_OPTION` for ``flag``."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (tuple, list)):
        for v in value:
            check_option_value(flag, v)
    elif isinstance(value, int):
        if abs(value) > MAX_INT_OPTION:
            raise InputError(f"{flag} is out of range: {value}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")
        if abs(value) > MAX_FLOAT_OPTION:
            raise InputError(f"{flag} is out of range: {value:g} (float32 reaches "
                             f"{MAX_FLOAT_OPTION:.3g})")


def typed_value(flag: str, kind: Any, value: Any) -> Any:
    """``value`` as the field's type ``kind`` (``int``, ``float``, ``str``, ``bool``, ``X |
    None``, ``tuple[int, ...]``) takes it, as the command line's parser would: numpy / torch
    integers become ints, any real number a float; a bool for a number, a float for an
    integer (``ipc=2.5``, ``iterations=2.0``) or a string for a number is refused (they failed
    deep inside torch, or were recorded as given and made the bundle unreadable)."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
        args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise InputError(f"{flag} must be a list of integers, got {value!r}")
        return tuple(typed_value(flag, args[0], v) for v in value)
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            ok = False
        else:
            value = operator.index(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            ok = False
        else:
            value = float(value)
    elif kind is str:  # a number for a string option (sigma=2.0 for --sigma 2.0) reads as typed
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
    if not ok:
        what = {bool: "True or False", int: "an integer", float: "a number",
                str: "a string"}.get(kind, str(kind))
        raise InputError(f"{flag} must be {what}, got {value!r}")
    return value


def field_docs(cls: type) -> dict[str, str]:
    """Field -> help text from the ``Attributes:`` sections of ``cls`` and its bases (the
    nearest class wins); ``a, b: text`` documents both fields."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        if "Attributes:" not in doc:
            continue
        body = doc.split("Attributes:", 1)[1]
        entries: list[tuple[list[str], list[str]]] = []
        for line in body.splitlines():
            m = re.match(r"^\s{0,8}([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*):\s*(.*)$", line)
            if m and not line.startswith(" " * 9):
                entries.append(([n.strip() for n in m.group(1).split(",")], [m.group(2)]))
            elif entries and line.strip():
                entries[-1][1].append(line.strip())
        for names, text in entries:
            for n in names:
                docs[n] = " ".join(text).strip()
    return docs


@dataclass(frozen=True)
class MethodConfig:
    """Base of method configs: frozen, JSON round-trip, named presets, checked choices.

    Attributes:
        ipc: synthetic images per class.
        iterations: optimisation steps on the synthetic set.
        lr: learning rate of the synthetic images (tgdd: 0.01 × IPC unless given).
        amp: ``off`` or ``bf16`` autocast of the network (the loss stays in float32).
    """

    #: named presets: field -> value
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: field -> the values it may take (checked by :meth:`build`, listed by ``--help``)
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: fields that are recorded but not offered on the command line
    internal: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, preset: str | None = None, **overrides: Any) -> MethodConfig:
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                raise InputError(f"unknown preset {preset!r}")
            values.update(cls.presets[preset])
        unknown = [k for k in overrides if k not in cls.fields()]
        if unknown:
            k = unknown[0]
            users = [m for m, c in CONFIGS.items() if k in c.fields()]
            if not users:  # a typo (the Python API takes any keyword)
                raise InputError(f"unknown option {flag(k)}")
            raise InputError(f"option {flag(k)} does not apply to this method (an option of "
                             f"{', '.join(users)})")
        hints = typing.get_type_hints(cls)
        values.update({k: typed_value(flag(k), hints[k], v) for k, v in overrides.items()})
        cfg = cls(**values)
        cfg.check_values()
        cfg.validate()
        cfg.check_given(set(overrides))
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.fields()})

    def check_values(self) -> None:
        """What holds for every option of every method: numbers are finite, integers fit in
        32 bits, a field with choices holds one of them (ranges particular to an option are
        :meth:`validate`'s)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check_option_value(flag(f.name), value)
            allowed = self.choices.get(f.name)
            if allowed is not None and value not in allowed:
                raise InputError(f"{flag(f.name)} must be one of {', '.join(allowed)}, "
                                 f"got {value!r}")

    def validate(self) -> None:
        """Raise InputError on a bad value (subclasses extend)."""

    def check_given(self, given: set[str]) -> None:
        """Refuse options given explicitly that change nothing with the others (subclasses)."""


# --------------------------------------------------------------------------------------------
# the DM family


@dataclass(frozen=True)
class DMConfig(MethodConfig):
    """DM hyper-parameters; defaults are the reference's (methods.md §1.4).

    Attributes:
        ipc: synthetic images per class.
        iterations: outer iterations, one step on the synthetic set each (DM's reference
            20,000).
        lr: learning rate on the (normalised) pixels (DM's reference 1; 10 for IPC >= 100).
        momentum: SGD momentum on the pixels (reference 0.5).
        batch_real: real images per class per iteration (DM's reference 256).
        init: ``real`` (random real images of the class) or ``noise`` (standard normal).
        model: the registry name of the feature-extractor network.
        width: its width (reference 128; not for the ResNets, whose widths are fixed).
        dsa_strategy: the DSA families, underscore-separated.
        amp: ``off`` or ``bf16`` (autocast of the network; the loss stays in float32).
        channels_last: run the network in channels-last memory format.
        factor: multi-formation (IDC): each stored image holds factor×factor sub-images,
            decoded to full size at use time (1: off).
    """

    ipc: int = 10
    iterations: int = 20000
    lr: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    init: str = "real"
    model: str = "convnet"
    width: int = 128
    dsa_strategy: str = DSA_STRATEGY
    amp: str = "off"
    channels_last: bool = False
    factor: int = 1

    choices = {"init": INITS, "model": MODELS, "amp": AMPS}
    internal = ("dsa_strategy",)
    presets = {
        # the built-in sample on a 2-core CPU in about a minute (see README); lr 1 (the
        # reference's) beat 10 and 30 on a validation split of Fashion-MNIST images outside
        # the sample (81.4 / 79.7 / 78.8 %, 3 models, dm protocol at 200 epochs)
        "sample-cpu": {"iterations": 150, "batch_real": 32, "width": 64, "channels_last": True},
    }

    def __post_init__(self) -> None:
        if self.model in WIDTHLESS_MODELS:  # recorded as null: no width was used
            object.__setattr__(self, "width", None)

    def check_given(self, given: set[str]) -> None:
        if "width" in given and self.model in WIDTHLESS_MODELS:
            raise InputError(f"--width does not apply to --model {self.model} (its widths "
                             "are fixed)")

    def validate(self) -> None:
        if self.ipc < 1:
            raise InputError(f"--ipc must be >= 1, got {self.ipc}")
        if self.iterations < 0:
            raise InputError(f"--iterations must be >= 0, got {self.iterations}")
        if self.batch_real < 1:
            raise InputError(f"--batch-real must be >= 1, got {self.batch_real}")
        if self.width is not None and self.width < 1:
            raise InputError(f"--width must be >= 1, got {self.width}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.factor is not None and self.factor < 1:
            raise InputError(f"--factor must be >= 1, got {self.factor}")
        try:
            parse_strategy(self.dsa_strategy)
        except ValueError as e:
            raise InputError(str(e)) from None


@dataclass(frozen=True)
class CSDMConfig(DMConfig):
    """CSDM hyper-parameters (DM's, plus):

    Attributes:
        lr: the image learning rate (NCFM's effective AdamW lr 1e-3).
        weight_decay: AdamW's weight decay (NCFM 5e-4).
        optimizer: ``adamw`` (default, NCFM's) or ``sgd`` (with ``momentum``).
        step_mode: ``per-class`` (NCFM: one optimiser step per class) or ``joint``.
        plateau_patience: ReduceLROnPlateau patience in iterations (NCFM 500; 0: off).
        plateau_factor: its factor (0.5).
        kernel: the kernel whose spectrum is matched.
        sigma: the kernel bandwidth, a number or ``median`` (median pairwise distance of
            normalised real features, measured once at the start; L1 distance for the
            laplacian kernel, whose σ = 1 is far too small on such features).
        num_freqs: frequencies drawn per iteration (shared by the classes).
        reduction: ``sqrt-mean`` (NCFM's, scaled by ``scale``) or ``mean`` (unbiased SDD).
        scale: loss scale.
        alpha_schedule: amplitude weight α per class: ``log-linear`` in the class size,
            ``two-group`` (head / tail) or ``constant`` (α = ½).
        alpha_head: α of the largest class.
        alpha_tail: α of the smallest class.
        extractor: ``random`` (a fresh network per iteration) or ``pool`` (networks trained
            on the real data, cached, their weights blended with their initial ones,
            NCFM-style).
        pool_size: networks in the pool.
        pool_epochs: their training epochs.
    """

    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    step_mode: str = "per-class"
    plateau_patience: int = 500
    plateau_factor: float = 0.5
    dsa_strategy: str = "color_crop_cutout"
    kernel: str = "gaussian"
    sigma: str = "1.0"
    num_freqs: int = 4096
    reduction: str = "sqrt-mean"
    scale: float = 300.0
    alpha_schedule: str = "log-linear"
    alpha_head: float = 0.7
    alpha_tail: float = 0.3
    extractor: str = "random"
    pool_size: int = 20
    pool_epochs: int = 60

    choices = {**DMConfig.choices, "optimizer": OPTIMIZERS, "step_mode": STEP_MODES,
               "kernel": KERNELS, "reduction": REDUCTIONS, "alpha_schedule": ALPHA_SCHEDULES,
               "extractor": EXTRACTORS}
    presets = {"sample-cpu": {"iterations": 150, "batch_real": 32, "width": 64,
                              "channels_last": True, "num_freqs": 1024}}

    def validate(self) -> None:
        super().validate()
        if self.sigma != "median":
            try:
                assert math.isfinite(float(self.sigma)) and float(self.sigma) > 0
            except (ValueError, AssertionError):
                raise InputError(f"--sigma must be a finite number > 0 or 'median', got "
                                 f"{self.sigma!r}") from None
        if self.num_freqs < 1:
            raise InputError(f"--num-freqs must be >= 1, got {self.num_freqs}")
        if not self.scale > 0:  # 0 froze the images, < 0 pushed them away from the real set
            raise InputError(f"--scale must be > 0, got {self.scale}")
        if not (0 <= self.alpha_tail <= 1 and 0 <= self.alpha_head <= 1):
            raise InputError("--alpha-head and --alpha-tail must lie in [0, 1]")
        if self.pool_size < 1 or self.pool_epochs < 1:
            raise InputError("--pool-size and --pool-epochs must be >= 1")
        if self.extractor == "pool" and self.model in BATCH_NORM_MODELS:
            raise InputError(f"--model {self.model}: --extractor pool needs an architecture "
                             "without batch norm (its networks are trained together)")
        if self.weight_decay < 0 or self.plateau_patience < 0 or \
                not 0 < self.plateau_factor <= 1:
            raise InputError("--weight-decay and --plateau-patience must be >= 0, "
                             "--plateau-factor in (0, 1]")


@dataclass(frozen=True)
class SDMConfig(CSDMConfig):
    """SDM: CSDM with α = ½ for every class (kernel MMD through the spectrum)."""

    alpha_schedule: str = "constant"


@dataclass(frozen=True)
class TGDDConfig(DMConfig):
    """TGDD hyper-parameters (DM's, plus). ``None`` means "by IPC" (see ddcli.methods.tgdd).

    Attributes:
        iterations: outer iterations (TGDD's reference 10,000).
        lr: learning rate on pixels (TGDD: by IPC, 0.01 × IPC).
        batch_real: real images per class per iteration (TGDD's reference 128).
        alpha: weight of the constraint cross-entropy (by IPC: 2.5 up to IPC 10, 1.0 below
            IPC 50, 0.5 from 50).
        window: expert window L in epochs (between the extractor and the constraint snapshot).
        num_experts: expert trajectories (cached).
        expert_epochs: epochs per trajectory.
        factor: multi-formation factor (TGDD: by IPC, 2, or 1 at IPC 1).
        step_mode: ``per-class`` (the reference's sequential class steps) or ``joint``.
    """

    iterations: int = 10000
    lr: float | None = None
    batch_real: int = 128
    dsa_strategy: str = "color_crop_cutout"
    alpha: float | None = None
    window: int = 7
    num_experts: int = 5
    expert_epochs: int = 60
    factor: int | None = None
    step_mode: str = "per-class"

    choices = {**DMConfig.choices, "step_mode": STEP_MODES}
    presets = {"sample-cpu": {"iterations": 50, "batch_real": 32, "num_experts": 2,
                              "expert_epochs": 5, "width": 64, "channels_last": True}}

    def validate(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.factor is not None and self.factor < 1:  # (dm_view reads 0 as "by IPC")
            raise InputError(f"--factor must be >= 1, got {self.factor}")
        self.dm_view().validate()
        if self.alpha is not None and self.alpha < 0:
            raise InputError(f"--alpha must be >= 0, got {self.alpha}")
        for name in ("window", "num_experts", "expert_epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.model in BATCH_NORM_MODELS:  # checked before the data is read
            raise InputError(f"--model {self.model}: expert trajectories need an architecture "
                             "without batch norm")

    def dm_view(self) -> DMConfig:
        fields = {k: v for k, v in self.to_dict().items() if k in DMConfig.fields()}
        return DMConfig(**{**fields, "lr": self.lr or 1.0, "factor": self.factor or 1})

    def resolved(self) -> dict:
        """The values "by IPC" made explicit (stored in the bundle's provenance)."""
        return {
            "lr": self.lr if self.lr is not None else 0.01 * self.ipc,
            "alpha": self.alpha if self.alpha is not None else
            (2.5 if self.ipc <= 10 else 0.5 if self.ipc >= 50 else 1.0),
            "factor": self.factor if self.factor is not None else (1 if self.ipc == 1 else 2),
        }


# --------------------------------------------------------------------------------------------
# a frozen pre-trained backbone: SFM and LGM


@dataclass(frozen=True)
class BackboneConfig(MethodConfig):
    """Shared knobs of LGM and SFM.

    Attributes:
        ipc: synthetic images per class.
        iterations: optimisation steps (SFM / LGM reference 5,000).
        lr: Adam learning rate on the image pyramid (SFM / LGM reference 2e-3).
        backbone: the frozen feature extractor: efficientnet-lite0, timm:NAME, a torchvision
            name, or torchscript (a TorchScript module given as --backbone-weights; see
            ddcli.backbones).
        backbone_weights: its weights file (safetensors or a state dict).
        augs: augmented views of the synthetic set per step (LGM 10, SFM 1).
        pyramid_every: add a pyramid level of double resolution every N steps.
        decorrelate: apply the colour decorrelation matrix (RGB only).
        amp: ``off`` or ``bf16`` autocast of the backbone.
        golden_head_epochs: epochs of the full-data linear head stored in the bundle for
            classifier inheritance (0: none).
        backward_chunk: synthetic views per pass through the backbone: ``auto`` (on a CPU, 16
            once a step has more than 128 views; else all at once), 0 (all at once) or N. In
            pieces, the features of all views come first without a graph, then the loss and
            its gradient on them, then each piece again with its share of that gradient: the
            same step up to float rounding, holding the activations of N views instead of all.
        syn_res: side in pixels of the synthetic images (the pyramid's finest level): 0 (the
            data's own size) or N (square N x N images, as the LGM / SFM reference code's
            ``syn_res`` 256 on every dataset). Views are cropped to the backbone's input either
            way; the ConvNet protocols judge images of another size at the data's. On 32 px
            CIFAR-10, 256 scored lower (benchmarks/RESULTS.md, "Synthetic resolution").
    """

    ipc: int = 1
    iterations: int = 5000
    lr: float = 2e-3
    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None
    augs: int = 1
    pyramid_every: int = 200
    decorrelate: bool = True
    amp: str = "off"
    golden_head_epochs: int = 10
    backward_chunk: str = "auto"
    syn_res: int = 0

    choices = {"amp": AMPS}
    presets = {"sample-cpu": {"iterations": 60, "pyramid_every": 10}}

    def validate(self) -> None:
        if self.ipc < 1 or self.iterations < 0 or self.augs < 1 or self.pyramid_every < 1:
            raise InputError("--ipc, --augs, --pyramid-every must be >= 1 and --iterations >= 0")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.golden_head_epochs < 0:
            raise InputError("--golden-head-epochs must be >= 0")
        if not 0 <= self.syn_res <= MAX_SYN_RES:
            raise InputError(f"--syn-res must be 0 (the data's size) or 1..{MAX_SYN_RES}, "
                             f"got {self.syn_res}")
        if self.backward_chunk != "auto" and not (self.backward_chunk.isascii()
                                                  and self.backward_chunk.isdigit()
                                                  and int(self.backward_chunk) <= MAX_INT_OPTION):
            raise InputError(f"--backward-chunk must be auto or an integer >= 0, "
                             f"got {self.backward_chunk!r}")


@dataclass(frozen=True)
class SFMConfig(BackboneConfig):
    """SFM's knobs (the backbone harness's, plus):

    Attributes:
        flow_denominator: ``images`` divides the synthetic non-target sum by N − 1 (the
            official code's) or ``classes`` by C − 1, like the real side.
    """

    flow_denominator: str = "images"

    choices = {**BackboneConfig.choices, "flow_denominator": FLOW_DENOMINATORS}


@dataclass(frozen=True)
class LGMConfig(BackboneConfig):
    """LGM's knobs: the backbone harness's, 10 augmented views per step."""

    augs: int = 10

    presets = {"sample-cpu": {"iterations": 60, "pyramid_every": 10, "augs": 2}}


# --------------------------------------------------------------------------------------------
# generative: OT-guided diffusion sampling


@dataclass(frozen=True)
class OTGenConfig(MethodConfig):
    """OT-guided sampling's knobs.

    Attributes:
        ipc: samples per class.
        prior: a local diffusers pipeline folder (default: train a UNet prior on the data,
            cached).
        prior_steps: training steps of that prior.
        prior_channels: its UNet's block widths, e.g. 64,128,128.
        prior_batch: its training batch size.
        prior_ema: sample the prior ddcli trains from an exponential moving average of its
            training weights (diffusers' warm-up: 1 - (1 + step)^-3/4, at most 0.9999), as
            DiT's prior is.
        sampler: ``ddpm`` (ancestral, IGD's) or ``ddim``.
        sampling_steps: respaced sampling steps per sample (IGD 50).
        cfg_scale: classifier-free guidance (default: 4 for DiT priors as IGD, 2 for UNets).
        ot_scale: β₁, the OT guidance in units of IGD's step ρ_t (0: unguided; default: 5 for
            DiT priors, IGD's k; 15 for UNets, chosen on a validation split).
        ot_reg: λ₁, the Sinkhorn regulariser.
        dev_scale: γ, IGD's deviation (diversity) guidance (0: off; IGD 50-120 for DiT).
        window_start: start of the guided respaced timesteps, a fraction of the steps (IGD:
            30 of 50).
        window_end: its end (IGD: 45 of 50).
        real_per_class: real samples per class in the OT cost.
        influence_scale: k, IGD's influence guidance in units of its step ρ_t: the cosine
            mismatch between a surrogate network's parameter gradient on the predicted sample
            and its mean gradient on the class's real images (0: off; IGD's k is 5).
        surrogate_epochs: training epochs of that surrogate (a ConvNet trained on the real
            data, cached; IGD 50).
        surrogate_checkpoints: the epochs of its training whose weights give the influence
            term (averaged; IGD [0, 5, 16, 40] of 50).
        influence_real_per_class: real images per class in the surrogate's mean gradient
            (IGD's grad_ipc 200).
    """

    ipc: int = 10
    prior: str | None = None
    prior_steps: int = 20000
    prior_channels: tuple[int, ...] = (64, 128, 128)
    prior_batch: int = 128
    prior_ema: bool = True
    sampler: str = "ddpm"
    sampling_steps: int = 50
    cfg_scale: float | None = None
    ot_scale: float | None = None
    ot_reg: float = 0.05
    dev_scale: float = 0.0
    window_start: float = 0.6
    window_end: float = 0.9
    real_per_class: int = 256
    influence_scale: float = 0.0
    surrogate_epochs: int = 20
    surrogate_checkpoints: tuple[int, ...] = (0, 2, 6, 16)
    influence_real_per_class: int = 200

    choices = {"sampler": SAMPLERS}
    # a demonstration on a 2-core CPU: a tiny prior, few steps (quality is not the point)
    presets = {"sample-cpu": {"ipc": 2, "prior_steps": 150, "prior_batch": 32,
                              "prior_channels": (16, 32), "sampling_steps": 10,
                              "real_per_class": 64}}

    #: the options that train ddcli's own prior: nothing with ``--prior DIR``
    PRIOR_TRAINING: ClassVar[tuple[str, ...]] = ("prior_steps", "prior_channels", "prior_batch",
                                                 "prior_ema")

    def check_given(self, given: set[str]) -> None:
        if self.prior is not None:  # (they were ignored, and recorded as if they had run)
            for name in self.PRIOR_TRAINING:
                if name in given:
                    raise InputError(f"{flag(name)} trains ddcli's own prior: it does nothing "
                                     "with --prior DIR (an already trained prior)")

    def validate(self) -> None:
        for name in ("ipc", "sampling_steps", "real_per_class", "prior_batch"):  # (one message
            # named all four, where `ddcli prior` takes one of them)
            if getattr(self, name) < 1:
                raise InputError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.sampling_steps > PRIOR_TIMESTEPS:  # the scheduler's own limit
            raise InputError(f"--sampling-steps must be at most {PRIOR_TIMESTEPS} (the "
                             f"prior's training timesteps), got {self.sampling_steps}")
        if not self.prior_channels or min(self.prior_channels) < 1:
            raise InputError("--prior-channels must be positive integers separated by commas")
        groups = min(32, self.prior_channels[0])  # the UNet's group norm (ddcli.priors)
        if any(c % groups for c in self.prior_channels):
            raise InputError(f"--prior-channels: every width must be a multiple of "
                             f"{groups} (the UNet's group norm takes min(32, the first width) "
                             f"groups), got {','.join(map(str, self.prior_channels))}")
        if self.prior_steps < 1:
            raise InputError(f"--prior-steps must be >= 1, got {self.prior_steps}")
        if (self.ot_scale or 0) < 0 or self.dev_scale < 0:
            raise InputError("--ot-scale and --dev-scale must be >= 0")
        if self.cfg_scale is not None and not self.cfg_scale >= 0:
            raise InputError(f"--cfg-scale must be >= 0, got {self.cfg_scale}")
        if not self.ot_reg > 0:
            raise InputError(f"--ot-reg must be > 0, got {self.ot_reg}")
        if not 0 <= self.window_start <= self.window_end <= 1:
            raise InputError("the guidance window needs 0 <= --window-start <= --window-end "
                             "<= 1")
        if not self.influence_scale >= 0:
            raise InputError(f"--influence-scale must be >= 0, got {self.influence_scale}")
        # checked whether or not the influence term is on (the values are recorded)
        if min(self.surrogate_epochs, self.influence_real_per_class) < 1:
            raise InputError("--surrogate-epochs and --influence-real-per-class must be "
                             ">= 1")
        bad = [e for e in self.surrogate_checkpoints
               if not 0 <= e <= self.surrogate_epochs]
        if (not self.surrogate_checkpoints or bad
                or len(set(self.surrogate_checkpoints)) < len(self.surrogate_checkpoints)):
            raise InputError("--surrogate-checkpoints must name distinct epochs between 0 "
                             f"and --surrogate-epochs ({self.surrogate_epochs}), got "
                             f"{','.join(map(str, self.surrogate_checkpoints)) or 'none'}")


#: method name -> its config (the registry in ddcli.methods agrees; tests/test_startup.py)
CONFIGS: dict[str, type[MethodConfig]] = {
    "csdm": CSDMConfig, "dm": DMConfig, "lgm": LGMConfig, "otgen": OTGenConfig,
    "sdm": SDMConfig, "sfm": SFMConfig, "tgdd": TGDDConfig,
}
