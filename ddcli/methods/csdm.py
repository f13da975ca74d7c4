"""CSDM: class-aware spectral distribution matching (methods.md §2), and SDM, its class-agnostic
form.

The DM loop (ddcli.methods.dm) with three changes:

1. the loss: per class, the gap between the characteristic functions of real and synthetic
   features (L2-normalised), at frequencies ω drawn every iteration from the kernel's spectral
   measure (so E_ω |φ_R − φ_S|² = MMD²_k), split into amplitude A (diversity) and phase P
   (realism), weighted α(c)·A + (1 − α(c))·P;
2. α(c) follows the real class frequencies: head classes lean to diversity, tail classes to
   realism (``alpha_schedule``); SDM and balanced data use α = ½ (kernel MMD);
3. the optimiser is AdamW on pixels (NCFM's), and the extractor is a fresh random network
   (DM-style) or one of a pool of networks pre-trained on the real data (NCFM-style, trained
   once and cached).

What the paper leaves unknown (α values, kernels and bandwidths, loop, optimiser) follows the
proposals of methods.md §2; every choice is a flag recorded in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddcli.errors import InputError
from ddcli.losses import KERNELS, alpha_schedule, sample_frequencies, spectral_loss
from ddcli.methods import register_method
from ddcli.methods.dm import DM, DMConfig
from ddcli.runtime import cache_dir


@dataclass(frozen=True)
class CSDMConfig(DMConfig):
    """CSDM hyper-parameters (DM's, plus):

    Attributes:
        optimizer: ``adamw`` (default, lr 0.01 as NCFM) or ``sgd`` (with ``momentum``).
        kernel: one of gaussian, laplacian, cauchy, matern-0.5, matern-1.5, matern-2.5.
        sigma: the bandwidth, a number or ``median`` (median pairwise distance of normalised
            real features, measured once at the start).
        num_freqs: frequencies drawn per iteration (shared by the classes).
        reduction: ``sqrt-mean`` (NCFM's, scaled by ``scale``) or ``mean`` (unbiased SDD).
        scale: loss scale.
        alpha_schedule: ``log-linear``, ``two-group`` or ``constant`` (α = ½).
        alpha_head, alpha_tail: α of the largest and of the smallest class.
        extractor: ``random`` (a fresh network per iteration) or ``pool`` (one of
            ``pool_size`` networks trained ``pool_epochs`` epochs on the real data, cached).
    """

    lr: float = 0.01
    optimizer: str = "adamw"
    kernel: str = "gaussian"
    sigma: str = "1.0"
    num_freqs: int = 4096
    reduction: str = "sqrt-mean"
    scale: float = 300.0
    alpha_schedule: str = "log-linear"
    alpha_head: float = 0.7
    alpha_tail: float = 0.3
    extractor: str = "random"
    pool_size: int = 10
    pool_epochs: int = 20

    presets = {"sample-cpu": {"iterations": 150, "batch_real": 32, "width": 64,
                              "channels_last": True, "num_freqs": 1024}}

    def validate(self) -> None:
        super().validate()
        if self.optimizer not in ("adamw", "sgd"):
            raise InputError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.kernel not in KERNELS:
            raise InputError(f"--kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.sigma != "median":
            try:
                assert float(self.sigma) > 0
            except (ValueError, AssertionError):
                raise InputError(f"--sigma must be > 0 or 'median', got {self.sigma!r}") from None
        if self.num_freqs < 1:
            raise InputError(f"--num-freqs must be >= 1, got {self.num_freqs}")
        if self.reduction not in ("mean", "sqrt-mean"):
            raise InputError(f"--reduction must be mean or sqrt-mean, got {self.reduction!r}")
        if self.alpha_schedule not in ("log-linear", "two-group", "constant"):
            raise InputError(f"--alpha-schedule must be log-linear, two-group or constant, got "
                             f"{self.alpha_schedule!r}")
        if not (0 <= self.alpha_tail <= 1 and 0 <= self.alpha_head <= 1):
            raise InputError("--alpha-head and --alpha-tail must lie in [0, 1]")
        if self.extractor not in ("random", "pool"):
            raise InputError(f"--extractor must be random or pool, got {self.extractor!r}")
        if self.pool_size < 1 or self.pool_epochs < 1:
            raise InputError("--pool-size and --pool-epochs must be >= 1")


@dataclass(frozen=True)
class SDMConfig(CSDMConfig):
    """SDM: CSDM with α = ½ for every class (kernel MMD through the spectrum)."""

    alpha_schedule: str = "constant"


@register_method
class CSDM(DM):
    name = "csdm"
    Config = CSDMConfig

    def setup(self, data, device, generator, mean, std) -> None:
        cfg: CSDMConfig = self.config
        super().setup(data, device, generator, mean, std)
        self.alpha = alpha_schedule(data.class_counts, cfg.alpha_schedule, cfg.alpha_head,
                                    cfg.alpha_tail).to(device)
        self.nets = None
        if cfg.extractor == "pool":
            self.nets = self._pretrained_pool(data, device)
            # which pool member to use is drawn on the CPU: no device sync per iteration
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))
            self.pick_gen = torch.Generator().manual_seed(seed)
        self.sigma = self._bandwidth() if cfg.sigma == "median" else float(cfg.sigma)

    def _pretrained_pool(self, data, device) -> list[torch.nn.Module]:
        from ddcli.teachers import train_teacher

        cfg: CSDMConfig = self.config
        nets = []
        for i in range(cfg.pool_size):
            t, _ = train_teacher(data, cfg.model, device=device, seed=1000 + i,
                                 epochs=cfg.pool_epochs, cache=cache_dir())
            nets.append(t.model.requires_grad_(False).eval())
        return nets

    @torch.no_grad()
    def _bandwidth(self) -> float:
        """Median pairwise distance of normalised real features under one extractor."""
        net = self.extractor()
        x = self.pool.sample(min(64, self.config.batch_real), self.gen)
        f = torch.nn.functional.normalize(self._embed(net, x), dim=1)
        d = torch.cdist(f, f)
        return float(d[d > 0].median()) if (d > 0).any() else 1.0

    def make_optimizer(self) -> torch.optim.Optimizer:
        cfg: CSDMConfig = self.config
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW([self.syn], lr=cfg.lr)
        return super().make_optimizer()

    def extractor(self) -> torch.nn.Module:
        if self.nets is None:
            return super().extractor()
        i = int(torch.randint(len(self.nets), (1,), generator=self.pick_gen))
        return self.nets[i]

    def match_loss(self, f_real: torch.Tensor, f_syn: torch.Tensor) -> torch.Tensor:
        cfg: CSDMConfig = self.config
        f_real = torch.nn.functional.normalize(f_real, dim=-1)
        f_syn = torch.nn.functional.normalize(f_syn, dim=-1)
        freqs = sample_frequencies(cfg.kernel, cfg.num_freqs, f_real.shape[-1], self.sigma,
                                   self.gen)
        return spectral_loss(f_real, f_syn, freqs, self.alpha, cfg.reduction, cfg.scale).sum()

    def state(self) -> dict[str, torch.Tensor]:
        st = super().state()
        if self.nets is not None:
            st["pick_gen"] = self.pick_gen.get_state()
        return st

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if "pick_gen" in state:
            self.pick_gen.set_state(state.pop("pick_gen").cpu())
        super().load_state(state)


@register_method
class SDM(CSDM):
    name = "sdm"
    Config = SDMConfig
