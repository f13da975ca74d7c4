"""Class-conditional diffusion priors for ``--method otgen`` (diffusers), from a local folder.

* a diffusers ``DiTPipeline`` folder (``model_index.json``: transformer + VAE + scheduler;
  ``id2label`` maps class ids to names): sampling and OT in the VAE's latent space;
* a folder with ``unet/`` (a class-conditional ``UNet2DModel``) and ``scheduler/``: pixel space.
  ddcli's own priors are of this kind, with ``ddcli_prior.json`` naming the classes.

``train_prior`` fits such a UNet on the user's data (DDPM noise prediction, 10 % of the labels
dropped to a null class so classifier-free guidance works), saves it with ``save_pretrained``,
caches it by data fingerprint and config, and resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ddcli.configs import PRIOR_TIMESTEPS
from ddcli.data import Dataset
from ddcli.errors import InputError, Interrupted
from ddcli.io import build_lock, honour_umask
from ddcli.runtime import cache_entry_errors, device_key, stop_signals

PRIOR_META = "ddcli_prior.json"


@dataclass
class Prior:
    kind: str  # "unet" (pixel space) or "dit" (latent space)
    model: torch.nn.Module
    scheduler: object  # a DDIM scheduler for sampling
    vae: torch.nn.Module | None
    label_ids: dict[str, int]  # class name -> the model's class id
    null_id: int | None  # the unconditional class id, if the model has one
    sample_shape: tuple[int, int, int]  # (C, H, W) of the space OT works in
    source: str
    #: how ddcli trained it (``ddcli_prior.json``: recipe, seed, data fingerprint); None for a
    #: prior ddcli did not train
    trained: dict | None = None

    @property
    def latent(self) -> bool:
        return self.vae is not None

    def to(self, device) -> Prior:
        self.model.to(device)
        if self.vae is not None:
            self.vae.to(device)
        return self

    def eps(self, z: torch.Tensor, t, labels: torch.Tensor, cfg_scale: float = 1.0):
        """Predicted noise, with classifier-free guidance when the model has a null class."""
        def run(lab):
            if self.kind == "dit":
                out = self.model(z, timestep=t.expand(z.shape[0]) if torch.is_tensor(t) else
                                 torch.full((z.shape[0],), t, device=z.device),
                                 class_labels=lab).sample
                return out[:, : z.shape[1]]  # learned-sigma models output 2C channels
            return self.model(z, t, class_labels=lab).sample

        e = run(labels)
        if cfg_scale != 1.0 and self.null_id is not None:
            e_null = run(torch.full_like(labels, self.null_id))
            e = e_null + cfg_scale * (e - e_null)
        return e

    def sampler(self, kind: str = "ddpm") -> object:
        """A fresh sampling scheduler over the prior's noise schedule: ``ddpm`` (ancestral, as
        IGD) or ``ddim``, with IGD's respacing (timesteps ``linspace(0, T−1, S)``)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
        return cls.from_config(self.scheduler.config, timestep_spacing="linspace")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in 0..1 -> the sampling space (latents, or pixels in -1..1)."""
        x = pixels * 2 - 1
        if self.vae is None:
            return x
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The sampling space -> pixels (nominally 0..1)."""
        x = z if self.vae is None else self.vae.decode(z / self.vae.config.scaling_factor).sample
        return (x + 1) / 2


def _ddim(scheduler) -> object:
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config)


def load_prior(folder: str | Path, classes: list[str]) -> Prior:
    """Load a local diffusers pipeline folder and map ``classes`` to its class ids."""
    with cache_entry_errors(folder):
        return _load_prior(folder, classes)


