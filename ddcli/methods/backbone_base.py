"""The frozen-backbone harness of LGM and SFM (methods.md §4.1): a pyramid image
parameterisation with colour decorrelation and sigmoid rendering, LGM's differentiable
"standard" augmentation, and real class statistics cached per (data, backbone)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ddcli.backbones import Backbone, create_backbone
from ddcli.configs import BackboneConfig
from ddcli.data import Dataset, NormalizedImages
from ddcli.io import read_safetensors, write_safetensors
from ddcli.methods.base import Method, SyntheticSet
from ddcli.runtime import cache_dir, device_key
from ddcli.seeding import derive_seed

#: ``--backward-chunk auto`` on a CPU: synthetic views per forward / backward pass once a
#: step has more than ``CPU_WHOLE_STEP_VIEWS`` views. Measured (SFM, IPC 10, 100 views at
#: 224 px, EfficientNet-Lite0, 2-core CPU): in pieces of 16, peak RSS 10.1 -> 2.9 GB for 1.23x
#: the time (the second forward of each piece), so a step that fits is taken whole
CPU_BACKWARD_CHUNK = 16
CPU_WHOLE_STEP_VIEWS = 128

#: Lucid's colour decorrelation matrix (square root of the ImageNet colour covariance)
COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_MATRIX = COLOR_CORRELATION / COLOR_CORRELATION.norm(dim=0).max()


class Pyramid:
    """Images as a sum of resolutions (1, 2, 4, ... up to the image size), rendered as
    sigmoid(2 · decorrelate(Σ_levels upsample(level)))."""

    def __init__(self, n: int, channels: int, size: tuple[int, int], gen: torch.Generator,
                 decorrelate: bool):
        self.n, self.channels, self.size, self.gen = n, channels, size, gen
        self.decorrelate = decorrelate and channels == 3
        self.levels: list[torch.Tensor] = []
        self.extend()

    @property
    def max_res(self) -> int:
        return max(self.size)

    def can_extend(self) -> bool:
        return not self.levels or self.levels[-1].shape[-1] < self.max_res

    def extend(self, draw: bool = True) -> None:
        """Add a level of double resolution; older levels shrink by old_len / new_len.
        ``draw=False`` (restoring a checkpoint) leaves the generator untouched."""
        res = 1 if not self.levels else min(2 * self.levels[-1].shape[-1], self.max_res)
        old, new = len(self.levels), len(self.levels) + 1
        with torch.no_grad():
            for lvl in self.levels:
                lvl.mul_(old / new)
        dev = self.gen.device
        shape = (self.n, self.channels, res, res)
        lvl = (torch.randn(shape, generator=self.gen, device=dev) / new if draw
               else torch.zeros(shape, device=dev))
        self.levels.append(lvl.requires_grad_(True))

    def render(self) -> torch.Tensor:
        x = sum(F.interpolate(lvl, size=self.size, mode="bilinear", align_corners=False)
                for lvl in self.levels)
        if self.decorrelate:
            x = torch.einsum("ij,njhw->nihw", COLOR_MATRIX.to(x.device), x)
        return torch.sigmoid(2 * x)


def random_resized_crop(x: torch.Tensor, size: tuple[int, int], gen: torch.Generator,
                        u: torch.Tensor | None = None) -> torch.Tensor:
    """Horizontal flip (p 0.5) and RandomResizedCrop to ``size`` (scale 0.08..1, ratio
    3/4..4/3) in one affine grid, differentiable; ``u`` (n, 5) uniform draws. As the LGM / SFM
    reference code's op (``augmentation/ops/random_resized_crop.py``): the crop's width and
    height, sqrt(area · ratio) and sqrt(area / ratio), are not capped at the image, and what
    falls outside it is zero, so about 14 % of views keep their aspect with black bands."""
    n, dev = x.shape[0], x.device
    if u is None:
        u = torch.rand((n, 5), generator=gen, device=dev)
    area = 0.08 + (1 - 0.08) * u[:, 0]
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio)
    h = torch.sqrt(area / ratio)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def standard_views(x: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """LGM's differentiable augmentation: :func:`random_resized_crop`, then with probability 0.5
    additive Gaussian noise of std 0.2 and mean 0.5 (as the reference code does), in pixel
    space."""
    n, dev = x.shape[0], x.device
    u = torch.rand((n, 6), generator=gen, device=dev)
    out = random_resized_crop(x, size, gen, u[:, :5])
    noise = torch.randn(out.shape, generator=gen, device=dev) * 0.2 + 0.5
    return torch.where((u[:, 5] < 0.5).view(n, 1, 1, 1), out + noise, out)


def real_pixels(data: Dataset, device) -> NormalizedImages:
    """The real images by row in 0..1 (``x[idx]`` = ``images[idx] / 255`` exactly): held
    uint8 on the device, or read batch by batch from the memory-mapped data cache."""
    c = data.channels
    return NormalizedImages(data, device, [0.0] * c, [1.0] * c)


def real_features(data: Dataset, backbone: Backbone, device,
                  progress: Callable[..., None] | None = None) -> torch.Tensor:
    """Backbone features of every real image (no augmentation), cached per (data, backbone);
    ``progress(done_images, total)`` while computing them."""
    key = json.dumps({"fingerprint": data.fingerprint, "backbone": backbone.identity,
                      **device_key(device)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    path = Path(cache_dir()) / "features" / f"{digest}.safetensors"
    if path.exists():
        tensors, _ = read_safetensors(path, "feature cache")
        return tensors["features"].to(device)
    feats = backbone.embed_all(real_pixels(data, device), device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, {"features": feats.cpu().contiguous()}, {"key": key})
    return feats


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros((num_classes, feats.shape[1]), device=feats.device)
    sums.index_add_(0, labels, feats)
    return sums / torch.bincount(labels, minlength=num_classes).clamp_min(1).view(-1, 1)


def train_linear_head(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int,
                      gen: torch.Generator, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-data "golden" linear head for classifier inheritance (Adam 1e-3, cosine)."""
    d = feats.shape[1]
    w = (torch.randn((num_classes, d), generator=gen, device=feats.device) * 0.01).requires_grad_()
    b = torch.zeros(num_classes, device=feats.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-3)
    steps = epochs * math.ceil(len(feats) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in range(epochs):
        perm = torch.randperm(len(feats), generator=gen, device=feats.device)
        for s in range(0, len(feats), batch):
            i = perm[s : s + batch]
            loss = F.cross_entropy(feats[i] @ w.T + b, labels[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return w.detach(), b.detach()


class BackboneMethod(Method):
    """setup: backbone, real features and class means, pyramid, Adam. Subclasses define
    ``loss(views_feats)``."""

    Config = BackboneConfig

    def setup(self, data, device, generator, mean, std) -> None:
        cfg: BackboneConfig = self.config
        self.gen = generator
        self.bb = create_backbone(cfg.backbone, cfg.backbone_weights).to(device)
        self.num_classes = c = data.num_classes
        with self.setup_progress(f"backbone features ({cfg.backbone})", len(data),
                                 unit="images", transient=True) as update:
            self.real_feats = real_features(data, self.bb, device,
                                            progress=lambda done, total: update(done))
        self.real_labels = data.labels.to(device)
        self.real_means = class_means(self.real_feats, self.real_labels, c)
        size = (cfg.syn_res, cfg.syn_res) if cfg.syn_res else data.image_size
        self.pyramid = Pyramid(c * cfg.ipc, data.channels, size, generator, cfg.decorrelate)
        self.syn_labels = torch.arange(c, device=device).repeat_interleave(cfg.ipc)
        self.opt = torch.optim.Adam(self.pyramid.levels, lr=cfg.lr)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
        self.golden = None
        self.backward_chunk = backward_chunk(cfg.backward_chunk, device, c * cfg.ipc * cfg.augs)

    def _maybe_extend(self, it: int) -> None:
        if it > 0 and it % self.config.pyramid_every == 0 and self.pyramid.can_extend():
            self.pyramid.extend()
            self.opt = torch.optim.Adam(self.pyramid.levels, lr=self.config.lr)

    def syn_views(self) -> torch.Tensor:
        """``augs`` augmented views of the rendered synthetic set, (augs · N, 3, H, W), view
        by view (the first N: every image's first view)."""
        cfg: BackboneConfig = self.config
        x = self.pyramid.render()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return standard_views(x.repeat(cfg.augs, 1, 1, 1), self.bb.input_size, self.gen)

    def view_features(self, views: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.bb.features(self.bb.normalize(views)).float()

    def step(self, it: int) -> torch.Tensor:
        self._maybe_extend(it)
        views = self.syn_views()
        shape = (self.config.augs, self.pyramid.n, -1)
        self.opt.zero_grad(set_to_none=True)
        k = self.backward_chunk
        if not k or len(views) <= k:
            loss = self.loss(self.view_features(views).view(shape))
            loss.backward()
        else:  # in pieces of k views: features, loss and its gradient, then piece by piece
            leaf = views.detach()
            with torch.no_grad():
                feats = torch.cat([self.view_features(leaf[i : i + k])
                                   for i in range(0, len(leaf), k)])
            feats.requires_grad_(True)
            loss = self.loss(feats.view(shape))
            (g_feats,) = torch.autograd.grad(loss, feats)
            leaf.requires_grad_(True)
            for i in range(0, len(leaf), k):
                self.view_features(leaf[i : i + k]).backward(g_feats[i : i + k])
            views.backward(leaf.grad)
        self.opt.step()
        return loss.detach()

    def state(self) -> dict[str, torch.Tensor]:
        st = {f"level{i}": lvl.detach() for i, lvl in enumerate(self.pyramid.levels)}
        for i, lvl in enumerate(self.pyramid.levels):
            for k, v in self.opt.state.get(lvl, {}).items():
                st[f"opt{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        return st

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        n = sum(1 for k in state if k.startswith("level"))
        while len(self.pyramid.levels) < n:
            self.pyramid.extend(draw=False)
        with torch.no_grad():
            for i, lvl in enumerate(self.pyramid.levels):
                lvl.copy_(state[f"level{i}"])
        self.opt = torch.optim.Adam(self.pyramid.levels, lr=self.config.lr)
        for k, v in state.items():
            if k.startswith("opt"):
                i, name = k[3:].split(".", 1)
                self.opt.state[self.pyramid.levels[int(i)]][name] = v.clone()

    def result(self) -> SyntheticSet:
        cfg: BackboneConfig = self.config
        with torch.no_grad():
            images = self.pyramid.render().cpu()
        extras = {}
        if cfg.golden_head_epochs:
            # its own seed stream: drawn from the run's generator, the head (a property of the
            # real data) changed with --iterations, and so did every --inherit figure
            gen = torch.Generator(device=self.real_feats.device)
            gen.manual_seed(derive_seed("golden", self.seed))
            w, b = train_linear_head(self.real_feats, self.real_labels, self.num_classes,
                                     cfg.golden_head_epochs, gen)
            extras = {"golden_head.weight": w.cpu(), "golden_head.bias": b.cpu()}
        return SyntheticSet(images, self.syn_labels.cpu(), extras)

    def recorded_config(self) -> dict:
        return {**super().recorded_config(), "backbone_identity": self.bb.identity,
                "backward_chunk_used": getattr(self, "backward_chunk", None) or 0}


def backward_chunk(option: str, device, views: int) -> int | None:
    """Views per backbone pass for ``--backward-chunk`` on ``device`` with ``views`` synthetic
    views a step (None: all at once)."""
    if option == "auto":
        cpu = torch.device(device).type == "cpu"
        return CPU_BACKWARD_CHUNK if cpu and views > CPU_WHOLE_STEP_VIEWS else None
    return int(option) or None
