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


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al.): per-sample T² · KL(t ‖ softmax(s / T)).

    Args:
        student_logits: (..., K) logits.
        target_probs: (..., K) teacher probabilities (already at temperature T).
        temperature: T.
    Returns:
        (...,) the loss of every sample.
    """
    log_p = torch.log_softmax(student_logits / temperature, dim=-1)
    t = target_probs.clamp_min(1e-12)
    return (target_probs * (t.log() - log_p)).sum(-1) * temperature**2


def sinkhorn_plans(cost: torch.Tensor, reg: float) -> torch.Tensor:
    """Entropic OT plans between uniform marginals for a batch of cost matrices (B, n, m),
    computed with POT's batched Sinkhorn on the cost's device; no gradient flows through."""
    from ot.batch import solve_batch

    return solve_batch(cost.detach().double(), reg=reg, method="log_sinkhorn",
                       grad="detach").plan.to(cost.dtype)


def otm_loss(
    student_logits: torch.Tensor,
    hard_labels: torch.Tensor,
    soft_labels: torch.Tensor,
    w_ce: float = 0.1,
    w_mse: float = 1.0,
    w_ot: float = 1.0,
    reg: float = 0.1,
) -> torch.Tensor:
    """OT logit matching (methods.md §5.4) for a batch of independent problems.

    L = κ1·CE(s, y) + κ2·mean_i ‖softmax(s_i) − t_i‖² + β2·⟨P, C⟩, with
    C_ij = ‖softmax(s_i) − t_j‖₁ over the mini-batch and P the entropic OT plan between uniform
    marginals (Sinkhorn, regulariser ``reg``), detached (envelope theorem).

    Args:
        student_logits: (B, n, K) — B independent mini-batches (one per model).
        hard_labels: (B, n) class indices.
        soft_labels: (B, n, K) target probabilities.
    Returns:
        (B,) the loss of every mini-batch.
    """
    p = torch.softmax(student_logits, dim=-1)
    ce = torch.nn.functional.cross_entropy(
        student_logits.flatten(0, 1), hard_labels.flatten(), reduction="none"
    ).view(hard_labels.shape).mean(-1)
    mse = ((p - soft_labels) ** 2).sum(-1).mean(-1)
    cost = torch.cdist(p, soft_labels, p=1)  # (B, n, n)
    plan = sinkhorn_plans(cost, reg)
    ot_term = (plan * cost).sum(dim=(1, 2))
    return w_ce * ce + w_mse * mse + w_ot * ot_term
