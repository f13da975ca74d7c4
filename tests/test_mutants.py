"""Tests from a hand mutation audit (twenty-second session): each kills a realistic bug that
the rest of the suite let through (a loss term's reduction, an augmentation's angle, a
guidance sign, judges sharing their initialisation or batches, a schedule shifted by an epoch,
a reference recipe constant). Tiny generated data, CPU, seconds."""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_dataset

from ddcli import augment
from ddcli.losses import deviation_cost, ot_guidance_cost, otm_loss, spectral_loss
from ddcli.methods import create_method
from ddcli.methods.base import run_method
from ddcli.protocols import get_protocol
from ddcli.training import Views, build_ensemble, train_ensemble

CPU = torch.device("cpu")


def _toy(n_per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 3, 8, 8, generator=g) * 0.3
    x[torch.arange(len(y)), y] += 2.0
    return x, y


def _train(proto, x, y, seeds=(5, 6), **kw):
    ens = build_ensemble(proto, 3, 3, (8, 8), list(seeds), CPU)
    train_ensemble(ens, x, y, proto, torch.Generator().manual_seed(1), **kw)
    return ens


# -- losses ------------------------------------------------------------------------------------


def test_otm_mse_term_sums_the_squared_gap_over_classes():  # L2
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g)
    hard = torch.randint(3, (2, 5), generator=g)
    soft = torch.softmax(torch.randn(2, 5, 3, generator=g), -1)
    got = otm_loss(logits, hard, soft, w_ce=0.0, w_mse=1.0, w_ot=0.0)
    p = torch.softmax(logits, -1)
    want = torch.stack([sum(((p[b, i] - soft[b, i]) ** 2).sum() for i in range(5)) / 5
                        for b in range(2)])
    assert torch.allclose(got, want, atol=1e-6)


def test_amplitude_ignores_a_translation_phase_does_not():  # L4
    g = torch.Generator().manual_seed(0)
    r = torch.randn(1, 16, 4, generator=g, dtype=torch.float64)
    s = r + 0.7  # the same set moved: |phi_S| = |phi_R| at every frequency, the phase differs
    w = torch.randn(64, 4, generator=g, dtype=torch.float64)
    amp = spectral_loss(r, s, w, torch.tensor([1.0], dtype=torch.float64))
    phase = spectral_loss(r, s, w, torch.tensor([0.0], dtype=torch.float64))
    assert float(amp) < 1e-6 and float(phase) > 1e-2


def test_deviation_is_the_similarity_to_the_most_similar_earlier_sample():  # L12
    x = torch.tensor([1.0, 0.0, 0.0])
    memory = torch.eye(3)
    assert float(deviation_cost(x, memory)) == pytest.approx(1.0)


# -- DSA -----------------------------------------------------------------------------------------


def test_rotation_is_the_references_angle():  # A1
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 9, 9, generator=g)
    p = augment.sample_params(16, g, strategy="rotate")
    ang = (p.u[:, 10] - 0.5) * 2 * 15 / 180 * math.pi  # DSA rand_rotate, ratio 15 degrees
    cos, sin, z = ang.cos(), ang.sin(), torch.zeros(16)
    theta = torch.stack([torch.stack([cos, sin, z], 1), torch.stack([-sin, cos, z], 1)], 1)
    want = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True),
                         align_corners=True)
    assert torch.allclose(augment.apply(x, p), want, atol=1e-5)


def test_zero_saturation_gives_grey_images():  # A3
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = augment.sample_params(4, torch.Generator().manual_seed(1), strategy="color")
    p.u[:, 0], p.u[:, 1], p.u[:, 2] = 0.5, 0.0, 0.5  # no shift, saturation x0, contrast x1
    assert torch.allclose(augment.apply(x, p), x.mean(1, keepdim=True).expand_as(x), atol=1e-6)


# -- methods -------------------------------------------------------------------------------------


def test_csdm_matches_unit_norm_features_under_every_family(tmp_path, monkeypatch):  # C1, C3
    import ddcli.methods.csdm as csdm

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    seen, calls = {}, []
    real_loss, real_params = csdm.spectral_loss, augment.sample_params

    def spy_loss(fr, fs, *a, **k):
        seen["fr"], seen["fs"] = fr.detach(), fs.detach()
        return real_loss(fr, fs, *a, **k)

    monkeypatch.setattr(csdm, "spectral_loss", spy_loss)
    monkeypatch.setattr(augment, "sample_params",
                        lambda *a, **k: calls.append(k) or real_params(*a, **k))
    m = create_method("csdm", ipc=2, iterations=1, batch_real=4, width=8, num_freqs=16)
    run_method(m, tiny_dataset(6), seed=0)
    assert calls and calls[-1].get("all_families") is True  # NCFM: colour, crop, cutout all
    for k in ("fr", "fs"):
        assert torch.allclose(seen[k].norm(dim=-1), torch.ones(()), atol=1e-5), k


