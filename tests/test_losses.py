import torch

from ddcli.losses import dm_loss


def naive_dm_loss(real_by_class, syn_by_class):
    """The reference formula, one class at a time."""
    total = torch.tensor(0.0, dtype=torch.float64)
    for r, s in zip(real_by_class, syn_by_class, strict=True):
        mr = sum(r[i] for i in range(len(r))) / len(r)
        ms = sum(s[j] for j in range(len(s))) / len(s)
        total = total + sum((mr[k] - ms[k]) ** 2 for k in range(len(mr)))
    return total


def test_dm_loss_matches_the_naive_formula():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4, 7, 5, generator=g, dtype=torch.float64)
    syn = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(dm_loss(real, syn), naive_dm_loss(list(real), list(syn)))
    assert dm_loss(real, real[:, :7]) == 0


def test_tgdd_loss_of_a_block_of_classes_is_those_rows_of_the_full_loss():
    """Under torchrun a rank computes classes lo..hi only: their CE targets stay lo..hi."""
    from ddcli.losses import tgdd_loss

    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(5, 4, 6, generator=g), torch.randn(5, 3, 6, generator=g)
    logits = torch.randn(5, 3, 5, generator=g)
    full = tgdd_loss(real, syn, logits, 0.7)
    part = tgdd_loss(real[2:4], syn[2:4], logits[2:4], 0.7, first_class=2)
    assert torch.allclose(part, full[2:4])
