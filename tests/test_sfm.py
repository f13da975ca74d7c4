from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny_dataset, write_shards

from ddcli.backbones import create_backbone, lite0_package_weights
from ddcli.bundle import load_bundle, save_bundle
from ddcli.errors import InputError
from ddcli.losses import class_flows, flow_loss, lgm_loss, linear_ce_grad
from ddcli.methods import create_method
from ddcli.methods.backbone_base import real_features
from ddcli.methods.base import run_method


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.input_size = (16, 16)

    def forward(self, x):
        return F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


@pytest.fixture
def tiny_backbone(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    return str(path)


def test_flows_against_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64)
    flows = class_flows(mu)
    for c in range(4):
        others = [mu[k] for k in range(4) if k != c]
        assert torch.allclose(flows[c], sum(others) / 3 - mu[c])
    assert torch.allclose(class_flows(mu, 8.0)[0], (mu.sum(0) - mu[0]) / 8 - mu[0])
    assert flow_loss(mu, mu).abs() < 1e-12
    assert flow_loss(mu, 2 * mu + 5).abs() < 1e-12  # cosine: scale and shift invariant
    assert flow_loss(mu, -mu) == pytest.approx(2.0)


def test_linear_ce_gradient_against_autograd_and_finite_differences():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = (torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(f @ w.T + b, y).backward()
    assert torch.allclose(linear_ce_grad(f, y, w.detach(), b.detach()),
                          torch.cat([w.grad.flatten(), b.grad]))
    # the LGM loss's gradient w.r.t. the synthetic features, by finite differences
    real, ry = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.arange(3).repeat(3)
    syn = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sy = torch.arange(3)
    wd, bd = w.detach(), b.detach()
    lgm_loss(real, ry, syn, sy, wd, bd).backward()
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        plus, minus = syn.detach().clone(), syn.detach().clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        num = (lgm_loss(real, ry, plus, sy, wd, bd) - lgm_loss(real, ry, minus, sy, wd, bd)) / (
            2 * eps)
        assert float(syn.grad[i, j]) == pytest.approx(float(num), rel=1e-4, abs=1e-8)


@pytest.mark.skipif(lite0_package_weights() is None, reason="efficientnet-lite0 weights missing")
def test_efficientnet_lite0_loads_every_key():
    bb = create_backbone("efficientnet-lite0")  # strict=True inside: no missing, no extra key
    state = torch.load(str(lite0_package_weights()), map_location="cpu", weights_only=True)
    net = bb.module  # timm's tf_efficientnet_lite0, classifier removed after strict loading
    assert len(net.state_dict()) == len(state) - 2 == 294
    key = "_blocks.15._project_conv.weight"
    assert torch.equal(net.blocks[6][0].conv_pwl.weight, state[key])
    f = bb.embed(torch.rand(2, 3, 32, 32))
    assert f.shape == (2, 1280) and bb.input_size == (224, 224)


def test_backbone_errors_and_torchvision_weights(tmp_path):
    with pytest.raises(InputError, match="needs --backbone-weights"):
        create_backbone("resnet18")
    with pytest.raises(InputError, match="unknown backbone"):
        create_backbone("not-a-net", tmp_path / "x.pt")
    with pytest.raises(InputError, match="not found"):
        create_backbone("resnet18", tmp_path / "missing.pt")
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    bb = create_backbone("resnet18", tmp_path / "r18.pt")
    assert bb.feature_dim == 512 and bb.identity["weights_sha256"]
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="does not fit resnet18"):
        create_backbone("resnet18", tmp_path / "bad.pt")