def test_tgdd_extracts_with_the_earlier_snapshot_and_constrains_with_the_later(
        tmp_path, monkeypatch):  # T1
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    m = create_method("tgdd", ipc=1, iterations=0, batch_real=4, width=8, num_experts=1,
                      expert_epochs=4, window=3)
    run_method(m, tiny_dataset(6))
    k, later = "features.0.weight", 0
    for _ in range(12):
        state = m.pick_gen.get_state()
        i, js, jf = m._pick()
        m.pick_gen.set_state(state)
        m.step(0)
        assert torch.equal(m.net.state_dict()[k], m.trajectories[i][js][k])
        assert torch.equal(m.con.state_dict()[k], m.trajectories[i][jf][k])
        later += jf > js
    assert later  # the check above meant something


def test_lgm_labels_follow_the_view_major_feature_order(monkeypatch):  # G1
    from test_fidelity import _tiny_backbone

    import ddcli.methods.lgm as lgm

    got = {}
    monkeypatch.setattr(lgm, "lgm_loss", lambda fr, yr, fs, ys, w, b:
                        got.update(fs=fs, ys=ys) or torch.zeros(()))
    m = create_method("lgm", ipc=2, augs=3)
    m.num_classes, m.gen, m.autocast, m.bb = 3, torch.Generator().manual_seed(0), nullcontext(), \
        _tiny_backbone()
    m.syn_labels = torch.arange(3).repeat_interleave(2)
    m.real_pixels, m.real_labels = torch.rand(9, 3, 8, 8), torch.arange(9) % 3
    z = torch.zeros(3, 6, 32)  # (augs, N, d): every view's feature names its image's class
    z[:, torch.arange(6), m.syn_labels] = 1.0
    m.loss(z)
    assert torch.equal(got["fs"][:, :3].argmax(1), got["ys"])


def test_sfm_averages_the_augmented_views():  # S2
    from ddcli.losses import flow_loss
    from ddcli.methods.backbone_base import class_means
    from ddcli.methods.sfm import SFM, SFMConfig

    g = torch.Generator().manual_seed(0)
    m = SFM(SFMConfig())
    m.real_means, m.num_classes = torch.randn(3, 5, generator=g), 3
    m.syn_labels = torch.arange(3).repeat_interleave(2)
    z = torch.randn(2, 6, 5, generator=g)
    want = flow_loss(m.real_means, class_means(z.mean(0), m.syn_labels, 3), 5.0)
    assert torch.allclose(m.loss(z), want, atol=1e-6)


# -- otgen: a stub prior (constant eps) and an identity sampler step, guided at loop step 0 ------


class _StubPrior:
    kind, latent, sample_shape = "unet", False, (3, 4, 4)

    def eps(self, z, t, label, cfg):
        return torch.full_like(z, 0.1)

    def decode(self, z):
        return z


class _IdentitySampler:
    timesteps = torch.tensor([900, 600, 300, 0])
    alphas_cumprod = torch.linspace(0.9999, 0.05, 1000)

    def step(self, eps, t, z, generator=None):
        return SimpleNamespace(prev_sample=z)


def _otgen(ot_scale=0.0, dev_scale=0.0):
    m = create_method("otgen", ipc=2, ot_scale=ot_scale, dev_scale=dev_scale, sampling_steps=4)
    g = torch.Generator().manual_seed(0)
    m.prior, m.scheduler, m.cfg, m.ot_scale, m.guided = _StubPrior(), _IdentitySampler(), 1.0, \
        ot_scale, {0}
    m.num_classes, m.image_size, m.channels = 2, (4, 4), 3
    m.class_ids = torch.tensor([0, 1])
    m.reals = [torch.randn(8, 48, generator=g) + 3.0 * (c + 1) for c in range(2)]
    m.memory, m.images = torch.zeros(4, 48), torch.zeros(4, 3, 4, 4)
    m.gen = torch.Generator().manual_seed(1)
    return m


def _x0(z, t=900):
    a = _IdentitySampler.alphas_cumprod[t]
    return (z - (1 - a).sqrt() * 0.1) / a.sqrt()


def test_ot_guidance_moves_the_sample_toward_the_class_real_data():  # O3
    m = _otgen(ot_scale=100.0)
    z0 = torch.randn((1, 3, 4, 4), generator=torch.Generator().set_state(m.gen.get_state()))
    m.step(0)
    before = ot_guidance_cost(_x0(z0).flatten(1), m.reals[0])[0]
    after = ot_guidance_cost(_x0(m.memory[0:1]), m.reals[0])[0]
    assert after < before


