import pytest
import torch

from ddcli import augment
from ddcli.augment import FAMILIES, apply, sample_params


def params_for(family: str, rows: int, seed: int = 0) -> augment.DSAParams:
    p = sample_params(rows, torch.Generator().manual_seed(seed), strategy=family)
    assert p.families == (family,)
    return p


def test_siamese_rows_give_real_and_synthetic_the_same_transform():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    p = sample_params(4, g)  # one row per "class"
    real_rows = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    real = torch.cat([x, x]).view(2, 4, 3, 16, 16).transpose(0, 1).reshape(8, 3, 16, 16)
    a = apply(real, p, real_rows)
    b = apply(x, p, torch.arange(4))
    assert torch.allclose(a[0::2], b) and torch.allclose(a[1::2], b)


def test_seed_determinism():
    x = torch.randn(6, 3, 16, 16)
    a = augment.augment(x, torch.Generator().manual_seed(1))
    b = augment.augment(x, torch.Generator().manual_seed(1))
    c = augment.augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_is_an_integer_shift_with_zero_fill():
    x = torch.randn(5, 2, 8, 8)
    p = params_for("crop", 5)
    out = apply(x, p)
    shift = int(8 * 0.125 + 0.5)
    for i in range(5):
        tx = int(torch.floor(p.u[i, 3] * (2 * shift + 1))) - shift
        ty = int(torch.floor(p.u[i, 4] * (2 * shift + 1))) - shift
        ref = torch.zeros_like(x[i])
        for r in range(8):
            for c in range(8):
                sr, sc = r + tx, c + ty
                if 0 <= sr < 8 and 0 <= sc < 8:
                    ref[:, r, c] = x[i, :, sr, sc]
        assert torch.equal(out[i], ref)


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(20, 1, 8, 8)
    p = params_for("cutout", 20)
    out = apply(x, p)
    for i in range(20):
        zero = out[i, 0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < zero.sum() <= 16
        assert zero.sum() == len(rows) * len(cols)  # a rectangle (a square clipped at borders)


def test_flip_color_scale_rotate_follow_the_reference_ranges():
    x = torch.rand(64, 3, 8, 8)
    p = params_for("flip", 64)
    out = apply(x, p)
    flipped = p.u[:, 7] < 0.5
    assert torch.equal(out[flipped], x[flipped].flip(3))
    assert torch.equal(out[~flipped], x[~flipped])
    p = params_for("color", 64)
    out = apply(x, p)
    shift = out.mean((1, 2, 3)) - x.mean((1, 2, 3))
    assert torch.allclose(shift, p.u[:, 0] - 0.5, atol=1e-5)  # contrast/saturation keep means
    ident = torch.zeros(1, 1, 9, 9)
    ident[0, 0, 4, 4] = 1.0
    for fam in ("scale", "rotate"):
        out = apply(ident.expand(16, 1, 9, 9), params_for(fam, 16))
        assert torch.allclose(out[:, 0, 4, 4], torch.ones(16), atol=1e-5)  # centre fixed
        assert not torch.equal(out, ident.expand(16, 1, 9, 9))


def test_one_family_per_group_and_gradients_flow():
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(4).repeat_interleave(8)
    p = sample_params(32, g, family_groups=groups)
    assert all(len(set(p.family[groups == k].tolist())) == 1 for k in range(4))
    x = torch.randn(32, 3, 8, 8, requires_grad=True)
    apply(x, p).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_every_family_is_drawn():
    p = sample_params(600, torch.Generator().manual_seed(0))
    counts = torch.bincount(p.family, minlength=len(FAMILIES))
    assert (counts > 60).all()


def test_bad_strategy():
    with pytest.raises(ValueError, match="unknown DSA family"):
        sample_params(2, torch.Generator(), strategy="color_blur")
