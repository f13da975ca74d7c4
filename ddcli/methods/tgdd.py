"""TGDD: trajectory-guided dataset distillation with balanced distribution (methods.md §3).

DM's loop with trained networks instead of random ones. Expert trajectories (N ConvNets trained
on the real data, a snapshot per epoch; ddcli.experts) are built once and cached. Per
iteration:

1. pick a trajectory i, a start epoch j_s ~ U{0..E} (the **feature extractor**) and a later
   epoch j_f ~ U{j_s..min(j_s + L − 1, E)} within the window L (the **constraint model**);
2. clamp the synthetic pixels to [0, 1]; decode multi-formation images;
3. per class, one DSA draw (all families of ``color_crop_cutout``, as IDC's DiffAug) shared by
   the real batch and the synthetic images; loss = stage-wise mean matching under the
   extractor + α · cross-entropy of the synthetic images under the constraint model;
4. update the pixels as the reference does: one SGD-with-momentum step **per class**, in class
   order, each on the whole synthetic tensor. The C sequential steps are computed exactly from
   one batched gradient (``sequential_class_steps``), so all classes share one forward pass.

Defaults from §3.2: α = 2.5 for IPC <= 10, 0.5 for IPC >= 50 (1.0, the code default, between),
window 7, lr 0.01 × IPC on pixels, momentum 0.5, 128 real images per class, 10,000 iterations,
5 trajectories of 60 epochs, factor 2 (1 at IPC 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddcli import augment, formation
from ddcli.configs import TGDDConfig
from ddcli.experts import build_experts, load_trajectory
from ddcli.losses import tgdd_loss
from ddcli.methods import register_method
from ddcli.methods.dm import DM
from ddcli.models import create_model
from ddcli.runtime import cache_dir


def sequential_class_steps(
    syn: torch.Tensor, buf: torch.Tensor, class_of: torch.Tensor, num_classes: int, lr: float,
    momentum: float, class_losses: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C steps of SGD with momentum (no dampening), one per class in class order, each on the
    whole tensor with only that class's loss — computed in closed form from one gradient.

    Class k's loss depends only on its own images. Before its step they have moved by
    momentum alone: p − lr·buf·Σ_{j=1..k} m^j, where its gradient g is taken. After all C steps:
    p' = p − lr·buf·Σ_{s=1..C} m^s − lr·g·Σ_{t=0..C−1−k} m^t and buf' = m^C·buf + m^{C−1−k}·g.

    Args:
        syn, buf: (N, ...) parameters and momentum buffers (zeros before the first step).
        class_of: (N,) class index of every image.
        class_losses: maps the (shifted) parameters to the (C,) per-class losses.
    Returns:
        (new parameters, new buffers, the (C,) losses).
    """
    m = momentum
    powers = m ** torch.arange(num_classes + 1, dtype=syn.dtype, device=syn.device)
    shift = torch.cumsum(powers, 0) - 1  # Σ_{j=1..k} m^j for k = 0..C
    grad_coef = torch.flip(torch.cumsum(powers[:num_classes], 0), [0])  # Σ_{t=0..C−1−k} m^t
    view = (-1,) + (1,) * (syn.dim() - 1)
    k = class_of.view(view)
    point = (syn - lr * shift[class_of].view(view) * buf).detach().requires_grad_(True)
    losses = class_losses(point)
    (g,) = torch.autograd.grad(losses.sum(), point)
    with torch.no_grad():
        new = syn - lr * shift[num_classes] * buf - lr * grad_coef[class_of].view(view) * g
        new_buf = powers[num_classes] * buf + powers[num_classes - 1 - k] * g
    return new, new_buf, losses.detach()