def test_deviation_guidance_moves_a_sample_away_from_the_earlier_one():  # O2
    m = _otgen(dev_scale=5.0)
    m.memory[0] = torch.randn(48, generator=torch.Generator().manual_seed(3))
    z0 = torch.randn((1, 3, 4, 4), generator=torch.Generator().set_state(m.gen.get_state()))
    m.step(1)  # class 0, its second sample
    assert deviation_cost(m.memory[1], m.memory[:1]) < deviation_cost(z0.flatten(), m.memory[:1])


def test_ot_cost_sees_the_predicted_clean_sample_and_only_its_class(monkeypatch):  # O4, O5
    import ddcli.methods.otgen as otgen

    seen = []
    real = otgen.ot_guidance_cost
    monkeypatch.setattr(otgen, "ot_guidance_cost",
                        lambda s, r, reg: seen.append(s.detach().clone()) or real(s, r, reg))
    m = _otgen(ot_scale=1.0)
    m.memory[:2] = torch.randn(2, 48)  # class 0's two samples, already made
    z0 = torch.randn((1, 3, 4, 4), generator=torch.Generator().set_state(m.gen.get_state()))
    m.step(2)  # class 1's first sample
    assert seen[0].shape[0] == 1  # no sample of class 0 in class 1's cost
    assert torch.allclose(seen[0][-1], _x0(z0).flatten(), atol=1e-5)


# -- judges --------------------------------------------------------------------------------------


def test_cosine_schedule_is_torchs_cosine_annealing_per_epoch(monkeypatch):  # R1
    lrs = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: lrs.append(self.param_groups[0]["lr"])
                        or step(self, *a, **k))
    x, y = _toy()
    proto = get_protocol("kd", epochs=4)
    _train(proto, x, y, seeds=(5,), soft=F.one_hot(y, 3).float())
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=proto.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    want = []
    for _ in range(4):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(want)


def test_kd_trains_at_the_requested_temperature():  # R3
    x, y = _toy()
    soft = torch.softmax(torch.randn(12, 3, generator=torch.Generator().manual_seed(2)), 1)
    proto = get_protocol("kd", epochs=2)
    a = _train(proto, x, y, soft=soft, temperature=1.0)
    b = _train(proto, x, y, soft=soft, temperature=4.0)
    c = _train(dataclasses.replace(proto, temperature=4.0), x, y, soft=soft, temperature=1.0)
    k = next(iter(a.params))
    assert not torch.allclose(a.params[k], b.params[k])
    assert torch.equal(b.params[k], c.params[k])  # the protocol's temperature wins


def test_cutmix_that_pastes_nothing_is_plain_cross_entropy(monkeypatch):  # R4
    import ddcli.training as tr

    def no_box(x, protocol, generator):  # partner reversed, nothing pasted: kept fraction 1
        n, b = x.shape[:2]
        return x.flatten(0, 1), torch.arange(b - 1, -1, -1).expand(n, b), torch.ones(n)

    monkeypatch.setattr(tr, "cutmix", no_box)
    x, y = _toy()
    proto = dataclasses.replace(get_protocol("dm", epochs=2), augment="none")
    plain = _train(proto, x, y)
    mixed = _train(dataclasses.replace(proto, cutmix_prob=1.0), x, y)
    for k, v in plain.params.items():
        assert torch.allclose(v, mixed.params[k], atol=1e-6), k


def test_judges_have_their_own_batches():  # R5
    x, y = _toy()
    proto = dataclasses.replace(get_protocol("dm", epochs=1), augment="none", batch_size=4)
    ens = build_ensemble(proto, 3, 3, (8, 8), [5, 6], CPU)
    seen, fwd = [], ens.forward
    ens.forward = lambda xb: seen.append(xb.detach().clone()) or fwd(xb)
    train_ensemble(ens, x, y, proto, torch.Generator().manual_seed(1))
    assert any(not torch.equal(b[0], b[1]) for b in seen)


def test_judges_start_from_different_weights():  # R6 (single process)
    from ddcli.evaluation import model_seeds

    ens = build_ensemble(get_protocol("dm"), 3, 3, (8, 8), model_seeds(0, 3), CPU)
    w = ens.params["features.0.weight"]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])


