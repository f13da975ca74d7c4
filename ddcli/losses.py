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


# ---------------------------------------------------------------------------------------------
# spectral distribution matching (CSDM / SDM, methods.md §2; NCFM §1.9)

KERNELS = ("gaussian", "laplacian", "cauchy", "matern-0.5", "matern-1.5", "matern-2.5")


def sample_frequencies(kernel: str, num: int, dim: int, sigma: float,
                       generator: torch.Generator) -> torch.Tensor:
    """(num, dim) frequencies ω ~ Λ_k, the spectral measure of a translation-invariant kernel
    k(x, y) = κ(x − y) with κ(0) = 1 and bandwidth σ (Bochner: κ(δ) = E_ω e^{iωᵀδ}).

    ========== ========================================== ====================================
    kernel     κ(δ)                                        ω
    ========== ========================================== ====================================
    gaussian   exp(−‖δ‖²/(2σ²))                            N(0, σ⁻² I)
    laplacian  exp(−‖δ‖₁/σ)                                i.i.d. Cauchy(0, 1/σ)
    cauchy     Π_j 1/(1 + δ_j²/σ²)                         i.i.d. Laplace(0, 1/σ)
    matern-ν   Matérn-ν, length-scale σ (ν=½: exp(−‖δ‖/σ)) multivariate t, 2ν dof, scale 1/σ
    ========== ========================================== ====================================
    """
    dev = generator.device
    if kernel == "gaussian":
        return torch.randn((num, dim), generator=generator, device=dev) / sigma
    if kernel == "laplacian":
        u = torch.rand((num, dim), generator=generator, device=dev)
        return torch.tan(torch.pi * (u - 0.5)) / sigma
    if kernel == "cauchy":  # Laplace: an Exp(1) magnitude with a random sign (the inverse
        # CDF at a uniform draw of exactly 0 gave an infinite frequency: NaN losses)
        e = torch.empty((num, dim), device=dev).exponential_(generator=generator)
        positive = torch.rand((num, dim), generator=generator, device=dev) < 0.5
        return torch.where(positive, e, -e) / sigma
    if kernel.startswith("matern-"):
        dof = 2 * float(kernel.split("-", 1)[1])
        z = torch.randn((num, dim), generator=generator, device=dev)
        # chi-square with `dof` degrees of freedom = 2 * Gamma(dof / 2, 1)
        g = torch._standard_gamma(torch.full((num, 1), dof / 2, device=dev), generator=generator)
        return z / torch.sqrt(2 * g / dof) / sigma
    raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")