def _load_prior(folder: str | Path, classes: list[str]) -> Prior:
    from diffusers import DiTPipeline, UNet2DModel
    from diffusers.schedulers import DDPMScheduler

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"prior {folder} is a file; --prior takes a diffusers pipeline folder")
    if not folder.is_dir():
        raise InputError(f"prior not found: {folder} (a diffusers pipeline folder)")
    index = folder / "model_index.json"
    try:
        info = json.loads(index.read_text()) if index.exists() else {}
        if info.get("_class_name") == "DiTPipeline":
            with _quiet_diffusers():
                pipe = DiTPipeline.from_pretrained(str(folder), low_cpu_mem_usage=False)
            model, vae = pipe.transformer, pipe.vae
            names = {}  # id2label of model_index.json (the Hub's layout), synonyms by commas
            for k, v in (info.get("id2label") or {}).items():
                for label in str(v).split(","):
                    names[label.strip()] = int(k)
            meta = None
            if (folder / PRIOR_META).exists():
                meta = json.loads((folder / PRIOR_META).read_text())
                names.update({c: i for i, c in enumerate(meta["classes"])})
            n_cls = model.config.num_embeds_ada_norm
            if not n_cls:
                raise InputError(f"{folder}: the DiT has no class conditioning")
            shape = (vae.config.latent_channels, model.config.sample_size,
                     model.config.sample_size)
            # DiTPipeline's unconditional class: id num_embeds_ada_norm (1000 for ImageNet)
            return Prior("dit", model.eval(), _ddim(pipe.scheduler), vae.eval(),
                         _map(names, classes, folder), int(n_cls), shape, str(folder),
                         _trained(meta))
        if not (folder / "unet" / "config.json").exists():
            raise InputError(f"{folder} holds neither a DiTPipeline nor unet/ + scheduler/")
        with _quiet_diffusers():
            unet = UNet2DModel.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False)
            sched = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot load the prior in {folder}: {e}") from None
    n_cls = unet.config.num_class_embeds
    if not n_cls and unet.config.class_embed_type is None:
        raise InputError(f"{folder}: the UNet has no class conditioning (num_class_embeds)")
    meta_path = folder / PRIOR_META
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        names = {c: i for i, c in enumerate(meta["classes"])}
        null = meta.get("null_id")
    else:  # a foreign UNet: its class ids are taken to follow the dataset's class order
        meta = None
        names = {c: i for i, c in enumerate(classes)} if n_cls >= len(classes) else {}
        null = None
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size) \
        if isinstance(unet.config.sample_size, int) else (unet.config.in_channels,
                                                          *unet.config.sample_size)
    return Prior("unet", unet.eval(), _ddim(sched), None, _map(names, classes, folder), null,
                 tuple(shape), str(folder), _trained(meta))


def _trained(meta: dict | None) -> dict | None:
    """What a bundle records of how its prior was trained: ddcli's metadata less the classes
    (the bundle has them), or None for a prior ddcli did not train."""
    if not meta or "recipe" not in meta:
        return None
    out = {k: meta.get(k) for k in ("recipe", "seed", "fingerprint", "final_loss")}
    out["recipe"] = {"ema": False, **out["recipe"]}  # a key without it: trained without EMA
    return out


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' loaders log what went wrong (and pickle fallbacks) on stderr before raising;
    ddcli reports a failed load in its own one line."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _map(names: dict[str, int], classes: list[str], folder: Path) -> dict[str, int]:
    missing = [c for c in classes if c not in names]
    if missing:
        raise InputError(f"the prior in {folder} has no class named {missing[0]!r} "
                         f"({len(missing)} of the data's classes are missing)")
    return {c: names[c] for c in classes}


# ---------------------------------------------------------------------------------------------
# training a small class-conditional UNet prior on the user's data


@dataclass(frozen=True)
class PriorRecipe:
    steps: int = 20000
    batch_size: int = 128
    lr: float = 2e-4
    channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    train_timesteps: int = PRIOR_TIMESTEPS
    label_dropout: float = 0.1
    ema: bool = True
    checkpoint_every: int = 1000

    @classmethod
    def of(cls, cfg) -> PriorRecipe:
        """The recipe an otgen config (``ddcli.configs.OTGenConfig``) asks for."""
        return cls(steps=cfg.prior_steps, batch_size=cfg.prior_batch,
                   channels=tuple(cfg.prior_channels), ema=cfg.prior_ema)

    def key(self) -> dict:
        d = dict(self.__dict__)
        d.pop("checkpoint_every")
        d["channels"] = list(self.channels)
        if not self.ema:  # the key of the priors trained before the option: still found
            d.pop("ema")
        return d