def test_real_statistics_are_cached(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    ds = tiny_dataset(n=4)
    bb = create_backbone("torchscript", tiny_backbone)
    a = real_features(ds, bb, torch.device("cpu"))
    files = list((tmp_path / "c" / "features").glob("*.safetensors"))
    assert len(files) == 1 and a.shape == (12, 32)
    assert torch.equal(real_features(ds, bb, torch.device("cpu")), a)
    assert list((tmp_path / "c" / "features").glob("*.safetensors")) == files


@pytest.mark.parametrize("method", ["sfm", "lgm"])
def test_tiny_runs_resume_exactly(method, tiny_backbone, tmp_path, monkeypatch):
    import signal

    from ddcli.errors import Interrupted

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    ds = tiny_dataset(n=4)
    kw = dict(ipc=2, iterations=6, pyramid_every=2, backbone="torchscript",
              backbone_weights=tiny_backbone, augs=2, golden_head_epochs=2)
    full, _ = run_method(create_method(method, **kw), ds, seed=3)
    assert full.images.shape == (6, 3, 8, 8) and 0 <= full.images.min() <= full.images.max() <= 1
    assert full.extras["golden_head.weight"].shape == (3, 32)

    def stop(it, **_):
        if it == 3:
            signal.raise_signal(signal.SIGINT)

    ckpt = tmp_path / "k.safetensors"
    with pytest.raises(Interrupted):
        run_method(create_method(method, **kw), ds, seed=3, checkpoint=ckpt, progress=stop,
                   log_every=1)
    resumed, _ = run_method(create_method(method, **kw), ds, seed=3, checkpoint=ckpt,
                            resume=True)
    assert torch.allclose(resumed.images, full.images, atol=1e-6)


def test_sfm_lowers_the_flow_loss(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    m = create_method("sfm", ipc=1, iterations=40, pyramid_every=5, backbone="torchscript",
                      backbone_weights=tiny_backbone, golden_head_epochs=0, lr=0.05)
    _, stats = run_method(m, tiny_dataset(n=6), log_every=1)
    first = create_method("sfm", ipc=1, iterations=1, backbone="torchscript",
                          backbone_weights=tiny_backbone, golden_head_epochs=0)
    _, s1 = run_method(first, tiny_dataset(n=6), log_every=1)
    assert stats["final_loss"] < 0.5 * s1["final_loss"]


def test_cli_sfm_linear_probe_and_inheritance(cli, tiny_backbone, tmp_path):
    data = write_shards(tmp_path / "d", n_train=12, n_test=6)
    out = tmp_path / "s.safetensors"
    r = cli("distill", data, "-m", "sfm", "--ipc", "1", "--iterations", "4", "--backbone",
            "torchscript", "--backbone-weights", tiny_backbone, "--golden-head-epochs", "3",
            "--device", "cpu", "-o", out, "--json")
    assert r.code == 0, r
    assert r.json()["config"]["backbone_identity"]["name"] == "torchscript"
    reports = {}
    for extra in ([], ["--inherit"]):
        r = cli("evaluate", out, "--test", data, "-p", "linear-probe", "--epochs", "3",
                "--models", "2", "--device", "cpu", "--json", "--baseline", "random",
                "--real", data, *extra)
        assert r.code == 0, r
        reports[bool(extra)] = r.json()
    assert reports[False]["mode"].startswith("linear-probe")
    assert reports[True]["mode"].startswith("inherit")
    assert reports[True]["golden_head_test_accuracy"] is not None
    assert reports[False]["protocol"]["name"] == "linear-probe"
    # stacked heads from one generator: the report names it, not a per-model seed it never used
    assert reports[False]["result"]["model_seeds"] is None
    assert reports[False]["result"]["generator_seed"] == 0
    # the lr and batch that ran (the protocol records the reference's base lr 1e-3 and batch
    # up to 100, scaled by batch / 256): 3 images, batch 3
    assert reports[False]["result"]["batch_size"] == 3
    assert reports[False]["result"]["lr"] == pytest.approx(1e-3 * 3 / 256)
    assert reports[True]["result"]["lr"] == pytest.approx(0.01 * 3 / 256)
    r = cli("evaluate", out, "--test", data, "-p", "linear-probe", "--epochs", "1", "--models",
            "1", "--device", "cpu", "--baseline", "centroids", "--real", data, "--json")
    assert r.code == 0 and r.json()["baseline"]["kind"] == "centroids", r
    r = cli("evaluate", out, "--test", data, "--inherit", "--epochs", "1")
    assert r.code == 2 and "--inherit goes with" in r.stderr
    # the same weights from another path: the golden head's backbone reloaded the recorded
    # path (and failed where it was relative), though --backbone-weights named the same file
    moved = tmp_path / "moved.pt"
    moved.write_bytes(Path(tiny_backbone).read_bytes())
    b = load_bundle(out)
    b.config["backbone_weights"] = "gone.pt"
    b.checksum = ""
    save_bundle(b, tmp_path / "m.safetensors")
    r = cli("evaluate", tmp_path / "m.safetensors", "--test", data, "-p", "linear-probe",
            "--epochs", "1", "--models", "1", "--device", "cpu", "--backbone-weights", moved,
            "--inherit", "--json")
    assert r.code == 0 and r.json()["golden_head_test_accuracy"] is not None, r
    r = cli("distill", data, "-m", "sfm", "--backbone", "efficientnet-lite0",
            "--backbone-weights", tmp_path / "none.pth", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "not found" in r.stderr


@pytest.mark.parametrize("method", ["sfm", "lgm"])
def test_backbone_methods_from_the_data_cache_equal_in_memory(method, tiny_backbone, tmp_path,
                                                              monkeypatch):
    """Real features (and LGM's real batches) read from the memory-mapped cache: the bundle an
    in-memory run writes; each run computes its own features (a cache each)."""
    from conftest import write_shards

    from ddcli.data import load_dataset

    data = write_shards(tmp_path / "d", n_train=8)
    kw = dict(ipc=1, iterations=4, pyramid_every=2, backbone="torchscript",
              backbone_weights=tiny_backbone, augs=2, golden_head_epochs=2)
    got = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / f"c-{mode}"))
        ds = load_dataset(data, cache=mode)
        assert (ds.mapped is not None) == (mode == "on")
        got[mode], _ = run_method(create_method(method, **kw), ds, seed=1)
    assert torch.equal(got["on"].images, got["off"].images)
    assert torch.equal(got["on"].extras["golden_head.weight"],
                       got["off"].extras["golden_head.weight"])


def _counting_backbone(seed: int = 0):
    from ddcli.backbones import Backbone

    torch.manual_seed(seed)
    module = Tiny().eval().requires_grad_(False)
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return Backbone("tiny", module, (16, 16), (0.5,) * 3, (0.5,) * 3, 32), calls


def test_backbone_inference_runs_in_cache_sized_pieces():
    """``infer`` / ``embed_all`` on a CPU pass ``CPU_INFER_CHUNK`` images at a time (memory-
    bound layers stay in the cache): the same features as one pass."""
    from ddcli.backbones import CPU_INFER_CHUNK

    bb, calls = _counting_backbone()
    assert bb.to("cpu").infer_chunk == CPU_INFER_CHUNK
    bb.infer_chunk = 4
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = bb.features(x)
    calls.clear()
    assert torch.allclose(bb.infer(x), whole, atol=1e-6)
    assert calls == [4, 4, 2]
    calls.clear()
    px = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(bb.embed_all(px, "cpu"), bb.embed(px), atol=1e-6)
    assert calls[:-1] == [4, 4, 2]  # (the last: the one-pass reference)


def test_inheritance_probe_reuses_the_evaluation_backbone_features():
    """With the distillation backbone as the evaluation backbone, the projector's target
    features are the evaluation features: computed once per step, the same result as from a
    second copy of the backbone (which runs twice as many passes)."""
    from ddcli.probe import linear_probe

    bb, calls = _counting_backbone()
    copy, copy_calls = _counting_backbone()  # same weights, another object
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.arange(3).repeat_interleave(2)
    golden = (torch.randn(3, 32, generator=g), torch.zeros(3))
    kw = dict(num_models=2, epochs=3, seed=0, device=torch.device("cpu"), golden=golden)
    shared = linear_probe(x, y, x, y, 3, bb, golden_bb=bb, **kw)
    train_calls = len(calls) - 1  # the test set's features: one pass
    other = linear_probe(x, y, x, y, 3, bb, golden_bb=copy, **kw)
    assert train_calls == 3 and len(copy_calls) == 3  # one pass per step each
    assert shared["accuracy_per_model"] == other["accuracy_per_model"]


def test_compiled_backbone_inference_is_the_eager_arithmetic(monkeypatch):
    """Long no-grad runs on a CPU compile the frozen backbone (weights folded); the last
    piece is padded to the piece size (one build), the features are eager's up to rounding,
    and a failed build falls back to eager, saying why."""
    from ddcli.backbones import AUTO_COMPILE_INFER_MIN_IMAGES

    bb, _ = _counting_backbone()
    bb.to("cpu")
    bb.infer_chunk = 4
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    eager = bb.infer(x)
    assert not bb.plan_inference(AUTO_COMPILE_INFER_MIN_IMAGES - 1) and not bb.compiled
    assert bb.plan_inference(AUTO_COMPILE_INFER_MIN_IMAGES)
    assert torch.allclose(bb.infer(x), eager, atol=1e-5)
    assert torch.allclose(bb.infer(x[:3]), eager[:3], atol=1e-5)
    assert bb.compiled and bb.compile_error is None

    from torch._dynamo.exc import BackendCompilerFailed

    def broken(fn, **kw):
        def run(*a):
            raise BackendCompilerFailed.__new__(BackendCompilerFailed)
        return run

    monkeypatch.setattr(torch, "compile", broken)
    bb2, _ = _counting_backbone()
    bb2.to("cpu")
    assert bb2.plan_inference(10**6)
    assert torch.equal(bb2.infer(x), bb2.features(x))
    assert not bb2.compiled and bb2.compile_error.startswith("BackendCompilerFailed")
    assert not bb2.plan_inference(10**6)  # not tried again


@pytest.mark.parametrize("method", ["sfm", "lgm"])
def test_backward_in_pieces_is_the_whole_step(method, tiny_backbone, tmp_path, monkeypatch):
    """``--backward-chunk N``: features first, the loss's gradient on them, then N views per
    backward pass: the images of one pass over all views, up to float rounding (an omitted or
    doubled piece, or a gradient from other features, moves them far more)."""
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    ds = tiny_dataset(n=4)
    kw = dict(ipc=3, iterations=5, pyramid_every=2, backbone="torchscript",
              backbone_weights=tiny_backbone, augs=2, golden_head_epochs=0, lr=0.05)
    got = {}
    for chunk in ("0", "4", "7"):
        m = create_method(method, backward_chunk=chunk, **kw)
        got[chunk], _ = run_method(m, ds, seed=1)
        assert m.recorded_config()["backward_chunk_used"] == int(chunk)
    assert not torch.allclose(got["0"].images, run_method(create_method(
        method, backward_chunk="0", **kw), ds, seed=2)[0].images, atol=1e-3)
    for chunk in ("4", "7"):  # 18 views: 5 pieces of 4 (the last 2), 3 of 7 (the last 4)
        assert torch.allclose(got[chunk].images, got["0"].images, atol=1e-5), chunk


def test_backward_chunk_option():
    from ddcli.methods.backbone_base import CPU_BACKWARD_CHUNK, CPU_WHOLE_STEP_VIEWS, backward_chunk

    many = CPU_WHOLE_STEP_VIEWS + 1
    assert backward_chunk("auto", "cpu", many) == CPU_BACKWARD_CHUNK
    assert backward_chunk("auto", "cpu", CPU_WHOLE_STEP_VIEWS) is None
    assert backward_chunk("auto", "meta", many) is None
    assert backward_chunk("0", "cpu", many) is None and backward_chunk("5", "cpu", 1) == 5
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(InputError, match="--backward-chunk"):
            create_method("sfm", backward_chunk=bad)


def test_syn_res_distills_larger_images_that_every_protocol_judges(cli, tiny_backbone, tmp_path):
    """``--syn-res N``: the pyramid grows to N x N (the LGM / SFM reference's ``syn_res``) on 8 px
    data; the linear probe judges those images as they are, the ConvNet protocols at the data's
    size (they were built for the larger images and failed on the data's test images); an out
    of range value is one error line."""
    from ddcli.bundle import load_bundle

    data = write_shards(tmp_path / "d", n_train=12, n_test=6)
    out = tmp_path / "s.safetensors"
    r = cli("distill", data, "-m", "lgm", "--ipc", "1", "--iterations", "9", "--pyramid-every",
            "2", "--augs", "1", "--syn-res", "16", "--backbone", "torchscript",
            "--backbone-weights", tiny_backbone, "--golden-head-epochs", "0", "--device", "cpu",
            "-o", out, "--json")
    assert r.code == 0, r
    b = load_bundle(out)
    assert r.json()["config"]["syn_res"] == 16 and b.dataset["image_size"] == [8, 8]
    images = b.images
    assert images.shape == (3, 3, 16, 16)
    # the finest level is 16 px (levels 1, 2, 4, 8, 16 after four extensions), so the images
    # hold detail that an 8 px image upsampled would not
    coarse = F.interpolate(F.avg_pool2d(images.float(), 2), scale_factor=2, mode="nearest")
    assert (images.float() - coarse).abs().max() > 1e-3
    r = cli("evaluate", out, "--test", data, "-p", "linear-probe", "--epochs", "2", "--models",
            "1", "--device", "cpu", "--json")
    assert r.code == 0 and "images_resized_from" not in r.json(), r
    r = cli("evaluate", out, "--test", data, "--epochs", "2", "--models", "1", "--device", "cpu",
            "--json")
    assert r.code == 0, r
    assert r.json()["images_resized_from"] == [16, 16]
    for bad in ("-1", "1025"):
        r = cli("distill", data, "-m", "sfm", "--syn-res", bad, "--backbone", "torchscript",
                "--backbone-weights", tiny_backbone, "-o", tmp_path / "x.safetensors")
        assert r.code == 2 and "--syn-res" in r.stderr and len(r.stderr.splitlines()) == 1, r
        assert not (tmp_path / "x.safetensors").exists()


def test_backbone_weights_are_recorded_absolute(cli, tiny_backbone, tmp_path, monkeypatch):
    # recorded as typed ("tiny.pt"): evaluate from another folder could not find them
    data = write_shards(tmp_path / "d", n_train=12, n_test=6)
    monkeypatch.chdir(Path(tiny_backbone).parent)
    r = cli("distill", data, "-m", "sfm", "--ipc", "1", "--iterations", "1", "--backbone",
            "torchscript", "--backbone-weights", Path(tiny_backbone).name,
            "--golden-head-epochs", "0", "--device", "cpu", "-o", tmp_path / "s.safetensors",
            "--json")
    assert r.code == 0, r
    assert r.json()["config"]["backbone_weights"] == str(Path(tiny_backbone).absolute())


def test_the_golden_head_does_not_depend_on_the_distillation_length(cli, tiny_backbone,
                                                                    tmp_path):
    """The golden head learns the real features alone: drawn from the run's generator after
    the last iteration, it changed with --iterations (the quality suite's random real images
    under --inherit scored 81.43 beside 200 SFM iterations and 82.17 beside 1,000)."""
    data = write_shards(tmp_path / "d", n_train=12, n_test=6)
    heads = []
    for it in ("2", "5"):
        out = tmp_path / f"s{it}.safetensors"
        r = cli("distill", data, "-m", "sfm", "--ipc", "1", "--iterations", it, "--backbone",
                "torchscript", "--backbone-weights", tiny_backbone, "--golden-head-epochs", "3",
                "--device", "cpu", "-o", out)
        assert r.code == 0, r
        heads.append(load_bundle(out).extras["golden_head.weight"])
    assert torch.equal(heads[0], heads[1])
    r = cli("distill", data, "-m", "sfm", "--ipc", "1", "--iterations", "2", "--backbone",
            "torchscript", "--backbone-weights", tiny_backbone, "--golden-head-epochs", "3",
            "--device", "cpu", "--seed", "1", "-o", tmp_path / "seed1.safetensors")
    assert r.code == 0, r
    assert not torch.equal(heads[0],
                           load_bundle(tmp_path / "seed1.safetensors").extras["golden_head.weight"])
