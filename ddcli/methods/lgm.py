"""LGM: linear gradient matching with a frozen pre-trained backbone (methods.md §4.1).

Each step draws a random linear head W ~ N(0, 0.01²), b = 0, and matches the direction of its
cross-entropy gradient on a batch of real features (IPC · augs · C random real images, not
class-balanced, one augmented view each) with the gradient on ``augs`` augmented copies of the
synthetic set: L = 1 − cos(g_real, g_syn), backpropagated to the pyramid through g_syn.
"""

from __future__ import annotations

import torch

from ddcli.configs import LGMConfig
from ddcli.losses import lgm_loss
from ddcli.methods import register_method
from ddcli.methods.backbone_base import BackboneMethod, real_pixels, standard_views


@register_method
class LGM(BackboneMethod):
    name = "lgm"
    Config = LGMConfig

    def setup(self, data, device, generator, mean, std) -> None:
        super().setup(data, device, generator, mean, std)
        self.real_pixels = real_pixels(data, device)  # sampled every step
        cfg: LGMConfig = self.config
        self.bb.plan_inference(cfg.iterations * cfg.ipc * cfg.augs * self.num_classes)

    def recorded_config(self) -> dict:
        # the real views' no-grad passes compiled (the same arithmetic up to rounding)
        return {**super().recorded_config(), "backbone_inference_compiled":
                getattr(getattr(self, "bb", None), "compiled", False)}

    def loss(self, view_feats: torch.Tensor) -> torch.Tensor:
        cfg: LGMConfig = self.config
        dev = view_feats.device
        n_real = cfg.ipc * cfg.augs * self.num_classes
        idx = torch.randint(len(self.real_pixels), (n_real,), generator=self.gen, device=dev)
        with torch.no_grad():
            x = self.real_pixels[idx]
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            with self.autocast:
                f_real = self.bb.infer(self.bb.normalize(
                    standard_views(x, self.bb.input_size, self.gen))).float()
        d = view_feats.shape[-1]
        w = torch.randn((self.num_classes, d), generator=self.gen, device=dev) * 0.01
        b = torch.zeros(self.num_classes, device=dev)
        syn_labels = self.syn_labels.repeat(cfg.augs)
        return lgm_loss(f_real, self.real_labels[idx], view_feats.flatten(0, 1), syn_labels, w, b)
