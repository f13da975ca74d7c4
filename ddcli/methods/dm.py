"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023; methods.md §1).

Each iteration draws a fresh random ConvNet, embeds a batch of real images of every class and
all synthetic images, both under the same (Siamese) DSA parameters per class, and takes one SGD
step on the synthetic pixels to match the per-class mean embeddings:

    L = Σ_c ‖ mean f(A_c(real_c)) − mean f(A_c(syn_c)) ‖²

Faster than the reference, with the same distribution of updates:

* all classes go through the network in **one** forward pass (real) and one (synthetic); with
  instance norm each image is processed independently, so this is exact;
* the real images stay on the device as uint8 and are sampled there, no host round trip;
* DSA parameters are drawn per class (one family per class, as one reference call per class);
* the loss is read back to the host only every ``log_every`` iterations.

Synthetic images are optimised in normalised space (as the reference does, so lr 1 means the
same step) and stored in pixel scale.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ClassVar

import torch

from ddcli import augment, formation
from ddcli.configs import DMConfig
from ddcli.data import Dataset
from ddcli.errors import InputError
from ddcli.losses import dm_loss
from ddcli.methods import register_method
from ddcli.methods.base import ClassPool, Method, SyntheticSet
from ddcli.models import create_model


@register_method
class DM(Method):
    name = "dm"
    Config = DMConfig
    splits_classes = True
    #: optimise [0, 1] pixels, clamped at the start of every iteration (:meth:`clamp_pixels`)
    #: as TGDD and NCFM do, instead of normalised values as DM does
    pixel_space: ClassVar[bool] = False

    def setup(self, data: Dataset, device, generator, mean, std) -> None:
        cfg: DMConfig = self.config
        self.gen = generator
        self.pool = ClassPool(data, device, mean, std)
        c = data.num_classes
        self.num_classes = c
        self.net = create_model(
            cfg.model, c, data.channels, data.image_size, width=cfg.width
        ).to(device)
        self.net.requires_grad_(False)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

        f = self.factor
        if cfg.init == "real":  # with multi-formation: f² real images tiled into each one
            syn = formation.encode(self.pool.init_images(cfg.ipc * f * f, generator), f)
        else:
            syn = torch.randn((c * cfg.ipc, data.channels, *data.image_size),
                              generator=generator, device=device)
        if self.pixel_space:
            syn = self.pool.to_pixels(syn)
        self.syn = syn.detach().requires_grad_(True)
        self.syn_labels = torch.arange(c, device=device).repeat_interleave(cfg.ipc)
        self.dec_labels = formation.decode_labels(self.syn_labels, f)
        self.real_rows = torch.arange(c, device=device).repeat_interleave(cfg.batch_real)
        self.opt = self.make_optimizer()
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp == "bf16"
            else nullcontext()
        )

    def check_data(self, data: Dataset) -> list[str]:
        h, w = data.image_size
        f = self.factor
        if f > min(h, w):  # each stored image holds factor x factor sub-images
            raise InputError(f"--factor {f} is larger than the {h}x{w} px images: each "
                             f"stored image holds factor x factor sub-images of {h}//factor x "
                             f"{w}//factor px")
        need = self.config.ipc * f * f  # real images a class's initial set draws
        short = sum(n < need for n in data.class_counts)
        if self.config.init != "real" or not short:
            return []
        what = f"--ipc {self.config.ipc}" + (f" x factor {f}² ({need})" if f > 1 else "")
        return [f"{short} of {data.num_classes} classes have fewer real images than {what}: "
                "their extra synthetic images start as noisy copies"]

    # -- the three hooks the DM family overrides --------------------------------------------

    @property
    def factor(self) -> int:
        return int(self.config.factor or 1)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.syn], lr=self.config.lr, momentum=self.config.momentum)

    def extractor(self) -> torch.nn.Module:
        """The feature extractor of this iteration: a fresh random network, frozen."""
        self.net.reset_parameters(self.gen)
        return self.net

    def match_loss(self, f_real: torch.Tensor, f_syn: torch.Tensor) -> torch.Tensor:
        """(C, B, D) real and (C, IPC, D) synthetic features -> the scalar loss."""
        return dm_loss(f_real, f_syn)

    # ------------------------------------------------------------------------------------------

    def _embed(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            return net.embed(x).float()

    def split_refusal(self) -> str | None:
        if self.config.model.endswith("-bn"):
            return (f"--model {self.config.model} cannot be split among processes (batch norm "
                    "mixes the classes' images); use convnet or resnet18")
        return None

    def class_state_keys(self) -> set[str]:
        return {k for k, v in self.state().items() if v.shape == self.syn.shape}

    @property
    def own_classes(self) -> int:
        """How many classes this process computes (all of them outside torchrun)."""
        return self.num_classes if self.classes is None else self.classes[1] - self.classes[0]

    def own_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of ``t`` (grouped by class, as many per class) of this process's classes:
        under torchrun each rank computes its classes' losses from the draws every rank makes
        for all classes; ``t`` itself outside torchrun."""
        if self.classes is None:
            return t
        k = t.shape[0] // self.num_classes
        return t[self.classes[0] * k:self.classes[1] * k]

    def step(self, it: int) -> torch.Tensor:
        cfg: DMConfig = self.config
        net = self.extractor()
        real = self.pool.next_batch(cfg.batch_real, self.gen, self.classes)
        params = augment.sample_params(self.num_classes, self.gen, cfg.dsa_strategy)  # per class
        c = self.own_classes  # torchrun: this rank's classes only, from the same draws
        with torch.no_grad():
            f_real = self._embed(net, augment.apply(real, params, self.own_rows(self.real_rows)))
        syn = formation.decode(self.own_rows(self.syn), self.factor)
        f_syn = self._embed(net, augment.apply(syn, params, self.own_rows(self.dec_labels)))
        loss = self.match_loss(f_real.view(c, cfg.batch_real, -1),
                               f_syn.view(c, -1, f_syn.shape[-1]))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def state(self) -> dict[str, torch.Tensor]:
        st = {"syn": self.syn.detach()}
        for k, v in self.opt.state.get(self.syn, {}).items():  # momentum / Adam moments, step
            st[f"opt.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        return {**st, **self.pool.state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.syn.copy_(state["syn"])
        self.pool.load_state(state, self.classes)
        for k, v in state.items():
            if k.startswith("opt."):
                self.opt.state[self.syn][k[4:]] = v.clone()

    @torch.no_grad()
    def clamp_pixels(self) -> None:
        """Pixel-space methods: clamp the synthetic images to [0, 1]."""
        if self.pixel_space:
            self.syn.clamp_(0, 1)

    def result(self) -> SyntheticSet:
        with torch.no_grad():
            syn = self.syn.detach()
            pixels = syn.clamp(0, 1) if self.pixel_space else self.pool.to_pixels(syn)
        return SyntheticSet(pixels.cpu(), self.syn_labels.cpu())
