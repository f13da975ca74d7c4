"""Multi-formation (IDC, Kim et al. 2022): each stored image holds f×f sub-images, each
decoded to full size at use time. A bundle records the factor (``config.factor``); ``evaluate``
and ``inspect`` decode transparently."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N·f², C, H, W): tile (r, c) of image n becomes image n·f² + r·f + c,
    upsampled bilinearly to H×W."""
    if factor == 1:
        return images
    n, c, h, w = images.shape
    th, tw = h // factor, w // factor
    tiles = images[:, :, : th * factor, : tw * factor]
    tiles = tiles.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N·f², C, H, W) -> (N, C, H, W): every f² consecutive images downsampled (area) and
    tiled, the inverse layout of :func:`decode`."""
    if factor == 1:
        return images
    m, c, h, w = images.shape
    if m % (factor * factor):
        raise ValueError("the number of images must be a multiple of factor²")
    th, tw = h // factor, w // factor
    small = F.interpolate(images, size=(th, tw), mode="area")
    small = small.reshape(m // factor**2, factor, factor, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    out = small.reshape(m // factor**2, c, factor * th, factor * tw)
    if (factor * th, factor * tw) != (h, w):
        out = F.pad(out, (0, w - factor * tw, 0, h - factor * th))
    return out


def decode_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    return labels.repeat_interleave(factor * factor, dim=0)