@register_method
class TGDD(DM):
    name = "tgdd"
    Config = TGDDConfig
    pixel_space = True  # TGDD optimises [0, 1] pixels, not normalised values

    @property
    def factor(self) -> int:
        return int(self.config.resolved()["factor"])

    def setup(self, data, device, generator, mean, std) -> None:
        cfg: TGDDConfig = self.config
        r = cfg.resolved()
        self.lr, self.alpha = float(r["lr"]), float(r["alpha"])
        with self.setup_progress("expert trajectories", cfg.expert_epochs,
                                 unit="epochs") as update:
            paths = build_experts(data, num=cfg.num_experts, device=device, cache=cache_dir(),
                                  arch=cfg.model, epochs=cfg.expert_epochs, width=cfg.width,
                                  seed=self.seed, progress=update)
        self.trajectories = [
            [{k: v.to(device) for k, v in snap.items()}
             for snap in load_trajectory(p, data.fingerprint).snapshots]
            for p in paths
        ]
        super().setup(data, device, generator, mean, std)
        self.buf = torch.zeros_like(self.syn)
        self.con = create_model(cfg.model, data.num_classes, data.channels, data.image_size,
                                width=cfg.width).to(device).requires_grad_(False)
        self.net.load_state_dict(self.trajectories[0][0])  # the extractor: trained, not random
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))
        self.pick_gen = torch.Generator().manual_seed(seed)  # snapshot choice, on the host

    def make_optimizer(self):
        return None  # the update is sequential_class_steps (or a joint SGD step)

    def _pick(self) -> tuple[int, int, int]:
        e = len(self.trajectories[0]) - 1
        i = int(torch.randint(len(self.trajectories), (1,), generator=self.pick_gen))
        js = int(torch.randint(e + 1, (1,), generator=self.pick_gen))
        jf = int(torch.randint(js, min(js + self.config.window - 1, e) + 1, (1,),
                               generator=self.pick_gen))
        return i, js, jf

    def step(self, it: int) -> torch.Tensor:
        cfg: TGDDConfig = self.config
        c = self.num_classes
        mine = self.own_classes  # torchrun: this rank's classes, from every class's draws
        self.clamp_pixels()
        i, js, jf = self._pick()
        self.net.load_state_dict(self.trajectories[i][js])
        self.con.load_state_dict(self.trajectories[i][jf])
        real = self.pool.next_batch(cfg.batch_real, self.gen, self.classes)
        params = augment.sample_params(c, self.gen, cfg.dsa_strategy, all_families=True)
        with torch.no_grad():
            f_real = self._embed(self.net, augment.apply(real, params,
                                                         self.own_rows(self.real_rows)))
        dec_labels = self.own_rows(self.dec_labels)

        def class_losses(pixels: torch.Tensor) -> torch.Tensor:
            # this rank's classes; the other rows of ``pixels`` get no gradient, and the
            # updates below are element-wise, so its classes' rows move exactly as in one
            # process (the others' are replaced by their owners' when gathered)
            x = formation.decode(self.pool.normalize_float(self.own_rows(pixels)), self.factor)
            x = augment.apply(x, params, dec_labels)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast:
                f_syn, logits = self.net.embed(x).float(), self.con(x).float()
            return tgdd_loss(f_real.view(mine, cfg.batch_real, -1),
                             f_syn.view(mine, -1, f_syn.shape[-1]),
                             logits.view(mine, -1, logits.shape[-1]), self.alpha,
                             first_class=self.classes[0] if self.classes else 0)

        if cfg.step_mode == "per-class":
            new, buf, losses = sequential_class_steps(self.syn.detach(), self.buf,
                                                      self.syn_labels, c, self.lr, cfg.momentum,
                                                      class_losses)
        else:  # one SGD-with-momentum step on the summed loss
            point = self.syn.detach().requires_grad_(True)
            losses = class_losses(point)
            (g,) = torch.autograd.grad(losses.sum(), point)
            buf = cfg.momentum * self.buf + g
            new = self.syn.detach() - self.lr * buf
        with torch.no_grad():
            self.syn.copy_(new)
            self.buf.copy_(buf)
        return losses.sum().detach()

    def state(self) -> dict[str, torch.Tensor]:
        return {"syn": self.syn.detach(), "buf": self.buf, "pick_gen": self.pick_gen.get_state(),
                **self.pool.state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.syn.copy_(state["syn"])
            self.buf.copy_(state["buf"])
        self.pick_gen.set_state(state["pick_gen"].cpu())
        self.pool.load_state(state, self.classes)