def empirical_cf(feats: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical characteristic function φ(ω) = mean_i e^{iωᵀx_i}: (real, imag), each (..., M)
    for features (..., n, d) and frequencies (M, d)."""
    proj = feats @ freqs.T  # (..., n, M)
    return torch.cos(proj).mean(-2), torch.sin(proj).mean(-2)


def amplitude_phase(re_r: torch.Tensor, im_r: torch.Tensor, re_s: torch.Tensor,
                    im_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A = (|φ_R| − |φ_S|)² (amplitude: diversity) and P = 2(|φ_R||φ_S| − Re φ_R Re φ_S −
    Im φ_R Im φ_S) = 2|φ_R||φ_S|(1 − cos Δθ) (phase: realism); A + P = |φ_R − φ_S|²."""
    mod_r = torch.sqrt(re_r**2 + im_r**2 + 1e-12)
    mod_s = torch.sqrt(re_s**2 + im_s**2 + 1e-12)
    amp = (mod_r - mod_s) ** 2
    phase = (2 * (mod_r * mod_s - re_r * re_s - im_r * im_s)).clamp_min(0)
    return amp, phase


def spectral_loss(real_feats: torch.Tensor, syn_feats: torch.Tensor, freqs: torch.Tensor,
                  alpha: torch.Tensor, reduction: str = "mean", scale: float = 1.0) -> torch.Tensor:
    """Class-aware spectral distribution distance (CSDM), per class.

    L_c = scale · reduce_ω [ α(c)·A_c(ω) + (1 − α(c))·P_c(ω) ]

    with ``reduction`` ``mean`` (mean over ω: with α = ½ this is ½·SDD, an unbiased estimate
    of ½·MMD²_k when ω ~ Λ_k) or ``sqrt-mean`` (NCFM's mean_ω sqrt(·)).

    Args:
        real_feats: (C, B, d); syn_feats: (C, M, d); freqs: (F, d); alpha: (C,) in [0, 1].
    Returns:
        (C,) the loss of every class.
    """
    re_r, im_r = empirical_cf(real_feats, freqs)
    re_s, im_s = empirical_cf(syn_feats, freqs)
    amp, phase = amplitude_phase(re_r, im_r, re_s, im_s)
    a = alpha.view(-1, 1)
    mix = a * amp + (1 - a) * phase  # (C, F)
    if reduction == "mean":
        return scale * mix.mean(-1)
    if reduction == "sqrt-mean":
        return scale * torch.sqrt(mix.clamp_min(1e-12)).mean(-1)
    raise ValueError(f"unknown reduction {reduction!r}")


def alpha_schedule(class_counts: list[int], schedule: str = "log-linear", head: float = 0.7,
                   tail: float = 0.3) -> torch.Tensor:
    """α(c), the amplitude (diversity) weight of class c; 1 − α(c) weighs phase (realism).

    ``log-linear``: α = tail + (head − tail)·r_c with r_c = (log n_c − log n_min) /
    (log n_max − log n_min); ``two-group``: head for n_c at or above the median count (the
    mean of the two middle ones for an even number of classes), tail below, and the smallest
    classes always tail (``torch.median``'s lower middle value, with ties, gave 1-image classes
    beside a 100-image one the head α);
    ``constant``: ½. Tail classes thus lean to realism. Data that is not long-tailed
    (``ddcli.data.is_long_tailed``: max / min < 2) gives ½ everywhere.
    """
    from ddcli.data import is_long_tailed

    n = torch.tensor(class_counts, dtype=torch.float64).clamp_min(1)
    if schedule == "constant" or not is_long_tailed(list(class_counts)):
        return torch.full((len(class_counts),), 0.5)
    if schedule == "log-linear":
        r = (n.log() - n.min().log()) / (n.max().log() - n.min().log())
        return (tail + (head - tail) * r).float()
    if schedule == "two-group":
        return torch.where((n >= n.quantile(0.5)) & (n > n.min()), head, tail).float()
    raise ValueError(f"unknown alpha schedule {schedule!r}")


def tgdd_loss(real_feats: torch.Tensor, syn_feats: torch.Tensor, syn_logits: torch.Tensor,
              alpha: float, first_class: int = 0) -> torch.Tensor:
    """TGDD (methods.md §3.1), per class c:

    L_c = ‖ mean f_ext(A(x_c)) − mean f_ext(A(s_c)) ‖² + α · mean_j CE(g_exp(A(s_{c,j})), c)

    (stage-wise mean matching under the feature-extractor snapshot, plus the stage-wise
    distribution constraint: cross-entropy under the later constraint snapshot).

    Args:
        real_feats: (C, B, D); syn_feats: (C, M, D); syn_logits: (C, M, K); alpha: α.
        first_class: the class index of the first row (the rows are classes first_class ..
            first_class + C − 1: a torchrun rank's block).
    Returns:
        (C,) the loss of every class.
    """
    c, m, k = syn_logits.shape
    mmd = ((real_feats.mean(1) - syn_feats.mean(1)) ** 2).sum(-1)
    target = torch.arange(first_class, first_class + c,
                          device=syn_logits.device).repeat_interleave(m)
    ce = torch.nn.functional.cross_entropy(syn_logits.reshape(c * m, k), target,
                                           reduction="none").view(c, m).mean(1)
    return mmd + alpha * ce


# ---------------------------------------------------------------------------------------------
# frozen-backbone methods: LGM (methods.md §4.1) and SFM (§4.2)


def linear_ce_grad(feats: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """∂/∂(W, b) of mean CE(W f + b, y), flattened: [(P − Y)ᵀ F / n, mean(P − Y)] with
    P = softmax(W f + b), Y one-hot; differentiable in ``feats``."""
    p = torch.softmax(feats @ weight.T + bias, dim=-1)
    d = p - torch.nn.functional.one_hot(labels, weight.shape[0]).to(p.dtype)
    n = feats.shape[0]
    return torch.cat([(d.T @ feats).flatten() / n, d.mean(0)])


def lgm_loss(real_feats: torch.Tensor, real_labels: torch.Tensor, syn_feats: torch.Tensor,
             syn_labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Linear gradient matching: 1 − cos(g_real, g_syn) for one random linear head (W, b)."""
    g_real = linear_ce_grad(real_feats, real_labels, weight, bias).detach()
    g_syn = linear_ce_grad(syn_feats, syn_labels, weight, bias)
    return 1 - torch.nn.functional.cosine_similarity(g_real, g_syn, dim=0)


def class_flows(means: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Statistical flows F_c = ν_c − μ_c, ν_c = (Σ_k μ_k − μ_c) / (C − 1) (or ``denominator``):
    from each class centre to the mean of the other class centres. (C, D) -> (C, D)."""
    c = means.shape[0]
    den = (c - 1) if denominator is None else denominator
    others = (means.sum(0, keepdim=True) - means) / den
    return others - means


def flow_loss(real_means: torch.Tensor, syn_means: torch.Tensor,
              syn_denominator: float | None = None) -> torch.Tensor:
    """SFM: 1 − cos(vec F, vec F̃), one cosine over the whole (C, D) flow matrices."""
    f_real = class_flows(real_means)
    f_syn = class_flows(syn_means, syn_denominator)
    return 1 - torch.nn.functional.cosine_similarity(f_real.flatten(), f_syn.flatten(), dim=0)


# ---------------------------------------------------------------------------------------------
# OT-guided generation (methods.md §5.2)


def ot_guidance_cost(samples: torch.Tensor, real: torch.Tensor, reg: float = 0.05,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """G_W = ⟨P, C⟩: the entropic OT cost between the class's generated samples (n, d) and a
    batch of its real samples (m, d), with C_ij = ‖s_i − r_j‖₁ / d and P the Sinkhorn plan
    between uniform marginals (POT, ``reg``), detached (envelope theorem). Returns (G_W, P)."""
    import ot

    cost = torch.cdist(samples, real, p=1) / samples.shape[1]
    a = torch.full((samples.shape[0],), 1 / samples.shape[0], dtype=cost.dtype,
                   device=cost.device)
    b = torch.full((real.shape[0],), 1 / real.shape[0], dtype=cost.dtype, device=cost.device)
    plan = ot.sinkhorn(a, b, cost.detach(), reg, method="sinkhorn_log", numItermax=1000,
                       stopThr=1e-6, warn=False)
    return (plan * cost).sum(), plan


def influence_cost(pseudo_grads: torch.Tensor, real_grads: torch.Tensor) -> torch.Tensor:
    """IGD's influence term G_I (``gm_loss`` summed over checkpoints, each divided by their
    number): the mean over K surrogate checkpoints of 1 − cos between the flat parameter
    gradient of the loss on the generated sample and the mean one on real images, (K, P)
    each."""
    cos = torch.nn.functional.cosine_similarity(pseudo_grads, real_grads, dim=1, eps=1e-6)
    return (1 - cos).mean()


def deviation_cost(sample: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """IGD's deviation (diversity) term: the cosine similarity of a sample (d,) to the most
    similar of the class's earlier samples (k, d); 0 when there are none."""
    if memory.shape[0] == 0:
        return sample.sum() * 0
    return torch.nn.functional.cosine_similarity(memory, sample[None], dim=1).max()
