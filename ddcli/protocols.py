"""Named evaluation protocols: every knob that changes an accuracy, in one frozen record.

``evaluate --protocol NAME`` resolves through :func:`get_protocol`; the full record is printed and
stored in the JSON report, so a number always travels with how it was measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ddcli.augment import DSA_STRATEGY
from ddcli.errors import InputError


@dataclass(frozen=True)
class Protocol:
    """How fresh models are trained on a distilled set and tested.

    Attributes:
        name: the protocol's name.
        model: registry name of the trained model (``convnet`` = ConvNet of the bundle's size).
        epochs: passes over the distilled set.
        batch_size: training batch size.
        lr, momentum, weight_decay: SGD settings.
        lr_milestones: fractions of ``epochs`` at which the lr is multiplied by ``lr_gamma``.
        lr_gamma: the factor.
        dsa_strategy: DSA families applied to every training batch (non-Siamese); "" for none.
        labels: ``hard`` (cross-entropy on the bundle's labels).
        metric: what is reported.
        reference: where the recipe comes from.
    """

    name: str
    model: str = "convnet"
    epochs: int = 1000
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[float, ...] = (0.5,)
    lr_gamma: float = 0.1
    dsa_strategy: str = DSA_STRATEGY
    labels: str = "hard"
    metric: str = "test accuracy after the last epoch"
    reference: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def milestone_epochs(self) -> list[int]:
        return sorted({int(round(f * self.epochs)) for f in self.lr_milestones})


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


register_protocol(
    Protocol(
        name="dm",
        reference="DM reference evaluation (methods.md §1.5): ConvNet, SGD lr 0.01 momentum 0.9 "
        "wd 5e-4, batch 256, 1000 epochs, lr x0.1 at epoch 500, DSA on every batch, hard labels",
    )
)
