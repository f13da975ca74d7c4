"""Pure loss functions (POT's functional style): tensors in, scalar out, no loops, no I/O.

Each states its formula; ``tests/test_losses.py`` checks it against a slow, obviously correct
reference.
"""

from __future__ import annotations

import torch


def dm_loss(real_feats: torch.Tensor, syn_feats: torch.Tensor) -> torch.Tensor:
    """Distribution matching with a linear kernel (DM, methods.md §1.1).

    L = Σ_c ‖ mean_i f(x_{c,i}) − mean_j f(s_{c,j}) ‖²₂

    Args:
        real_feats: (C, B, D) features of B real images of each of C classes.
        syn_feats: (C, M, D) features of the M synthetic images of each class.
    Returns:
        The scalar loss, summed over classes as in the reference code.
    """
    if real_feats.ndim != 3 or syn_feats.ndim != 3 or real_feats.shape[0] != syn_feats.shape[0]:
        raise ValueError("dm_loss expects (C, B, D) and (C, M, D) feature tensors")
    diff = real_feats.mean(dim=1) - syn_feats.mean(dim=1)
    return (diff * diff).sum()