def _ema(unet, recipe: PriorRecipe):
    """The weights a prior samples with: an exponential moving average of its training
    weights with diffusers' warm-up (1 - (1 + step)^-3/4, capped at 0.9999), the settings of
    diffusers' own UNet training example; DiT's prior is sampled from its EMA weights too."""
    from diffusers.training_utils import EMAModel

    return EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                    power=3 / 4, foreach=True) if recipe.ema else None


def prior_dir(cache: Path, data: Dataset, recipe: PriorRecipe, seed: int,
              device: torch.device | str = "cpu") -> Path:
    key = json.dumps({"fingerprint": data.fingerprint, "recipe": recipe.key(), "seed": seed,
                      **device_key(device)}, sort_keys=True)
    return Path(cache) / "priors" / hashlib.sha256(key.encode()).hexdigest()[:20]


def _new_unet(data: Dataset, recipe: PriorRecipe):
    from diffusers import UNet2DModel

    n = len(recipe.channels)
    h, w = data.image_size
    if h % 2 ** (n - 1) or w % 2 ** (n - 1):
        raise InputError(f"image size {h}x{w} must be divisible by {2 ** (n - 1)} for the prior")
    return UNet2DModel(
        sample_size=(h, w) if h != w else h, in_channels=data.channels,
        out_channels=data.channels, block_out_channels=tuple(recipe.channels),
        layers_per_block=recipe.layers_per_block,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        num_class_embeds=data.num_classes + 1,  # + the null class of classifier-free guidance
        norm_num_groups=min(32, recipe.channels[0]),
    )


def _number(loss: torch.Tensor | float | None) -> float | None:
    return None if loss is None else float(loss.detach() if torch.is_tensor(loss) else loss)


