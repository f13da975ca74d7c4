"""otgen: OT-guided sampling from a class-conditional diffusion prior (methods.md §5.2).

Per class, IPC samples are generated one after another, with IGD's sampler as the base
(mchen725/DD_IGD, ``IGD/diffusion/gaussian_diffusion.py``): 50 respaced steps of ancestral
(DDPM) sampling, timesteps ``linspace(0, T−1, 50)`` as IGD's respacing, classifier-free guidance
(4.0 for DiT priors, as IGD). Inside a window of **timesteps** — the respaced index r (counting
down from S−1) with ``window_start·S <= r <= window_end·S``, IGD's [30, 45] of 50: the
high-noise start of sampling, where a sample's mode is decided — the sampled z_{t−1} is guided:

    z_{t−1} = sample(z_t, ε) − ρ_t·β₁·ĝ_W − γ·∇_{z_t} cos(z_t, m*)

* ĝ_W = ∇_{z_t} G_W / RMS(∇_{z_t} G_W), G_W = ⟨P, C⟩ the entropic OT cost (POT, plan detached)
  between the class's samples so far plus the predicted clean sample x̂₀ of this step, and a
  batch of real samples of the class (in the prior's latent space when it has a VAE), L1 cost;
* ρ_t = 0.0015·RMS(ε)·√(1 − ᾱ_t): IGD's step for its influence guidance, so ``ot_scale`` = β₁
  plays IGD's ``gm_scale`` k (5 in its DiT scripts, the default for DiT priors), the OT term
  taking the influence term's step (the influence term itself is off by default, below); 15
  for ddcli's pixel-space UNet priors (chosen on a validation split);
* the deviation term is IGD's: the cosine of z_t to the most similar latent already generated
  for the class, its raw gradient scaled by ``dev_scale`` (IGD 50–120 for DiT; 0 = off);
* with ``influence_scale`` k > 0, IGD's influence term: − ρ_t·k·ĝ_I, ĝ_I the RMS-normalised
  gradient of G_I = mean over the surrogate's checkpoints of 1 − cos(∇_θ CE(f_θ(x̂₀), c),
  mean real ∇_θ CE) (``influence_cost``), x̂₀ decoded to the data's pixels and normalised as
  the surrogate's training data; the surrogate is a ConvNet trained on the real data (a cached
  trajectory, ddcli.experts) and the real gradients are computed once per class and
  checkpoint (IGD ``sample_mp.py`` / ``gaussian_diffusion.py``). Off by default.
The prior is ``--prior DIR`` (a local diffusers folder) or, by default, a small class-conditional
UNet trained on the data and sampled from the EMA of its weights (cached; ddcli.priors). Then
``relabel`` + ``evaluate -p otm`` (or ``distill --relabel``) complete the paper's pipeline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from ddcli.configs import OTGenConfig
from ddcli.experts import EXPERT_RECIPE, build_experts, load_trajectory
from ddcli.io import tree_sha256
from ddcli.losses import deviation_cost, influence_cost, ot_guidance_cost
from ddcli.methods import register_method
from ddcli.methods.base import Method, SyntheticSet
from ddcli.models import create_model
from ddcli.priors import PriorRecipe, load_prior, train_prior
from ddcli.runtime import cache_dir

#: IGD's step constant: ρ_t = IGD_STEP · RMS(ε) · √(1 − ᾱ_t)
IGD_STEP = 0.0015
#: classifier-free guidance by prior kind when --cfg-scale is not given: IGD samples DiT at 4.0;
#: ddcli's own UNet priors at 2.0 (4.0 measured the same on a validation split: RESULTS.md)
DEFAULT_CFG = {"dit": 4.0, "unet": 2.0}
#: β₁ by prior kind when --ot-scale is not given: IGD's k (5) for DiT latents; 15 for ddcli's
#: pixel-space UNet priors, the best of 0 / 5 / 15 / 50 on a validation split (the built-in
#: sample, benchmarks/otgen_val.sh: 66.9 / 71.8 / 73.9 / 73.1 % under `otm`; RESULTS.md)
DEFAULT_OT_SCALE = {"dit": 5.0, "unet": 15.0}


#: the influence surrogate's training (IGD ``train_ckpts.py`` + ``train_ckpt.sh``): SGD lr 0.01,
#: momentum 0.9, wd 5e-4, batch 64, constant lr, crop / flip / colour augmentation, no mixup;
#: every epoch's weights kept (ddcli.experts), in its own seed stream
SURROGATE_RECIPE = dataclasses.replace(
    EXPERT_RECIPE, name="igd-surrogate", lr_milestones=(), cutmix_prob=0.0,
    reference="IGD train_ckpts.py: SGD 0.01, momentum 0.9, wd 5e-4, batch 64, constant lr")
SURROGATE_STREAM = "surrogate"


def ce_param_grad(net: torch.nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor,
                  label: int, create_graph: bool = False) -> torch.Tensor:
    """The flat gradient, over ``net``'s parameters set to ``state``, of the mean cross-entropy
    of ``x`` against ``label`` (IGD's ``ReparamModule`` with a flat parameter vector)."""
    names = [n for n, _ in net.named_parameters()]
    params = {n: state[n].detach().requires_grad_(True) for n in names}
    buffers = {k: v for k, v in state.items() if k not in params}
    logits = torch.func.functional_call(net, {**params, **buffers}, (x,))
    target = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
    grads = torch.autograd.grad(F.cross_entropy(logits, target), list(params.values()),
                                create_graph=create_graph)
    return torch.cat([g.flatten() for g in grads])


def class_images(data, c: int, n: int, device) -> torch.Tensor:
    """``n`` real images of class ``c`` (0..1 floats on ``device``), in an order fixed per
    class: the OT cost's and the influence term's real samples."""
    idx = torch.nonzero(data.labels == c).flatten()
    order = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(c))
    return data.images[idx[order[:n]]].to(device).float() / 255


