"""Named evaluation protocols: every knob that changes an accuracy, in one frozen record.

``evaluate --protocol NAME`` resolves through :func:`get_protocol`; the full record is printed and
stored in the JSON report, so a number always travels with how it was measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ddcli.errors import InputError

#: the DSA families of the DM reference (torch-free here so that protocols load without torch;
#: ddcli.augment re-exports it)
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: the DSA families ddcli.augment implements
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """``color_crop`` -> ("color", "crop"); ValueError on an unknown family."""
    fams = tuple(s for s in strategy.split("_") if s)
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        raise ValueError(f"unknown DSA family {bad[0] if bad else strategy!r}; use {FAMILIES}")
    return fams


@dataclass(frozen=True)
class Protocol:
    """How fresh models are trained on a distilled set and tested.

    Attributes:
        name: the protocol's name.
        model: registry name of the trained model (``convnet`` = ConvNet of the bundle's size).
        epochs: passes over the distilled set.
        batch_size: training batch size (capped at the set's size).
        optimizer: ``sgd`` (with ``momentum``) or ``adamw``.
        lr, momentum, weight_decay: optimiser settings.
        schedule: ``step`` (x ``lr_gamma`` at each of ``lr_milestones``, fractions of
            ``epochs``), ``cosine`` (per epoch, to 0) or ``evaluate_synset`` (the DM
            reference's: ``epochs`` + 1 epochs, x ``lr_gamma`` after epoch ``epochs``//2 + 1
            with the optimiser re-created there, momentum reset).
        augment: ``dsa`` (``dsa_strategy``, one family per batch, as the DM reference, plus
            the families of ``dsa_always`` on every image),
            ``dsa-all`` (every family of ``dsa_strategy`` on every image, as IDC/TGDD),
            ``standard`` (pad-4 random crop and horizontal flip) or ``none``.
        cutmix_prob, cutmix_beta: CutMix on a batch with this probability, λ ~ Beta(β, β)
            (hard-label ``ce`` loss only).
        loss: ``ce`` (hard labels), ``kd`` (KL to the bundle's soft labels at ``temperature``),
            ``kd-online`` (KL to the teachers run on each augmented batch) or ``otm`` (OT logit
            matching: ``w_ce``·CE + ``w_mse``·MSE + ``w_ot``·Sinkhorn(``ot_reg``)).
        temperature: KD temperature; None = the one the soft labels were made with.
        labels: what the students learn from (hard / soft / teacher).
        metric: what is reported.
        reference: where the recipe comes from.
    """

    name: str
    model: str = "convnet"
    epochs: int = 1000
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    lr_milestones: tuple[float, ...] = (0.5,)
    lr_gamma: float = 0.1
    augment: str = "dsa"
    dsa_strategy: str = DSA_STRATEGY
    dsa_always: str = ""
    cutmix_prob: float = 0.0
    cutmix_beta: float = 1.0
    loss: str = "ce"
    temperature: float | None = None
    w_ce: float = 0.1
    w_mse: float = 1.0
    w_ot: float = 1.0
    ot_reg: float = 0.1
    labels: str = "hard"
    metric: str = "test accuracy after the last epoch"
    reference: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def milestone_epochs(self) -> list[int]:
        """0-based epochs from which the next lower learning rate applies."""
        if self.schedule == "evaluate_synset":  # ``if ep in [E//2 + 1]: lr *= 0.1`` after ep
            return [self.epochs // 2 + 2]
        return sorted({int(round(f * self.epochs)) for f in self.lr_milestones})

    def train_epochs(self) -> int:
        """Epochs actually trained (``evaluate_synset`` loops ``range(Epoch + 1)``)."""
        return self.epochs + 1 if self.schedule == "evaluate_synset" else self.epochs

    @property
    def restarts_optimizer(self) -> bool:
        """Whether the optimiser is re-created (momentum reset) at each milestone."""
        return self.schedule == "evaluate_synset"


_PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(p: Protocol) -> Protocol:
    _PROTOCOLS[p.name] = p
    return p


def list_protocols() -> list[str]:
    return sorted(_PROTOCOLS)


def get_protocol(name: str, **overrides) -> Protocol:
    """The protocol ``name`` with ``overrides`` (e.g. ``epochs``) applied; overrides are part of
    the returned record, so they show in every report."""
    if name not in _PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}; choose from {', '.join(list_protocols())}")
    p = _PROTOCOLS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in overrides and overrides["epochs"] < 1:
        raise InputError(f"--epochs must be >= 1, got {overrides['epochs']}")
    return dataclasses.replace(p, **overrides)


#: protocol fields that only matter for some protocols: (field, applies?)
_KNOB_APPLIES: dict[str, Callable[[dict], bool]] = {
    "momentum": lambda p: p["optimizer"] == "sgd",
    "lr_milestones": lambda p: p["schedule"] == "step",
    "lr_gamma": lambda p: p["schedule"] in ("step", "evaluate_synset"),
    "dsa_strategy": lambda p: p["augment"] in ("dsa", "dsa-all"),
    "dsa_always": lambda p: p["augment"] in ("dsa", "dsa-all") and bool(p["dsa_always"]),
    "cutmix_prob": lambda p: p["cutmix_prob"] > 0,
    "cutmix_beta": lambda p: p["cutmix_prob"] > 0,
    # otm matches softmax(s) at T 1 to the soft labels (methods.md §5.4): no temperature
    "temperature": lambda p: p["loss"] in ("kd", "kd-online"),
    "w_ce": lambda p: p["loss"] == "otm",
    "w_mse": lambda p: p["loss"] == "otm",
    "w_ot": lambda p: p["loss"] == "otm",
    "ot_reg": lambda p: p["loss"] == "otm",
}


def protocol_knobs(p: dict) -> dict:
    """The knobs of a protocol record that its recipe uses (no reference text, no name)."""
    skip = ("name", "reference", "metric")
    return {k: v for k, v in p.items()
            if k not in skip and _KNOB_APPLIES.get(k, lambda _: True)(p)}


def protocol_summary(p: dict) -> str:
    """One readable line: ``model convnet, 1000 epochs, batch 256, sgd lr 0.01 ...``."""
    k = protocol_knobs(p)

    def fmt(v):
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, list | tuple):
            return "/".join(f"{x:.3g}" for x in v)
        return str(v)

    parts = [f"model {k['model']}", f"{k['epochs']} epochs", f"batch {k['batch_size']}",
             f"{k['optimizer']} lr {fmt(k['lr'])}"
             + (f" momentum {fmt(k['momentum'])}" if "momentum" in k else "")
             + (f" wd {fmt(k['weight_decay'])}" if k["weight_decay"] else ""),
             f"schedule {k['schedule']}"
             + (f" at {fmt(k['lr_milestones'])}" if k.get("lr_milestones") else "")
             + (f" x{fmt(k['lr_gamma'])}" if "lr_gamma" in k else ""),
             f"augment {k['augment']}"
             + (f" ({k['dsa_strategy']}" if "dsa_strategy" in k else "")
             + (f"; always {k['dsa_always']}" if "dsa_always" in k else "")
             + (")" if "dsa_strategy" in k else "")]
    if "cutmix_prob" in k:
        parts.append(f"cutmix p {fmt(k['cutmix_prob'])} beta {fmt(k['cutmix_beta'])}")
    loss = f"loss {k['loss']}"
    if "temperature" in k and k["temperature"] is not None:
        loss += f" T {fmt(k['temperature'])}"
    if "w_ce" in k:
        loss += (f" ({fmt(k['w_ce'])} CE + {fmt(k['w_mse'])} MSE + {fmt(k['w_ot'])} OT, "
                 f"reg {fmt(k['ot_reg'])})")
    parts.append(loss)
    parts.append(f"{k['labels']} labels")
    return ", ".join(parts)


_SOFT = dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, momentum=0.0, schedule="cosine",
             lr_milestones=(), augment="standard", labels="soft")

register_protocol(
    Protocol(
        name="dm",
        schedule="evaluate_synset",
        lr_milestones=(),
        reference="DM reference evaluation (VICO-UoE/DatasetCondensation utils.evaluate_synset):"
        " ConvNet, SGD lr 0.01 momentum 0.9 wd 5e-4, batch 256, epochs + 1 = 1001 epochs, lr "
        "x0.1 after epoch 501 with the optimiser re-created (momentum reset), DSA on every "
        "batch, hard labels, last epoch",
    )
)
register_protocol(
    Protocol(
        name="kd",
        loss="kd",
        **_SOFT,
        reference="KD on stored soft labels: ConvNet, AdamW lr 1e-3 wd 0.01, cosine, batch 256, "
        "1000 epochs, pad-4 crop + flip, T² KL at the relabel temperature",
    )
)
register_protocol(
    Protocol(
        name="kd-online",
        loss="kd-online",
        **{**_SOFT, "labels": "teacher"},
        reference="KD with the teachers run on every augmented batch (needs --teacher); "
        "otherwise as kd",
    )
)
register_protocol(
    Protocol(
        name="otm",
        loss="otm",
        **_SOFT,
        reference="OT logit matching (methods.md §5.4 proposal): 0.1 CE + 1.0 MSE to soft labels "
        "+ 1.0 batch Sinkhorn (L1 cost, reg 0.1, POT); otherwise as kd",
    )
)
register_protocol(
    Protocol(
        name="tgdd",
        epochs=1500,
        batch_size=64,
        lr_milestones=(2 / 3, 5 / 6),
        lr_gamma=0.2,
        augment="dsa",
        dsa_strategy="crop_scale_rotate",
        dsa_always="color_flip",
        cutmix_prob=0.5,
        cutmix_beta=1.0,
        reference="TGDD evaluation (FlyFinley/TGDD train.py, misc/augment.py): ConvNet, SGD lr "
        "0.01 momentum 0.9 wd 5e-4, batch 64, 1500 epochs, lr x0.2 at 2/3 and 5/6; flip and "
        "colour on every image, then one of crop / scale / rotate per batch (per-image "
        "parameters); CutMix p 0.5 beta 1; hard labels; last epoch (the reference reports the "
        "best of its evaluations every 250 epochs)",
    )
)
register_protocol(
    Protocol(
        name="linear-probe",
        model="linear head on a frozen backbone",
        epochs=300,
        batch_size=100,
        optimizer="adam",
        lr=1e-3,
        momentum=0.0,
        weight_decay=0.0,
        schedule="cosine",
        lr_milestones=(),
        augment="flip + RandomResizedCrop",
        dsa_strategy="",
        reference="LGM/SFM linear probe (methods.md §4.1): heads N(0, 0.01), Adam lr "
        "1e-3*batch/256, cosine stepped per epoch, batch min(100, n), fixed epochs, last epoch "
        "(no early stopping on test); test images: the central 224/256 resized to the input "
        "(LGM eval: Resize 256 + CenterCrop 224); --inherit: frozen golden head + projector, "
        "Adam 0.01*batch/256",
    )
)