def train_prior(
    data: Dataset,
    *,
    device: torch.device,
    cache: Path,
    recipe: PriorRecipe = PriorRecipe(),
    seed: int = 0,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[Path, bool]:
    """Train (or find) the prior of ``data``; returns (folder, came_from_cache)."""
    folder = prior_dir(cache, data, recipe, seed, device)
    if (folder / PRIOR_META).exists():
        return folder, True
    # one trainer per prior (two CI jobs at once wrote one temporary folder, and left an entry
    # without its unet/ that every later run took for complete): the others wait, then find it
    lock = folder.with_name(folder.name + ".lock")
    with build_lock(lock):
        if (folder / PRIOR_META).exists():
            return folder, True
        _train_prior(data, folder, device, recipe, seed, progress, should_stop)
        # complete: a process still waiting on this lock finds the prior when it gets it (an
        # interrupted run keeps the lock file, so a waiting one resumes its checkpoint alone)
        lock.unlink(missing_ok=True)
    return folder, False


def _drop_load_path(config: Path) -> None:
    """Remove the ``_name_or_path`` that diffusers records in a model loaded from a folder: a
    prior resumed from its checkpoint named the ``.partial`` folder, since deleted, where an
    uninterrupted one names none."""
    d = json.loads(config.read_text())
    if d.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def _train_prior(data: Dataset, folder: Path, device: torch.device, recipe: PriorRecipe,
                 seed: int, progress: Callable[..., None] | None,
                 should_stop: Callable[[], bool]) -> None:
    """:func:`train_prior`'s training into ``folder``, resumed from its checkpoint."""
    from diffusers import DDPMScheduler, UNet2DModel

    partial = folder.with_name(folder.name + ".partial")
    # the checkpoint before the last, while the last replaces it (a kill between the two
    # renames left no checkpoint: the run started over)
    previous = partial.with_name(partial.name + ".old")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    start = 0
    saved = next((p for p in (partial, previous) if (p / "state.pt").exists()), None)
    if saved is not None:  # resume
        try:
            unet = UNet2DModel.from_pretrained(str(saved / "unet"), low_cpu_mem_usage=False)
            state = torch.load(str(saved / "state.pt"), map_location="cpu", weights_only=True)
            start = int(state["step"])
            gen.set_state(state["generator"])
            if "optimizer" not in state or (state.get("ema") is None) == bool(recipe.ema):
                raise ValueError("it lacks the optimiser's or the EMA's state")
        except Exception as e:  # a truncated or edited checkpoint: an internal error before
            raise InputError(
                f"the prior's checkpoint {saved} cannot be read ({type(e).__name__}: "
                f"{str(e)[:200]}); delete that folder (or run 'ddcli cache clear priors') to "
                "train the prior from the start") from None
    else:
        torch.manual_seed(seed)  # diffusers initialises from the global generator
        unet = _new_unet(data, recipe)
        state = None
    unet.to(device).train()
    sched = DDPMScheduler(num_train_timesteps=recipe.train_timesteps)
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    ema = _ema(unet, recipe)
    if ema is not None and state is not None:
        ema.load_state_dict(state["ema"])
        ema.to(device)
    images = data.images.to(device)
    labels = data.labels.to(device)
    null = data.num_classes
    alphas = sched.alphas_cumprod.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    # the last step's loss: a tensor (no host sync per step), or the checkpoint's number where
    # a resumed run has no step left (Ctrl-C on the last step), None for an older checkpoint
    last = {"loss": state.get("loss") if state is not None else None}

    def checkpoint(step: int) -> None:
        tmp = partial.with_name(partial.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        unet.save_pretrained(str(tmp / "unet"))
        torch.save({"step": step, "generator": gen.get_state(), "optimizer": opt.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "loss": _number(last["loss"])},
                   str(tmp / "state.pt"))
        if partial.exists():  # (else the only checkpoint may be ``previous``: kept till now)
            if previous.exists():
                shutil.rmtree(previous)
            partial.rename(previous)
        tmp.rename(partial)
        if previous.exists():
            shutil.rmtree(previous)

    with stop_signals() as ctrl_c:  # Ctrl-C / SIGTERM: finish the step, save, stop
        for step in range(start, recipe.steps):
            idx = torch.randint(len(images), (recipe.batch_size,), generator=gen, device=device)
            x0 = images[idx].float() / 255 * 2 - 1
            y = labels[idx]
            drop = torch.rand(y.shape, generator=gen, device=device) < recipe.label_dropout
            y = torch.where(drop, torch.full_like(y, null), y)
            t = torch.randint(recipe.train_timesteps, (len(idx),), generator=gen, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            with autocast:
                loss = F.mse_loss(unet(xt, t, class_labels=y).sample.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.step(unet.parameters())
            last["loss"] = loss
            done = step + 1
            if progress and (done % 50 == 0 or done == recipe.steps):  # the loss: a host sync
                progress(done, status=f"loss {float(loss.detach()):.4f}")
            elif progress:
                progress(done)
            if done % recipe.checkpoint_every == 0 and done < recipe.steps:
                checkpoint(done)
            if should_stop() or ctrl_c["flag"]:
                checkpoint(done)
                raise Interrupted(f"prior training interrupted at step {done}; checkpoint saved to "
                                  f"{partial}; rerun the same command to resume")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval().save_pretrained(str(tmp / "unet"))
    sched.save_pretrained(str(tmp / "scheduler"))
    _drop_load_path(tmp / "unet" / "config.json")
    (tmp / PRIOR_META).write_text(json.dumps({
        "classes": data.classes, "null_id": null, "fingerprint": data.fingerprint,
        "recipe": recipe.key(), "seed": seed,
        "final_loss": _number(last["loss"]),
    }, indent=2))
    honour_umask(tmp)  # (the weights were 0600: a group's shared cache could not read them)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    for p in (partial, previous):
        if p.exists():
            shutil.rmtree(p)