def guided_indices(steps: int, start: float, end: float) -> list[int]:
    """Loop indices i (0 = the first, noisiest step) whose respaced timestep r = steps − 1 − i
    lies in [start·steps, end·steps]: IGD's ``low <= t <= high`` with t counting down."""
    return [i for i in range(steps) if start * steps <= steps - 1 - i <= end * steps]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


def igd_step(grad: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor,
             scale: float) -> torch.Tensor:
    """IGD's guidance step (``gaussian_diffusion.py``: ``rho_t = 0.0015·RMS(ε)/RMS(g) ·
    sqrt(1 − ᾱ_t)``, times ``gm_scale``): ``scale · ρ_t · g / RMS(g)``."""
    rho = IGD_STEP * _rms(eps) * (1 - alpha_bar).sqrt()
    return scale * rho * grad / (_rms(grad) + 1e-12)


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
            with self.setup_progress("diffusion prior", cfg.prior_steps,
                                     unit="steps") as update:
                folder, _ = train_prior(data, device=device, cache=cache_dir(),
                                        recipe=PriorRecipe.of(cfg), seed=self.seed,
                                        progress=update)
        self.prior = load_prior(folder, data.classes).to(device)
        self.prior_source = str(folder)
        self.prior_sha256 = tree_sha256(Path(folder))  # what --prior DIR held, not only where
        self.cfg = cfg.cfg_scale if cfg.cfg_scale is not None else DEFAULT_CFG[self.prior.kind]
        self.ot_scale = (cfg.ot_scale if cfg.ot_scale is not None
                         else DEFAULT_OT_SCALE[self.prior.kind])
        self.scheduler = self.prior.sampler(cfg.sampler)
        self.scheduler.set_timesteps(cfg.sampling_steps)
        self.guided = set(guided_indices(cfg.sampling_steps, cfg.window_start, cfg.window_end))
        #: the (original) timesteps the last sample was guided at, for reports and tests
        self.guided_timesteps: list[int] = []
        self.class_ids = torch.tensor([self.prior.label_ids[c] for c in data.classes],
                                      device=device)
        # real samples of every class in the prior's space, encoded once
        reals = []
        with torch.no_grad():
            for c in range(data.num_classes):
                x = self._to_prior_pixels(class_images(data, c, cfg.real_per_class, device))
                reals.append(self.prior.encode(x).flatten(1))
        self.reals = reals
        self.surrogate_source = None
        if cfg.influence_scale > 0:
            self._setup_influence(data, device)
        n = data.num_classes * cfg.ipc
        self.memory = torch.zeros((n, reals[0].shape[1]), device=device)
        self.images = torch.zeros((n, data.channels, *data.image_size), device=device)
        self.labels = torch.arange(data.num_classes, device=device).repeat_interleave(cfg.ipc)

    def _setup_influence(self, data, device) -> None:
        """The surrogate's checkpoints and, per class and checkpoint, its mean CE parameter
        gradient on ``influence_real_per_class`` real images (IGD's real-gradient memory)."""
        cfg: OTGenConfig = self.config
        with self.setup_progress("influence surrogate", cfg.surrogate_epochs,
                                 unit="epochs") as update:
            (path,) = build_experts(data, num=1, device=device, cache=cache_dir(),
                                    epochs=cfg.surrogate_epochs, seed=self.seed,
                                    progress=update, recipe=SURROGATE_RECIPE,
                                    stream=SURROGATE_STREAM)
        traj = load_trajectory(path, data.fingerprint)
        self.surrogate_source = str(path)
        self.surrogate = create_model(traj.arch, data.num_classes, data.channels,
                                      data.image_size, width=traj.meta["width"]).to(device)
        self.surrogate.eval().requires_grad_(False)
        self.checkpoints = [{k: v.to(device) for k, v in traj.snapshots[e].items()}
                            for e in cfg.surrogate_checkpoints]
        shape = (1, -1, 1, 1)
        self.norm = (torch.tensor(traj.meta["mean"], device=device).view(shape),
                     torch.tensor(traj.meta["std"], device=device).view(shape))
        grads = []
        for c in range(data.num_classes):
            x = class_images(data, c, cfg.influence_real_per_class, device)
            x = (x - self.norm[0]) / self.norm[1]
            grads.append(torch.stack([ce_param_grad(self.surrogate, s_, x, c)
                                      for s_ in self.checkpoints]))
        self.real_grads = grads  # per class: (checkpoints, parameters)

    def influence(self, x0: torch.Tensor, c: int) -> torch.Tensor:
        """G_I of the predicted clean sample ``x0`` (the prior's space) for class ``c``."""
        x = (self._to_data_pixels(self.prior.decode(x0)) - self.norm[0]) / self.norm[1]
        pseudo = torch.stack([ce_param_grad(self.surrogate, s_, x, c, create_graph=True)
                              for s_ in self.checkpoints])
        return influence_cost(pseudo, self.real_grads[c])

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
        prior, sched = self.prior, self.scheduler
        dev = self.memory.device
        z = torch.randn((1, *prior.sample_shape), generator=self.gen, device=dev)
        label = self.class_ids[c : c + 1]
        memory = self.memory[c * cfg.ipc : c * cfg.ipc + j]
        cost = torch.zeros((), device=dev)
        ot_on, dev_on = self.ot_scale > 0, cfg.dev_scale > 0 and j > 0
        infl_on = cfg.influence_scale > 0
        self.guided_timesteps = []
        for i, t in enumerate(sched.timesteps):
            guided = i in self.guided and (ot_on or dev_on or infl_on)
            z_in = z.detach().requires_grad_(guided)
            nudge = torch.zeros_like(z)
            with torch.set_grad_enabled(guided):
                eps = prior.eps(z_in, t, label, self.cfg)
                a = sched.alphas_cumprod[int(t)].to(dev)
                if guided:
                    self.guided_timesteps.append(int(t))
                    x0 = (z_in - (1 - a).sqrt() * eps) / a.sqrt()
                    # IGD's step for each term through the prior: (cost, scale)
                    terms = []
                    if ot_on:
                        cost, _ = ot_guidance_cost(torch.cat([memory, x0.flatten(1)]),
                                                   self.reals[c], cfg.ot_reg)
                        terms.append((cost, self.ot_scale))
                    if infl_on:
                        terms.append((self.influence(x0, c), cfg.influence_scale))
                    for n, (term, scale) in enumerate(terms):
                        (g,) = torch.autograd.grad(term, z_in, retain_graph=n < len(terms) - 1)
                        nudge = nudge + igd_step(g, eps.detach(), a, scale)
                if guided and dev_on:
                    (g,) = torch.autograd.grad(deviation_cost(z_in.flatten(), memory), z_in)
                    nudge = nudge + cfg.dev_scale * g
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
        # prior_trained: how the prior was really trained (the prior_* options apply only when
        # ddcli trains it; with --prior DIR, the folder's own recipe, None for a foreign one)
        given = ({k: None for k in self.config.PRIOR_TRAINING}  # (they trained nothing)
                 if self.config.prior is not None else {})
        return {**super().recorded_config(), **given, "prior_source": self.prior_source,
                "prior_sha256": self.prior_sha256,
                "prior_trained": self.prior.trained, "prior_kind": self.prior.kind,
                "latent": self.prior.latent,
                "cfg_scale_used": self.cfg, "ot_scale_used": self.ot_scale,
                "null_class_id": self.prior.null_id,
                "surrogate_source": self.surrogate_source,
                "guided_timesteps": [int(t) for i, t in enumerate(self.scheduler.timesteps)
                                     if i in self.guided] if self.guides else []}

    @property
    def guides(self) -> bool:
        """Whether any guidance term is on (the window alone guides nothing)."""
        cfg = self.config
        # (the deviation term guides a class's second sample on: nothing at IPC 1)
        return bool(self.ot_scale or (cfg.dev_scale and cfg.ipc > 1) or cfg.influence_scale)

    def run_inputs(self) -> dict[str, str]:
        # what --prior DIR holds: a folder retrained between a kill and --resume mixed two
        # priors' samples in one bundle
        return {"prior_sha256": self.prior_sha256}
