"""Differentiable Siamese augmentation (DSA; methods.md §1.3), vectorised on the device.

The reference (``ParamDiffAug`` in mode 'S') picks **one** augmentation family per call, and in
Siamese mode gives every image of the call the parameters of the first. ddcli batches many such
calls into one: parameters are drawn in *rows*, and every image points at a row through an
index. A row holds the family and all its parameters, so

* DM (Siamese): one row per class, shared by the real and the synthetic images of that class:
  ``p = sample_params(C, gen); apply(real, p, real_labels); apply(syn, p, syn_labels)``;
* evaluation (non-Siamese): one row per image, with the family shared by the images of one
  training batch: ``sample_params(B, gen, family_groups=model_of_image)``.

Each class (or batch) thus sees exactly the distribution of one reference call; classes are
independent draws. All randomness comes from a ``torch.Generator``; no clock, no global RNG.

Families and reference parameters: color (brightness +U(-.5,.5), saturation xU(0,2), contrast
xU(.5,1.5)), crop (integer shift up to 12.5 % of the side, zero fill), cutout (a 0.5-side square
set to 0), flip (p 0.5), scale (x and y by U(1/1.2, 1.2)), rotate (U(-15°, 15°)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# defined there, torch-free (method configs check a strategy without importing torch)
from ddcli.protocols import DSA_STRATEGY, FAMILIES, parse_strategy  # noqa: F401

SCALE = 1.2
ROTATE_DEG = 15.0
CROP = 0.125
CUTOUT = 0.5
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5

# the uniform draws of one row, in order
_SLOTS = ("bright", "sat", "contrast", "tx", "ty", "cx", "cy", "flip", "sx", "sy", "rot")
#: the parameters of one row (``DSAParams.u``'s width; a bundle's ``views.u``)
NUM_PARAMS = len(_SLOTS)


STANDARD_STRATEGY = "crop_flip"  # "standard" augmentation: pad-4 random crop + flip, both


def views_families(record: dict) -> tuple[str, ...]:
    """The families of a relabel step's recorded views (its ``views`` record; ValueError on
    an unknown one)."""
    return parse_strategy(str(record.get("strategy", STANDARD_STRATEGY)))


@dataclass
class DSAParams:
    """Rows of augmentation parameters: ``family`` (R,) indexes ``families``; ``u`` (R, 11).

    With ``all_families`` every family of the strategy is applied to every image (the
    reference's mode 'M'); otherwise only the row's ``family`` (mode 'S'), plus the families of
    ``always`` on every image (TGDD's evaluation: flip and colour always, then one of crop,
    scale, rotate). ``family`` indexes the chosen families, which come first in ``families``."""

    families: tuple[str, ...]
    family: torch.Tensor
    u: torch.Tensor
    all_families: bool = False
    always: tuple[str, ...] = ()

    def take(self, index: torch.Tensor) -> DSAParams:
        return DSAParams(self.families, self.family[index], self.u[index], self.all_families,
                         self.always)


def sample_params(
    rows: int,
    generator: torch.Generator,
    strategy: str = DSA_STRATEGY,
    device: torch.device | str | None = None,
    family_groups: torch.Tensor | None = None,
    all_families: bool = False,
    always: str = "",
) -> DSAParams:
    """Draw ``rows`` parameter rows. With ``family_groups`` (rows,) the family is drawn once per
    group and shared by its rows (one family per reference call). With ``all_families`` every
    family of the strategy applies to every image. The families of ``always`` (e.g.
    ``"color_flip"``) apply to every image besides the chosen one."""
    fams = parse_strategy(strategy)
    extra = tuple(f for f in parse_strategy(always) if f not in fams) if always else ()
    device = device or generator.device
    u = torch.rand((rows, len(_SLOTS)), generator=generator, device=device)
    if family_groups is None:
        fam = torch.randint(len(fams), (rows,), generator=generator, device=device)
    else:
        n_groups = int(family_groups.max()) + 1 if family_groups.numel() else 0
        fam = torch.randint(len(fams), (n_groups,), generator=generator, device=device)
        fam = fam[family_groups]
    return DSAParams(fams + extra, fam, u, all_families, extra)


def _slot(u: torch.Tensor, name: str) -> torch.Tensor:
    return u[:, _SLOTS.index(name)]


def apply(x: torch.Tensor, params: DSAParams, index: torch.Tensor | None = None) -> torch.Tensor:
    """Augment ``x`` (N, C, H, W); image i uses parameter row ``index[i]`` (default: row i)."""
    p = params if index is None else params.take(index)
    n, _, h, w = x.shape
    u = p.u.to(x.dtype)
    fam = p.family

    def chosen(name: str) -> torch.Tensor | None:
        if name not in p.families:
            return None
        if p.all_families or name in p.always:
            return torch.ones((n, 1, 1, 1), dtype=torch.bool, device=x.device)
        return (fam == p.families.index(name)).view(n, 1, 1, 1)

    if (m := chosen("color")) is not None:
        y = x + (_slot(u, "bright") - 0.5).view(n, 1, 1, 1) * BRIGHTNESS
        mean = y.mean(dim=1, keepdim=True)
        y = (y - mean) * (_slot(u, "sat") * SATURATION).view(n, 1, 1, 1) + mean
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * (_slot(u, "contrast") + CONTRAST).view(n, 1, 1, 1) + mean
        x = torch.where(m, y, x)

    if (m := chosen("crop")) is not None:
        sh, sw = int(h * CROP + 0.5), int(w * CROP + 0.5)
        tx = (_slot(p.u, "tx") * (2 * sh + 1)).floor().long().clamp_max(2 * sh) - sh
        ty = (_slot(p.u, "ty") * (2 * sw + 1)).floor().long().clamp_max(2 * sw) - sw
        rows = (torch.arange(h, device=x.device).view(1, h) + tx.view(n, 1) + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=x.device).view(1, w) + ty.view(n, 1) + 1).clamp(0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1))
        b = torch.arange(n, device=x.device).view(n, 1, 1)
        y = padded[b, :, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
        x = torch.where(m, y, x)

    if (m := chosen("cutout")) is not None:
        ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
        ox = (_slot(p.u, "cx") * (h + (1 - ch % 2))).floor().long() - ch // 2
        oy = (_slot(p.u, "cy") * (w + (1 - cw % 2))).floor().long() - cw // 2
        r = torch.arange(h, device=x.device).view(1, h)
        c = torch.arange(w, device=x.device).view(1, w)
        in_r = (r >= ox.view(n, 1)) & (r < (ox + ch).view(n, 1))
        in_c = (c >= oy.view(n, 1)) & (c < (oy + cw).view(n, 1))
        keep = ~(in_r.view(n, 1, h, 1) & in_c.view(n, 1, 1, w))
        x = torch.where(m & ~keep, torch.zeros((), dtype=x.dtype, device=x.device), x)

    if (m := chosen("flip")) is not None:
        do = m & (_slot(p.u, "flip") < 0.5).view(n, 1, 1, 1)
        x = torch.where(do, x.flip(3), x)

    m_scale, m_rot = chosen("scale"), chosen("rotate")
    if m_scale is not None or m_rot is not None:
        # theta = R(a) @ diag(sx, sy); identity parts where a family is not chosen
        one = torch.ones((n,), dtype=x.dtype, device=x.device)
        sx = sy = one
        cos, sin = one, torch.zeros_like(one)
        affine = torch.zeros((n,), dtype=torch.bool, device=x.device)
        if m_scale is not None:
            s = m_scale.view(n)
            sx = torch.where(s, _slot(u, "sx") * (SCALE - 1 / SCALE) + 1 / SCALE, one)
            sy = torch.where(s, _slot(u, "sy") * (SCALE - 1 / SCALE) + 1 / SCALE, one)
            affine = affine | s
        if m_rot is not None:
            r = m_rot.view(n)
            a = (_slot(u, "rot") - 0.5) * 2 * ROTATE_DEG / 180 * math.pi
            cos, sin = torch.where(r, torch.cos(a), cos), torch.where(r, torch.sin(a), sin)
            affine = affine | r
        zero = torch.zeros_like(one)
        theta = torch.stack([torch.stack([cos * sx, sin * sy, zero], 1),
                             torch.stack([-sin * sx, cos * sy, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        y = F.grid_sample(x, grid, align_corners=True)
        x = torch.where(affine.view(n, 1, 1, 1), y, x)
    return x


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    strategy: str = DSA_STRATEGY,
    family_groups: torch.Tensor | None = None,
    all_families: bool = False,
    always: str = "",
) -> torch.Tensor:
    """Non-Siamese DSA: every image its own parameters.

    Images with the same ``family_groups`` id share the family (one per reference call); the
    families of ``always`` apply to every image."""
    return apply(x, sample_params(x.shape[0], generator, strategy, x.device, family_groups,
                                  all_families, always))
