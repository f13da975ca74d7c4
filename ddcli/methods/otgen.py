"""otgen: OT-guided sampling from a class-conditional diffusion prior (methods.md §5.2).

Per class, IPC samples are generated one after another with DDIM. Inside a window of the
sampling steps the update is guided: from the predicted clean sample x̂₀ of the current step
and the samples already generated for the class, the entropic OT cost G_W to a batch of real
samples of the class (in the prior's latent space when it has a VAE, else in pixels) is computed
with POT (plan detached), and its gradient with respect to z_t — through x̂₀ — is subtracted,
together with an optional deviation (diversity) term:

    z_{t−1} = DDIM(z_t, ε) − β₁·∇G_W − γ·∇G_D

ddcli choice (the paper gives no value): both gradients are normalised to unit RMS per element
before scaling, so ``ot_scale`` / ``dev_scale`` are step sizes in the sampling space. The
influence guidance of IGD (a surrogate network's gradient matching) is not implemented.
The prior is ``--prior DIR`` (a local diffusers folder) or, by default, a small class-conditional
UNet trained on the data (cached; ddcli.priors). Then ``relabel`` + ``evaluate -p otm`` (or
``distill --relabel``) complete the paper's pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddcli.errors import InputError
from ddcli.losses import deviation_cost, ot_guidance_cost
from ddcli.methods import register_method
from ddcli.methods.base import Method, MethodConfig, SyntheticSet
from ddcli.priors import PriorRecipe, load_prior, train_prior
from ddcli.runtime import cache_dir


@dataclass(frozen=True)
class OTGenConfig(MethodConfig):
    """Attributes:
        ipc: samples per class.
        prior: a local diffusers pipeline folder (None: train a UNet prior on the data).
        prior_steps: training steps of that prior.
        prior_channels: its UNet's block widths.
        prior_batch: its training batch size.
        sampling_steps: DDIM steps per sample.
        cfg_scale: classifier-free guidance (priors with a null class).
        ot_scale: β₁, the RMS step of the OT guidance per element (0: unguided sampling).
        ot_reg: λ₁, the Sinkhorn regulariser.
        dev_scale: γ, the RMS step of the deviation (diversity) guidance (0: off).
        window_start, window_end: the guided part of the sampling, as fractions of the steps.
        real_per_class: real samples per class in the OT cost.
    """

    ipc: int = 10
    prior: str | None = None
    prior_steps: int = 20000
    prior_channels: tuple[int, ...] = (64, 128, 128)
    prior_batch: int = 128
    sampling_steps: int = 50
    cfg_scale: float = 2.0
    ot_scale: float = 0.1
    ot_reg: float = 0.05
    dev_scale: float = 0.0
    window_start: float = 0.6
    window_end: float = 0.9
    real_per_class: int = 256

    # a demonstration on a 2-core CPU: a tiny prior, few steps (quality is not the point)
    presets = {"sample-cpu": {"ipc": 2, "prior_steps": 150, "prior_batch": 32,
                              "prior_channels": (16, 32), "sampling_steps": 10,
                              "real_per_class": 64}}

    def validate(self) -> None:
        if min(self.ipc, self.sampling_steps, self.real_per_class, self.prior_batch) < 1:
            raise InputError("--ipc, --sampling-steps, --real-per-class and the prior batch "
                             "must be >= 1")
        if self.prior_steps < 0 or self.ot_scale < 0 or self.dev_scale < 0:
            raise InputError("--prior-steps, --ot-scale and --dev-scale must be >= 0")
        if not self.ot_reg > 0:
            raise InputError(f"--ot-reg must be > 0, got {self.ot_reg}")
        if not 0 <= self.window_start <= self.window_end <= 1:
            raise InputError("the guidance window needs 0 <= start <= end <= 1")


def _unit_rms(g: torch.Tensor) -> torch.Tensor:
    return g / (g.pow(2).mean().sqrt() + 1e-12)


@register_method
class OTGen(Method):
    name = "otgen"
    Config = OTGenConfig

    @property
    def iterations(self) -> int:  # one sample per step
        return self.num_classes * self.config.ipc if hasattr(self, "num_classes") else 0

    def setup(self, data, device, generator, mean, std) -> None:
        cfg: OTGenConfig = self.config
        self.gen = generator
        self.num_classes = data.num_classes
        self.image_size = data.image_size
        self.channels = data.channels
        folder = cfg.prior
        if folder is None:
            with self.setup_progress("diffusion prior", cfg.prior_steps) as update:
                folder, _ = train_prior(data, device=device, cache=cache_dir(),
                                        recipe=PriorRecipe(steps=cfg.prior_steps,
                                                           batch_size=cfg.prior_batch,
                                                           channels=tuple(cfg.prior_channels)),
                                        progress=update)
        self.prior = load_prior(folder, data.classes).to(device)
        self.prior_source = str(folder)
        self.class_ids = torch.tensor([self.prior.label_ids[c] for c in data.classes],
                                      device=device)
        # real samples of every class in the prior's space, encoded once
        reals = []
        with torch.no_grad():
            for c in range(data.num_classes):
                idx = torch.nonzero(data.labels == c).flatten()
                order = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(c))
                pick = idx[order[: cfg.real_per_class]]
                x = data.images[pick].to(device).float() / 255
                x = self._to_prior_pixels(x)
                reals.append(self.prior.encode(x).flatten(1))
        self.reals = reals
        n = data.num_classes * cfg.ipc
        self.memory = torch.zeros((n, reals[0].shape[1]), device=device)
        self.images = torch.zeros((n, data.channels, *data.image_size), device=device)
        self.labels = torch.arange(data.num_classes, device=device).repeat_interleave(cfg.ipc)

    def _to_prior_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Data pixels -> the prior's pixel size (for latent priors: the VAE's input)."""
        if self.prior.latent:
            size = tuple(s * 8 for s in self.prior.sample_shape[1:])  # SD-style VAEs: /8
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def _to_data_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != tuple(self.image_size):
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def step(self, it: int) -> torch.Tensor:
        cfg: OTGenConfig = self.config
        c, j = divmod(it, cfg.ipc)
        prior, sched = self.prior, self.prior.scheduler
        sched.set_timesteps(cfg.sampling_steps)
        dev = self.memory.device
        z = torch.randn((1, *prior.sample_shape), generator=self.gen, device=dev)
        label = self.class_ids[c : c + 1]
        memory = self.memory[c * cfg.ipc : c * cfg.ipc + j]
        lo = int(cfg.window_start * cfg.sampling_steps)
        hi = int(cfg.window_end * cfg.sampling_steps)
        cost = torch.zeros((), device=dev)
        for i, t in enumerate(sched.timesteps):
            guided = lo <= i < hi and (cfg.ot_scale > 0 or cfg.dev_scale > 0)
            z_in = z.detach().requires_grad_(guided)
            with torch.set_grad_enabled(guided):
                eps = prior.eps(z_in, t, label, cfg.cfg_scale)
                a = sched.alphas_cumprod[int(t)].to(dev)
                x0 = (z_in - (1 - a).sqrt() * eps) / a.sqrt()
                nudge = torch.zeros_like(z)
                if guided and cfg.ot_scale > 0:
                    cost, _ = ot_guidance_cost(torch.cat([memory, x0.flatten(1)]), self.reals[c],
                                               cfg.ot_reg)
                    (g,) = torch.autograd.grad(cost, z_in, retain_graph=cfg.dev_scale > 0)
                    nudge = nudge + cfg.ot_scale * _unit_rms(g)
                if guided and cfg.dev_scale > 0 and memory.shape[0]:
                    (g,) = torch.autograd.grad(deviation_cost(x0.flatten(), memory), z_in)
                    nudge = nudge + cfg.dev_scale * _unit_rms(g)
            with torch.no_grad():
                z = sched.step(eps.detach(), t, z.detach(), generator=self.gen).prev_sample - nudge
        with torch.no_grad():
            self.memory[it] = z.flatten()
            self.images[it] = self._to_data_pixels(prior.decode(z))[0]
        return cost.detach()

    def state(self) -> dict[str, torch.Tensor]:
        return {"memory": self.memory, "images": self.images}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory.copy_(state["memory"])
        self.images.copy_(state["images"])

    def result(self) -> SyntheticSet:
        return SyntheticSet(self.images.cpu(), self.labels.cpu())

    def recorded_config(self) -> dict:
        return {**super().recorded_config(), "prior_source": self.prior_source,
                "prior_kind": self.prior.kind, "latent": self.prior.latent}
