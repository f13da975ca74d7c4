import pytest
import torch

from ddcli.models import create_model, list_models
from ddcli.models.convnet import depth_for


@pytest.mark.parametrize("name", list_models())
def test_every_model_forwards_embeds_and_backprops(name):
    kw = {"width": 8} if name.startswith("convnet") else {}
    m = create_model(name, num_classes=4, channels=3, image_size=16, **kw)
    x = torch.randn(2, 3, 16, 16)
    out = m(x)
    assert out.shape == (2, 4)
    assert m.embed(x).shape == (2, m.feature_dim)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_list_models_filters():
    assert list_models("convnet*") == ["convnet", "convnet-bn"]
    assert "resnet18-bn" in list_models()


def test_convnet_depth_and_28px_handling():
    assert [depth_for((s, s)) for s in (28, 32, 64, 128, 256)] == [3, 3, 4, 5, 6]
    m = create_model("convnet", 10, 1, 28)
    assert m.depth == 3 and m.feature_dim == 128 * 4 * 4  # 28 px treated as 32
    assert m.features[0].padding == (3, 3)
    assert isinstance(m.features[1], torch.nn.GroupNorm) and m.features[1].num_groups == 128
    assert create_model("convnet", 10, 3, 64).feature_dim == 2048


def test_seeded_reset_is_reproducible():
    a = create_model("convnet", 3, 3, 8, width=8)
    b = create_model("convnet", 3, 3, 8, width=8)
    a.reset_parameters(torch.Generator().manual_seed(5))
    b.reset_parameters(torch.Generator().manual_seed(5))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    b.reset_parameters(torch.Generator().manual_seed(6))
    assert not torch.equal(a.features[0].weight, b.features[0].weight)
    bound = 1 / (3 * 9) ** 0.5  # PyTorch's default init bound for the first conv
    assert a.features[0].weight.abs().max() <= bound


def test_unknown_model_is_a_clear_error():
    from ddcli.errors import InputError

    with pytest.raises(InputError, match="unknown model 'vit'"):
        create_model("vit", 10, 3, 32)
