"""``--backbone timm:NAME --backbone-weights FILE``: any timm architecture, local weights,
loaded strictly, for distill (sfm / lgm) and evaluate's linear probe."""

import pytest
import torch
from conftest import assert_one_line_error, write_shards
from safetensors.torch import save_file

from ddcli.backbones import create_backbone
from ddcli.errors import InputError

ARCH = "test_resnet"  # one of timm's tiny test architectures (0.5 M parameters)


@pytest.fixture
def timm_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model(ARCH, pretrained=False)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    st = tmp_path / "w.safetensors"
    save_file(state, str(st))
    pt = tmp_path / "w.pth"
    torch.save({"state_dict": state}, pt)  # a training checkpoint's wrapping
    return net.eval(), st, pt


def test_timm_backbone_from_safetensors_and_state_dict(timm_weights, tmp_path):
    net, st, pt = timm_weights
    bb = create_backbone(f"timm:{ARCH}", st)
    assert bb.name == f"timm:{ARCH}" and bb.input_size == (160, 160)
    assert bb.feature_dim == net.num_features and bb.identity["weights_sha256"]
    x = torch.rand(2, 3, 8, 8)
    f = bb.embed(x)
    assert f.shape == (2, net.num_features)
    net.reset_classifier(0)
    assert torch.allclose(f, net(bb.prepare(x)), atol=1e-5)  # the weights were loaded
    assert torch.allclose(create_backbone(f"timm:{ARCH}", pt).embed(x), f, atol=1e-6)
    assert not any(p.requires_grad for p in bb.module.parameters())


def test_timm_backbone_errors(timm_weights, tmp_path):
    _, st, _ = timm_weights
    with pytest.raises(InputError, match="needs --backbone-weights"):
        create_backbone(f"timm:{ARCH}")
    with pytest.raises(InputError, match="unknown timm architecture"):
        create_backbone("timm:no_such_net", st)
    with pytest.raises(InputError, match="does not fit timm:test_vit"):
        create_backbone("timm:test_vit", st)  # strict: other keys
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read backbone weights"):
        create_backbone(f"timm:{ARCH}", bad)


def test_cli_sfm_on_a_timm_backbone_and_its_linear_probe(cli, timm_weights, tmp_path):
    _, st, _ = timm_weights
    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    out = tmp_path / "s.safetensors"
    r = cli("distill", data, "-m", "sfm", "--ipc", "1", "--iterations", "2", "--backbone",
            f"timm:{ARCH}", "--backbone-weights", st, "--golden-head-epochs", "0",
            "--device", "cpu", "-o", out, "--json")
    assert r.code == 0, r
    ident = r.json()["config"]["backbone_identity"]
    assert ident["name"] == f"timm:{ARCH}" and ident["input_size"] == [160, 160]
    r = cli("evaluate", out, "--test", data, "-p", "linear-probe", "--epochs", "1",
            "--models", "1", "--device", "cpu", "--json", "--backbone", f"timm:{ARCH}",
            "--backbone-weights", st)
    assert r.code == 0, r
    assert r.json()["protocol"]["name"] == "linear-probe"
    r = cli("distill", data, "-m", "sfm", "--backbone", f"timm:{ARCH}", "-o",
            tmp_path / "x.safetensors", "--device", "cpu")
    assert_one_line_error(r, 2, "needs --backbone-weights")


def test_backbone_runs_channels_last_on_a_cpu_with_the_same_features(timm_weights):
    """On a CPU the backbone runs in NHWC (oneDNN's fast layout for depthwise convolutions):
    the module's 4-d weights and the inputs are channels-last, the features those of the
    NCHW module up to float rounding, gradients included."""
    net, st, _ = timm_weights
    bb = create_backbone(f"timm:{ARCH}", st)
    x = torch.rand(3, 3, 8, 8)
    ref = bb.embed(x)  # never moved: NCHW
    assert not bb.channels_last
    bb.to("cpu")
    assert bb.channels_last
    conv = next(p for p in bb.module.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    pix = x.clone().requires_grad_(True)
    f = bb.embed(pix)
    assert torch.allclose(f, ref, atol=1e-4)
    f.sum().backward()
    assert pix.grad is not None and torch.isfinite(pix.grad).all()