def test_replayed_view_trains_with_that_views_soft_label(monkeypatch):  # R7
    import ddcli.training as tr

    x, y = _toy()
    n, v = len(y), 3
    u = (0.1 + 0.3 * torch.arange(v).float()).view(1, v, 1).expand(n, v, 11).clone()
    soft = F.one_hot(torch.arange(v), 3).float().expand(n, v, 3).clone()  # view k: label k
    views = Views(("crop", "flip"), True, torch.zeros(n, v, dtype=torch.long), u, soft)
    us, ts = [], []
    apply, kd = tr.augment.apply, tr.kd_loss
    monkeypatch.setattr(tr.augment, "apply", lambda xb, p, *a: us.append(p.u) or apply(xb, p, *a))
    monkeypatch.setattr(tr, "kd_loss", lambda s, t, T: ts.append(t.detach()) or kd(s, t, T))
    _train(get_protocol("kd", epochs=3), x, y, views=views)
    for ub, tb in zip(us, ts, strict=True):
        k = ((ub[:, 0] - 0.1) / 0.3).round().long()
        assert torch.equal(tb.reshape(-1, 3).argmax(1), k)


def test_the_dm_judge_augments_and_the_kd_judge_crops_and_flips_every_image(monkeypatch):
    # R8, R9
    x, y = _toy()
    proto = get_protocol("dm", epochs=2)
    a = _train(proto, x, y)
    b = _train(dataclasses.replace(proto, augment="none"), x, y)
    k = next(iter(a.params))
    assert not torch.allclose(a.params[k], b.params[k])
    flags = []
    sample = augment.sample_params
    def spy(*a_, **k_):
        flags.append(k_["all_families"] if "all_families" in k_ else a_[5])
        return sample(*a_, **k_)

    monkeypatch.setattr(augment, "sample_params", spy)
    _train(get_protocol("kd", epochs=1), x, y, seeds=(5,), soft=F.one_hot(y, 3).float())
    assert flags and all(f is True for f in flags)


def test_evaluate_images_trains_on_the_recorded_views(monkeypatch, shards):  # E5
    import ddcli.evaluation as ev
    from ddcli.data import load_dataset

    got = {}
    real = ev.train_ensemble
    monkeypatch.setattr(ev, "train_ensemble", lambda *a, **k: got.update(k) or real(*a, **k))
    n = 6
    views = Views(("crop", "flip"), True, torch.zeros(n, 2, dtype=torch.long),
                  torch.rand(n, 2, 11), torch.full((n, 2, 3), 1 / 3))
    ev.evaluate_images(torch.rand(n, 3, 8, 8), torch.arange(3).repeat_interleave(2),
                       mean=[0.5] * 3, std=[0.2] * 3, test=load_dataset(shards, "test"),
                       protocol=get_protocol("kd", epochs=1), num_models=1, seed=0, device=CPU,
                       soft=torch.full((n, 3), 1 / 3), views=views)
    assert got["views"] is not None


def test_reference_judge_recipes_are_pinned():  # P3
    p = get_protocol("tgdd")
    assert (p.epochs, p.batch_size, p.lr, p.lr_gamma, p.cutmix_prob) == (1500, 64, 0.01, 0.2, 0.5)
    assert p.milestone_epochs() == [1000, 1250]


def test_view_soft_labels_are_calibrated_like_the_image_soft_labels():  # RL2
    from ddcli.data import normalize
    from ddcli.evaluation import online_teacher
    from ddcli.models import create_model
    from ddcli.relabel import RelabelSettings, relabel_images
    from ddcli.teachers import Teacher

    data = tiny_dataset(6)
    torch.manual_seed(0)
    net = create_model("convnet", 3, 3, (8, 8), width=8)
    with torch.no_grad():
        net.classifier.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    mean, std = data.mean_std()
    t = Teacher(net.eval(), "convnet", data.classes, 3, (8, 8), mean, std, "fp", {}, None)
    pixels = data.images.float() / 255
    _, extras, record = relabel_images(pixels, data.labels, [t],
                                       RelabelSettings(calibrate="adsa", views=2), ipc=6,
                                       prior=torch.tensor([30.0, 6.0, 1.0]), mean=mean, std=std,
                                       device=CPU)
    assert record["calibrate"]["tau"] > 0
    fn = online_teacher([t], mean, std, 1.0, record["calibrate"])
    p = augment.DSAParams(augment.parse_strategy(augment.STANDARD_STRATEGY),
                          extras["views.family"][:, 1], extras["views.u"][:, 1], True)
    seen = fn(augment.apply(normalize(pixels, mean, std), p))
    assert torch.allclose(seen, extras["views.soft_labels"][:, 1], atol=1e-5)


def test_the_probe_trains_on_augmented_views(monkeypatch):  # PR6
    from test_fidelity import _tiny_backbone

    import ddcli.probe as probe

    calls = []
    rrc = probe.random_resized_crop
    monkeypatch.setattr(probe, "random_resized_crop", lambda *a, **k: calls.append(1)
                        or rrc(*a, **k))
    x, y = torch.rand(6, 3, 8, 8), torch.arange(3).repeat_interleave(2)
    probe.linear_probe(x, y, x, y, 3, _tiny_backbone(), num_models=1, epochs=2, seed=0,
                       device=CPU)
    assert len(calls) == 2
