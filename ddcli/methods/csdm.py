"""CSDM: class-aware spectral distribution matching (methods.md §2), and SDM, its class-agnostic
form.

The DM loop (ddcli.methods.dm) with three changes:

1. the loss: per class, the gap between the characteristic functions of real and synthetic
   features (L2-normalised), at frequencies ω drawn every iteration from the kernel's spectral
   measure (so E_ω |φ_R − φ_S|² = MMD²_k), split into amplitude A (diversity) and phase P
   (realism), weighted α(c)·A + (1 − α(c))·P;
2. α(c) follows the real class frequencies: head classes lean to diversity, tail classes to
   realism (``alpha_schedule``); SDM and balanced data use α = ½ (kernel MMD);
3. the loop is NCFM's (gszfwsb/NCFM ``condenser/Condenser.py``, ``compute_loss.py``,
   ``utils/utils.py``, ``config/ipc10/cifar10.yaml``), as the paper builds on it: synthetic
   images in [0, 1] pixels, clamped at the start of every iteration; AdamW lr 1e-3 (the config's
   ``lr_img`` 0.01 times its ``lr_scale_adam`` 0.1), weight decay 5e-4; **one optimiser step
   per class** in class order, each on the whole tensor (computed exactly from one batched
   gradient, :func:`sequential_optimizer_steps`); ReduceLROnPlateau(0.5, patience 500) on the
   iteration's mean class loss; one DSA draw of ``color_crop_cutout`` (every family) per class,
   shared by its real and synthetic images. The extractor is a fresh random network (DM-style)
   or, with ``--extractor pool``, NCFM's: each iteration one of 20 networks trained 60 epochs,
   its weights blended l·init + (1 − l)·trained with l ~ U(0, 1).

What the paper leaves unknown (α values, kernels and bandwidths) follows the proposals of
methods.md §2 — the α schedule (0.7 / 0.3) and the kernel are guesses, not the paper's; every
choice is a flag recorded in the bundle. docs/fidelity.md lists what differs from NCFM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ddcli import augment, formation
from ddcli.configs import CSDMConfig, SDMConfig
from ddcli.experts import EXPERT_RECIPE
from ddcli.losses import alpha_schedule, sample_frequencies, spectral_loss
from ddcli.methods import register_method
from ddcli.methods.dm import DM
from ddcli.runtime import cache_dir


def sequential_optimizer_steps(
    opt: torch.optim.Optimizer, param: torch.Tensor, class_of: torch.Tensor, num_classes: int,
    class_losses: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """NCFM's per-class update — for c in classes: zero_grad; loss_c.backward(); opt.step() — on
    one tensor ``param`` holding every class's images, computed with one batched gradient.

    Class c's loss depends only on its own images, which before its step have moved only by
    the gradient-free steps of the classes before it (momentum, weight decay). So: replay the C
    steps with zero gradients to record where each class's images stand at its turn, restore,
    take every class's gradient at that point in one pass, and replay the C steps with class
    c's gradient alone at step c. Exact for any element-wise optimiser (SGD, Adam, AdamW).
    Returns the (C,) losses."""
    start = param.detach().clone()
    state = {k: (v.clone() if torch.is_tensor(v) else v)
             for k, v in opt.state.get(param, {}).items()}
    view = (-1,) + (1,) * (param.dim() - 1)
    at_turn = torch.empty_like(start)
    with torch.no_grad():
        for c in range(num_classes):
            mine = (class_of == c).view(view)
            at_turn = torch.where(mine, param, at_turn)
            param.grad = torch.zeros_like(param)
            opt.step()
        param.copy_(start)
    opt.state[param] = state
    point = at_turn.detach().requires_grad_(True)
    losses = class_losses(point)
    (g,) = torch.autograd.grad(losses.sum(), point)
    for c in range(num_classes):
        param.grad = torch.where((class_of == c).view(view), g, 0.0)
        opt.step()
    param.grad = None
    return losses.detach()


#: NCFM's extractor pool: TGDD's expert recipe (SGD 0.01, x0.2 at 2/3 and 5/6, colour + crop,
#: CutMix) at NCFM's batch 128 (gszfwsb/NCFM pretrain/pretrain_script.py)
POOL_RECIPE = dataclasses.replace(EXPERT_RECIPE, name="ncfm-pool", batch_size=128,
                                  reference="NCFM pretrain: batch 128, colour + crop, CutMix")


def plateau_update(lr: float, best: float, bad: int, value: float, patience: int,
                   factor: float) -> tuple[float, float, int]:
    """One step of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode min, relative threshold
    1e-4, no cooldown): returns (lr, best, bad)."""
    if value < best * (1 - 1e-4):
        return lr, value, 0
    bad += 1
    if bad > patience:
        return lr * factor, best, 0
    return lr, best, bad


@register_method
class CSDM(DM):
    name = "csdm"
    Config = CSDMConfig
    pixel_space = True  # NCFM optimises [0, 1] pixels, not normalised values

    def setup(self, data, device, generator, mean, std) -> None:
        cfg: CSDMConfig = self.config
        super().setup(data, device, generator, mean, std)
        self.alpha = alpha_schedule(data.class_counts, cfg.alpha_schedule, cfg.alpha_head,
                                    cfg.alpha_tail).to(device)
        self.members = None
        if cfg.extractor == "pool":
            self.members = self._pretrained_pool(data, device)
            # which pool member, and its blend, are drawn on the CPU: no device sync
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))
            self.pick_gen = torch.Generator().manual_seed(seed)
        self.sigma = self._bandwidth() if cfg.sigma == "median" else float(cfg.sigma)
        self.plateau = {"best": float("inf"), "bad": 0}
        # per-class losses of the iterations not yet read back (a column each; under torchrun
        # each rank fills its classes' rows, gathered at read-back)
        self.pending = torch.zeros((data.num_classes, self.PLATEAU_EVERY), device=device)
        self.pending_n = 0

    def _pretrained_pool(self, data, device) -> list[tuple[dict, dict]]:
        """(initial, trained) weights of ``pool_size`` networks (cached, ddcli.experts)."""
        from ddcli.experts import build_experts, load_trajectory

        cfg: CSDMConfig = self.config
        with self.setup_progress("extractor pool", cfg.pool_epochs, unit="epochs") as update:
            paths = build_experts(data, num=cfg.pool_size, device=device, cache=cache_dir(),
                                  arch=cfg.model, epochs=cfg.pool_epochs, width=cfg.width,
                                  progress=update, recipe=POOL_RECIPE, stream="pool",
                                  ends_only=True, seed=self.seed)
        pairs = []
        for path in paths:
            snaps = load_trajectory(path, data.fingerprint).snapshots
            pairs.append(tuple({k: v.to(device) for k, v in snaps[j].items()} for j in (0, -1)))
        return pairs

    @torch.no_grad()
    def _bandwidth(self) -> float:
        """Median pairwise distance of normalised real features under one extractor, in the
        kernel's metric: L1 for the Laplacian kernel exp(−‖δ‖₁/σ) (on 1,024 features L1
        distances are some 25× the L2 ones: at an L2 bandwidth that kernel is ≈ 0 between any
        two images, benchmarks/RESULTS.md), L2 for the others."""
        net = self.extractor()
        x = self.pool.sample(min(64, self.config.batch_real), self.gen)
        f = torch.nn.functional.normalize(self._embed(net, x), dim=1)
        d = torch.cdist(f, f, p=1.0 if self.config.kernel == "laplacian" else 2.0)
        return float(d[d > 0].median()) if (d > 0).any() else 1.0

    def make_optimizer(self) -> torch.optim.Optimizer:
        cfg: CSDMConfig = self.config
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW([self.syn], lr=cfg.lr, weight_decay=cfg.weight_decay)
        return super().make_optimizer()

    @torch.no_grad()
    def extractor(self) -> torch.nn.Module:
        """A fresh random network, or NCFM's: a pool member's weights l·init + (1 − l)·trained,
        l ~ U(0, 1) (``utils.update_feature_extractor``)."""
        if self.members is None:
            return super().extractor()
        i = int(torch.randint(len(self.members), (1,), generator=self.pick_gen))
        lam = float(torch.rand((), generator=self.pick_gen))
        init, trained = self.members[i]
        for k, v in self.net.state_dict().items():
            v.copy_(torch.lerp(trained[k], init[k], lam))
        return self.net

    #: the plateau scheduler reads the losses back every this many iterations
    PLATEAU_EVERY = 10

    def class_state_keys(self) -> set[str]:
        return super().class_state_keys() | {"pending"}

    def step(self, it: int) -> torch.Tensor:
        cfg: CSDMConfig = self.config
        c = self.num_classes
        mine = self.own_classes  # torchrun: this rank's classes, from every class's draws
        self.clamp_pixels()
        net = self.extractor()
        real = self.pool.next_batch(cfg.batch_real, self.gen, self.classes)
        # one draw of every family per class, shared by its real and synthetic images (NCFM:
        # DiffAug(color_crop_cutout, batch=True) on cat([real, syn]) of the class)
        params = augment.sample_params(c, self.gen, cfg.dsa_strategy, all_families=True)
        with torch.no_grad():
            f_real = self._embed(net, augment.apply(real, params, self.own_rows(self.real_rows)))
        f_real = torch.nn.functional.normalize(f_real.view(mine, cfg.batch_real, -1), dim=-1)
        freqs = sample_frequencies(cfg.kernel, cfg.num_freqs, f_real.shape[-1], self.sigma,
                                   self.gen)
        alpha, dec_labels = self.own_rows(self.alpha), self.own_rows(self.dec_labels)

        def class_losses(pixels: torch.Tensor) -> torch.Tensor:
            x = formation.decode(self.pool.normalize_float(self.own_rows(pixels)), self.factor)
            f_syn = self._embed(net, augment.apply(x, params, dec_labels))
            f_syn = torch.nn.functional.normalize(f_syn.view(mine, -1, f_syn.shape[-1]), dim=-1)
            return spectral_loss(f_real, f_syn, freqs, alpha, cfg.reduction, cfg.scale)

        if cfg.step_mode == "per-class":
            losses = sequential_optimizer_steps(self.opt, self.syn, self.syn_labels, c,
                                                class_losses)
        else:
            losses = class_losses(self.syn)
            self.opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.opt.step()
            losses = losses.detach()
        self._plateau_step(losses)
        return losses.sum()

    def _plateau_step(self, class_losses: torch.Tensor) -> None:
        """NCFM's ReduceLROnPlateau on the iteration's mean class loss. The losses are read
        back every :attr:`PLATEAU_EVERY` iterations (not every one: no device sync per
        iteration), so a reduction takes effect at most that many − 1 iterations late. Under
        torchrun the ranks' class rows are gathered then (bit-exact), so every rank sums the
        same C losses in the same order as one process."""
        cfg: CSDMConfig = self.config
        if not cfg.plateau_patience:
            return
        self.own_rows(self.pending)[:, self.pending_n] = class_losses.detach()
        self.pending_n += 1
        if self.pending_n < self.PLATEAU_EVERY:
            return
        full = self.pending if self.dist is None else self.dist.gather_classes(
            self.pending, self.num_classes)
        group = self.opt.param_groups[0]
        lr, best, bad = group["lr"], self.plateau["best"], self.plateau["bad"]
        for v in (full.sum(dim=0) / self.num_classes).tolist():
            lr, best, bad = plateau_update(lr, best, bad, v, cfg.plateau_patience,
                                           cfg.plateau_factor)
        group["lr"], self.plateau = lr, {"best": best, "bad": bad}
        self.pending_n = 0

    def recorded_config(self) -> dict:
        # the bandwidth in use: ``--sigma median`` is measured at setup from the seed's draws
        return {**super().recorded_config(), "sigma_used": self.sigma}

    def state(self) -> dict[str, torch.Tensor]:
        st = super().state()
        st["lr"] = torch.tensor(self.opt.param_groups[0]["lr"], dtype=torch.float64)
        st["plateau"] = torch.tensor([self.plateau["best"], self.plateau["bad"]],
                                     dtype=torch.float64)
        st["pending"] = self.pending
        st["pending_n"] = torch.tensor(self.pending_n)
        if self.members is not None:
            st["pick_gen"] = self.pick_gen.get_state()
        return st

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if "pick_gen" in state:
            self.pick_gen.set_state(state.pop("pick_gen").cpu())
        self.opt.param_groups[0]["lr"] = float(state.pop("lr"))
        best, bad = state.pop("plateau").tolist()
        self.plateau = {"best": best, "bad": int(bad)}
        self.pending.copy_(state.pop("pending"))
        self.pending_n = int(state.pop("pending_n"))
        super().load_state(state)


@register_method
class SDM(CSDM):
    name = "sdm"
    Config = SDMConfig
