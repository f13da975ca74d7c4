"""Expert trajectories for TGDD (methods.md §3.2): N networks trained on the real data, a
snapshot of each after every epoch (epoch 0 = the initialisation).

One safetensors file per trajectory, tensors ``epoch{j}.{name}`` for j = 0..E, metadata with
the architecture, classes, input, normalisation, data fingerprint, recipe and seed. Files live
in ``$DDCLI_CACHE/experts/<arch>-<key>/`` where the key hashes (data fingerprint, architecture,
recipe, seed, N): later distillations reuse them. The N trajectories are trained together (one
ensemble, every random draw made for all of them), so each depends on N: a build missing some
files (killed while saving) trains all N again and writes the missing ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ddcli import __version__
from ddcli.bundle import seal, seal_broken, utc_now
from ddcli.data import Dataset, NormalizedImages
from ddcli.errors import InputError
from ddcli.io import read_safetensors, write_safetensors
from ddcli.models import create_model
from ddcli.protocols import Protocol
from ddcli.runtime import cache_entry_errors, device_key
from ddcli.seeding import SEED_SCHEME, derive_seed

FORMAT = "ddcli.trajectory"

#: FlyFinley/TGDD pretrain.py + arguments/arg_pretrain.py: SGD lr 0.01 momentum 0.9 wd 5e-4,
#: batch 64, x0.2 at 2E/3 and 5E/6, per-image colour + crop (``aug_rand``: color_crop_cutout
#: without cutout, as CutMix is on) + CutMix p 0.5 beta 1
EXPERT_RECIPE = Protocol(
    name="tgdd-expert", model="convnet", epochs=60, batch_size=64, optimizer="sgd", lr=0.01,
    momentum=0.9, weight_decay=5e-4, schedule="step", lr_milestones=(2 / 3, 5 / 6),
    lr_gamma=0.2, augment="dsa-all", dsa_strategy="color_crop",
    cutmix_prob=0.5, cutmix_beta=1.0, loss="ce",
    reference="TGDD pretrain.py recipe: batch 64, colour + crop, CutMix",
)


@dataclass
class Trajectory:
    """Snapshots of one network: ``snapshots[j]`` is its state dict after epoch j."""

    arch: str
    snapshots: list[dict[str, torch.Tensor]]
    meta: dict

    @property
    def epochs(self) -> int:
        return len(self.snapshots) - 1


def expert_dir(cache: Path, data: Dataset, recipe: Protocol, width: int, seed: int,
               stream: str = "expert", ends_only: bool = False, num: int = 1,
               device: torch.device | str = "cpu") -> Path:
    """The cache folder of ``num`` trajectories: they train together, every random draw made
    for all of them, so trajectory i depends on how many there are (``num`` is in the key)."""
    key = json.dumps({"fingerprint": data.fingerprint, "recipe": recipe.to_dict(),
                      "width": width, "seed": seed, "init": SEED_SCHEME, "stream": stream,
                      "ends_only": ends_only, "num": num, **device_key(device)},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache) / "experts" / f"{recipe.model}-{digest}"


def save_trajectory(path: Path, arch: str, snapshots: list[dict], meta: dict) -> None:
    tensors = {f"epoch{j}.{k}": v.detach().cpu().contiguous()
               for j, snap in enumerate(snapshots) for k, v in snap.items()}
    md = {k: json.dumps(v) for k, v in meta.items()}
    md.update({"ddcli.format": FORMAT, "ddcli.version": __version__, "arch": arch,
               "epochs": str(len(snapshots) - 1), "created": utc_now()})
    seal(tensors, md)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, tensors, md)


def load_trajectory(path: Path, fingerprint: str | None = None) -> Trajectory:
    with cache_entry_errors(path):
        return _load_trajectory(path, fingerprint)


def _load_trajectory(path: Path, fingerprint: str | None) -> Trajectory:
    tensors, md = read_safetensors(path, "expert trajectory")
    if md.get("ddcli.format") != FORMAT:
        raise InputError(f"{path} is not a ddcli expert trajectory")
    # bytes changed in place read as another trajectory (or as "loss became non-finite");
    # trajectories of ddcli 0.3.0.dev0 and before have no checksum
    if seal_broken(tensors, md):
        raise InputError(f"{path}: checksum mismatch (the expert trajectory was modified)")
    md.pop("checksum", None)
    meta = {k: json.loads(v) for k, v in md.items()
            if k not in ("ddcli.format", "ddcli.version", "arch", "epochs", "created")}
    if fingerprint is not None and meta.get("data_fingerprint") != fingerprint:
        raise InputError(f"expert trajectory {path} was trained on other data (fingerprint "
                         "differs); build experts for this data")
    epochs = int(md["epochs"])
    snaps: list[dict[str, torch.Tensor]] = [{} for _ in range(epochs + 1)]
    for k, v in tensors.items():
        head, name = k.split(".", 1)
        snaps[int(head[len("epoch"):])][name] = v
    return Trajectory(md["arch"], snaps, meta)


def build_experts(
    data: Dataset,
    *,
    num: int,
    device: torch.device,
    cache: Path,
    arch: str = "convnet",
    epochs: int | None = None,
    width: int = 128,
    seed: int = 0,
    progress: Callable[..., None] | None = None,
    info: Callable[[str], None] = lambda m: None,
    recipe: Protocol = EXPERT_RECIPE,
    stream: str = "expert",
    ends_only: bool = False,
) -> list[Path]:
    """Make sure ``num`` trajectories exist for ``data`` (cached); return their files.

    ``recipe`` / ``stream`` / ``ends_only`` serve other users of trained-network pools (CSDM's
    NCFM-style extractor pool: its own recipe and seed stream, only the initial and the final
    weights kept)."""
    from ddcli.training import Ensemble, train_ensemble

    if num < 1:
        raise InputError(f"--num-experts must be >= 1, got {num}")
    recipe = dataclasses.replace(recipe, model=arch,
                                 **({"epochs": epochs} if epochs is not None else {}))
    if recipe.epochs < 1:
        raise InputError(f"--expert-epochs must be >= 1, got {recipe.epochs}")
    folder = expert_dir(cache, data, recipe, width, seed, stream, ends_only, num, device)
    paths = [folder / f"trajectory_{i:03d}.safetensors" for i in range(num)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    # all ``num`` train again, the files there kept (a build killed while saving): trajectory
    # i's draws depend on the others' (one draw for all), so training only the missing ones
    # gave other trajectories than a whole build (the same seed, another bundle)
    info(f"training {num} expert trajectories ({arch}, {recipe.epochs} epochs) into {folder}")
    mean, std = data.mean_std()
    c = data.channels
    x = NormalizedImages(data, device, mean, std)  # uint8 until each batch
    y = data.labels.to(device)
    models = []
    for i in range(num):
        net = create_model(arch, data.num_classes, c, data.image_size, width=width)
        net.reset_parameters(torch.Generator().manual_seed(derive_seed(stream, seed, i)))
        models.append(net)
    ens = Ensemble(models, device)
    if not ens.vmapped:
        raise InputError(f"experts need an architecture without batch norm, got {arch!r}")

    def snapshot() -> list[dict[str, torch.Tensor]]:
        return [{k: v[j].detach().cpu().clone() for k, v in {**ens.params, **ens.buffers}.items()}
                for j in range(num)]

    snaps = [[s_] for s_ in snapshot()]  # epoch 0

    def epoch_end(epoch: int) -> None:
        if ends_only and epoch < recipe.epochs:
            return
        for j, s_ in enumerate(snapshot()):
            snaps[j].append(s_)

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    train_ensemble(ens, x, y, recipe, gen, progress, epoch_end=epoch_end)
    meta = {"data_fingerprint": data.fingerprint, "classes": data.classes,
            "channels": c, "image_size": list(data.image_size), "mean": mean, "std": std,
            "recipe": recipe.to_dict(), "seed": seed, "width": width}
    for i in missing:
        save_trajectory(paths[i], arch, snaps[i], {**meta, "index": i,
                                                   "init_seed": derive_seed(stream, seed, i),
                                                   "ends_only": ends_only})
    return paths
