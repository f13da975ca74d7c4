import json

import pytest
import torch
from conftest import tiny_dataset, tiny_dit_pipeline, write_shards

from ddcli.errors import InputError
from ddcli.losses import deviation_cost, ot_guidance_cost
from ddcli.methods import create_method
from ddcli.methods.base import run_method
from ddcli.priors import PRIOR_META, PriorRecipe, load_prior, prior_dir, train_prior

TINY_PRIOR = dict(prior_channels=(8, 16), prior_steps=3, sampling_steps=4, real_per_class=6)


def tiny_unet(classes: int | None):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       num_class_embeds=classes)


def save_pipeline(folder, unet, classes=None):
    from diffusers import DDPMScheduler

    unet.save_pretrained(str(folder / "unet"))
    DDPMScheduler(num_train_timesteps=100).save_pretrained(str(folder / "scheduler"))
    if classes:
        (folder / PRIOR_META).write_text(json.dumps({"classes": classes, "null_id": None}))
    return folder


def test_unet_pipeline_saved_and_reloaded(tmp_path):
    torch.manual_seed(0)
    unet = tiny_unet(3)
    folder = save_pipeline(tmp_path / "p", unet, ["b", "a", "c"])
    prior = load_prior(folder, ["a", "b", "c"])
    assert prior.kind == "unet" and not prior.latent and prior.sample_shape == (3, 8, 8)
    assert prior.label_ids == {"a": 1, "b": 0, "c": 2}  # by name, not by position
    z = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = unet(z, 10, class_labels=torch.tensor([1])).sample
        assert torch.allclose(prior.eps(z, 10, torch.tensor([1])), ref, atol=1e-5)
    with pytest.raises(InputError, match="no class named 'd'"):
        load_prior(folder, ["a", "d"])


def test_refusals(tmp_path):
    folder = save_pipeline(tmp_path / "u", tiny_unet(None))
    with pytest.raises(InputError, match="no class conditioning"):
        load_prior(folder, ["a", "b"])
    with pytest.raises(InputError, match="prior not found"):
        load_prior(tmp_path / "missing", ["a", "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a DiTPipeline"):
        load_prior(tmp_path / "empty", ["a", "b"])


def test_latent_path_for_a_dit_pipeline(tmp_path):
    tiny_dit_pipeline(tmp_path / "dit", {"0": "a, alpha", "1": "b", "2": "c"})
    prior = load_prior(tmp_path / "dit", ["c", "alpha", "b"])
    assert prior.kind == "dit" and prior.latent and prior.sample_shape == (4, 4, 4)
    assert prior.label_ids == {"c": 2, "alpha": 0, "b": 1}
    with torch.no_grad():
        e = prior.eps(torch.randn(1, 4, 4, 4), 10, torch.tensor([2]))
        assert e.shape == (1, 4, 4, 4)  # learned sigma dropped
        z = prior.encode(torch.rand(1, 3, 8, 8))
        assert z.shape == (1, 4, 4, 4) and prior.decode(z).shape == (1, 3, 8, 8)


def test_one_guided_step_lowers_the_ot_cost():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(20, 6, generator=g) + 2.0
    samples = torch.randn(4, 6, generator=g, requires_grad=True)
    cost, plan = ot_guidance_cost(samples, real, reg=0.05)
    assert torch.allclose(plan.sum(1), torch.full((4,), 0.25), atol=1e-4)
    (grad,) = torch.autograd.grad(cost, samples)
    moved = samples.detach() - 0.5 * grad / grad.pow(2).mean().sqrt()
    assert ot_guidance_cost(moved, real, reg=0.05)[0] < cost
    x = torch.randn(6, requires_grad=True)
    assert deviation_cost(x, torch.zeros(0, 6)) == 0
    assert float(deviation_cost(x.detach(), x.detach()[None])) == pytest.approx(1.0)


def test_prior_training_is_cached_and_resumable(tmp_path):
    from ddcli.errors import Interrupted

    ds = tiny_dataset(n=4)
    recipe = PriorRecipe(steps=4, batch_size=4, channels=(8, 16), checkpoint_every=2)
    with pytest.raises(Interrupted, match="step 3"):
        train_prior(ds, device=torch.device("cpu"), cache=tmp_path, recipe=recipe,
                    should_stop=_stop_at(3))
    folder, cached = train_prior(ds, device=torch.device("cpu"), cache=tmp_path, recipe=recipe)
    assert not cached and (folder / "unet" / "config.json").exists()
    assert json.loads((folder / PRIOR_META).read_text())["classes"] == ["c0", "c1", "c2"]
    assert train_prior(ds, device=torch.device("cpu"), cache=tmp_path, recipe=recipe) == (
        folder, True)
    assert load_prior(folder, ds.classes).null_id == 3
    # Ctrl-C on the last step: the resumed run had no step left and failed for good reading
    # the loss of a step it never ran (UnboundLocalError, in every rerun)
    with pytest.raises(Interrupted, match="step 4"):
        train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "last", recipe=recipe,
                    should_stop=_stop_at(4))
    again, cached = train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "last",
                                recipe=recipe)
    assert not cached and torch.equal(_unet_weights(again), _unet_weights(folder))
    meta = json.loads((again / PRIOR_META).read_text())
    assert meta["final_loss"] == json.loads((folder / PRIOR_META).read_text())["final_loss"]
    # a resumed prior's config named its deleted .partial folder, where an uninterrupted one
    # names none; and the weights were written 0600 (a group's shared cache could not read them)
    fresh, _ = train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "fresh", recipe=recipe)
    assert (folder / "unet" / "config.json").read_text() == \
        (fresh / "unet" / "config.json").read_text()
    assert "partial" not in (again / "unet" / "config.json").read_text()
    import os

    mask = os.umask(0)
    os.umask(mask)
    for f in (folder / "unet").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


def _unet_weights(folder):
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder / "unet"))
    return torch.cat([p.detach().flatten() for p in unet.parameters()])

def _stop_at(n: int):
    """A ``should_stop`` that says stop on its n-th call (the n-th step)."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return stop



def test_prior_samples_from_the_ema_of_its_weights_and_resumes_it(tmp_path):
    ds = tiny_dataset(n=4)
    cpu = torch.device("cpu")
    recipe = PriorRecipe(steps=6, batch_size=4, channels=(8, 16), checkpoint_every=2)
    raw = PriorRecipe(steps=6, batch_size=4, channels=(8, 16), ema=False)
    # a prior without the EMA keeps the cache key it had before the option existed
    assert "ema" not in raw.key() and recipe.key()["ema"] is True
    assert prior_dir(tmp_path, ds, raw, 0) != prior_dir(tmp_path, ds, recipe, 0)
    plain, _ = train_prior(ds, device=cpu, cache=tmp_path / "raw", recipe=raw)
    straight, _ = train_prior(ds, device=cpu, cache=tmp_path / "a", recipe=recipe)
    w_raw, w_ema = _unet_weights(plain), _unet_weights(straight)
    # the same training (same seed, same draws): the EMA weights lag the last step's
    assert (w_ema - w_raw).abs().max() > 1e-6
    # a run stopped at step 3 and resumed ends with the same EMA as one that ran through
    from ddcli.errors import Interrupted

    with pytest.raises(Interrupted):
        train_prior(ds, device=cpu, cache=tmp_path / "b", recipe=recipe, should_stop=_stop_at(3))
    resumed, _ = train_prior(ds, device=cpu, cache=tmp_path / "b", recipe=recipe)
    assert torch.equal(_unet_weights(resumed), w_ema)


def test_otgen_end_to_end_and_unguided_ablation(cli, tmp_path):
    data = write_shards(tmp_path / "d", n_train=8, n_test=4)
    out = tmp_path / "g.safetensors"
    r = cli("distill", data, "-m", "otgen", "--ipc", "2", "--prior-steps", "3",
            "--sampling-steps", "4", "--real-per-class", "6", "--device", "cpu", "-o", out,
            "--prior-channels", "8,16", "--json")
    assert r.code == 0, r
    conf = r.json()["config"]
    assert conf["prior_kind"] == "unet" and conf["latent"] is False
    assert conf["ot_scale"] is None and conf["ot_scale_used"] == 15.0  # the UNet default
    r = cli("inspect", out, "--json")
    assert r.json()["ipc"] == 2 and r.json()["method"] == "otgen"
    r = cli("distill", data, "-m", "otgen", "--ipc", "2", "--prior-steps", "3",
            "--sampling-steps", "4", "--ot-scale", "0", "--device", "cpu", "-o",
            tmp_path / "u.safetensors", "--prior-channels", "8,16", "--json")
    assert r.code == 0 and r.json()["config"]["ot_scale"] == 0.0, r
    assert r.json()["config"]["ot_scale_used"] == 0.0
    r = cli("distill", data, "-m", "otgen", "--prior-channels", "8,x", "-o",
            tmp_path / "x.safetensors")
    assert r.code == 2 and "--prior-channels" in r.stderr
    r = cli("distill", data, "-m", "otgen", "--prior-channels", "0,16", "-o",
            tmp_path / "x.safetensors")  # parsed as ints, refused by the config's range check
    assert r.code == 2 and "--prior-channels" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    import signal

    from ddcli.errors import Interrupted

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    ds = tiny_dataset(n=4, size=8)
    kw = {**TINY_PRIOR, "sampling_steps": 3}
    full, _ = run_method(create_method("otgen", ipc=1, **kw), ds, seed=1)
    assert full.images.shape == (3, 3, 8, 8)

    def stop(it, **_):
        if it == 2:
            signal.raise_signal(signal.SIGINT)

    ckpt = tmp_path / "k.safetensors"
    with pytest.raises(Interrupted):
        run_method(create_method("otgen", ipc=1, **kw), ds, seed=1, checkpoint=ckpt,
                   progress=stop, log_every=1)
    resumed, _ = run_method(create_method("otgen", ipc=1, **kw), ds, seed=1,
                            checkpoint=ckpt, resume=True)
    assert torch.allclose(resumed.images, full.images, atol=1e-5)


def test_prior_command_prepares_the_cache_distill_uses_with_the_same_seed(cli, tmp_path):
    """`ddcli prior --seed N` with distill's data and prior options trains the prior a later
    `distill -m otgen --seed N` finds; another seed is another prior."""
    data = write_shards(tmp_path / "d", n_train=12, n_test=6)
    opts = ["--prior-steps", "2", "--prior-channels", "8,16", "--prior-batch", "4"]
    r = cli("prior", data, *opts, "--seed", "2", "--device", "cpu", "--json")
    assert r.code == 0 and r.json()["seed"] == 2 and r.json()["cached"] is False, r
    priors = tmp_path / "cache" / "priors"
    before = sorted(p.name for p in priors.iterdir())
    r = cli("distill", data, "-m", "otgen", "--ipc", "1", *opts, "--sampling-steps", "2",
            "--real-per-class", "4", "--seed", "2", "--device", "cpu", "-o",
            tmp_path / "o.safetensors", "--json")
    assert r.code == 0, r
    assert sorted(p.name for p in priors.iterdir()) == before  # found, not trained again
    r = cli("prior", data, *opts, "--seed", "3", "--device", "cpu", "--json")
    assert r.code == 0 and r.json()["cached"] is False and len(list(priors.iterdir())) == 2
    # without the EMA: another prior, which distill --no-prior-ema then finds
    r = cli("prior", data, *opts, "--no-prior-ema", "--seed", "3", "--device", "cpu", "--json")
    assert r.code == 0 and r.json()["cached"] is False and len(list(priors.iterdir())) == 3
    r = cli("distill", data, "-m", "otgen", "--ipc", "1", *opts, "--no-prior-ema",
            "--sampling-steps", "2", "--real-per-class", "4", "--seed", "3", "--device", "cpu",
            "-o", tmp_path / "o3.safetensors", "--json")
    assert r.code == 0 and r.json()["config"]["prior_ema"] is False, r
    assert len(list(priors.iterdir())) == 3


def test_unet_prior_guides_at_its_validated_scale_unless_told(cli, tmp_path, monkeypatch):
    """--ot-scale unset: 15 for ddcli's UNet priors (validation split, RESULTS.md), IGD's 5
    for DiT priors; a given --ot-scale wins. The step really uses it, not only the record."""
    import ddcli.methods.otgen as otgen

    scales, real_step = [], otgen.igd_step

    def spy(grad, eps, alpha_bar, scale):
        scales.append(scale)
        return real_step(grad, eps, alpha_bar, scale)

    monkeypatch.setattr(otgen, "igd_step", spy)
    assert otgen.DEFAULT_OT_SCALE == {"dit": 5.0, "unet": 15.0}
    data = write_shards(tmp_path / "d", n_train=8, n_test=4)
    for extra, want in (((), 15.0), (("--ot-scale", "7"), 7.0)):
        scales.clear()
        r = cli("distill", data, "-m", "otgen", "--ipc", "1", "--prior-steps", "2",
                "--sampling-steps", "4", "--real-per-class", "4", "--device", "cpu",
                "--prior-channels", "8,16", "-o", tmp_path / "g.safetensors", "--force",
                "--json", *extra)
        assert r.code == 0, r
        assert scales and set(scales) == {want}
        assert r.json()["config"]["ot_scale_used"] == want


def test_influence_term_is_igds_gradient_matching():
    """G_I: the flat parameter gradient of the mean CE (all parameters, one vector), 1 − cos to
    the real one, averaged over checkpoints; a step against its gradient lowers it."""
    from ddcli.losses import influence_cost
    from ddcli.methods.otgen import ce_param_grad

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 3))
    states = [{k: torch.randn_like(v) for k, v in net.state_dict().items()} for _ in range(2)]
    x = torch.randn(4, 3, 2, 2)
    net.load_state_dict(states[1])
    loss = torch.nn.functional.cross_entropy(net(x), torch.full((4,), 2))
    want = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])
    assert torch.allclose(ce_param_grad(net, states[1], x, 2), want, atol=1e-6)
    real = torch.stack([ce_param_grad(net, s, torch.randn(6, 3, 2, 2), 2) for s in states])
    pseudo = torch.randn(2, real.shape[1])
    cos = [float(pseudo[k] @ real[k] / pseudo[k].norm() / real[k].norm()) for k in range(2)]
    assert float(influence_cost(pseudo, real)) == pytest.approx(1 - sum(cos) / 2, abs=1e-5)
    sample = torch.randn(1, 3, 2, 2, requires_grad=True)

    def cost(s):
        return influence_cost(torch.stack([ce_param_grad(net, st, s, 2, create_graph=True)
                                           for st in states]), real)

    before = cost(sample)
    (g,) = torch.autograd.grad(before, sample)
    moved = sample.detach() - 0.05 * g / g.pow(2).mean().sqrt()
    assert float(cost(moved).detach()) < float(before.detach())


def test_influence_guidance_trains_a_surrogate_and_steers_the_samples(cli, tmp_path,
                                                                      monkeypatch):
    """--influence-scale k > 0: a cached surrogate trajectory, its real-gradient memory, and a
    step of IGD's size × k at every guided timestep; 0 (the default): none of it."""
    import ddcli.methods.otgen as otgen

    scales, real_step = [], otgen.igd_step

    def spy(grad, eps, alpha_bar, scale):
        scales.append(scale)
        return real_step(grad, eps, alpha_bar, scale)

    monkeypatch.setattr(otgen, "igd_step", spy)
    data = write_shards(tmp_path / "d", n_train=8, n_test=4)
    base = ["distill", data, "-m", "otgen", "--ipc", "2", "--prior-steps", "2",
            "--sampling-steps", "4", "--real-per-class", "4", "--device", "cpu",
            "--prior-channels", "8,16", "--ot-scale", "0", "--force", "--json"]
    r = cli(*base, "-o", tmp_path / "plain.safetensors")
    assert r.code == 0 and r.json()["config"]["surrogate_source"] is None and not scales, r
    assert r.json()["config"]["guided_timesteps"] == []  # (the window was listed, unguided)
    r = cli(*base, "-o", tmp_path / "infl.safetensors", "--influence-scale", "3",
            "--surrogate-epochs", "2", "--surrogate-checkpoints", "0,2")
    assert r.code == 0, r
    conf = r.json()["config"]
    assert conf["surrogate_checkpoints"] == [0, 2] and conf["influence_scale"] == 3.0
    traj = otgen.load_trajectory(conf["surrogate_source"])
    assert traj.epochs == 2 and traj.meta["recipe"]["name"] == "igd-surrogate"
    assert scales == [3.0] * (6 * len(conf["guided_timesteps"]))  # 6 samples
    from ddcli.bundle import load_bundle

    a, b = (load_bundle(tmp_path / f"{n}.safetensors").images for n in ("plain", "infl"))
    assert a.shape == b.shape and not torch.equal(a, b)
    r = cli(*base, "-o", tmp_path / "x.safetensors", "--influence-scale", "3",
            "--surrogate-epochs", "2", "--surrogate-checkpoints", "0,3")
    assert r.code == 2 and "--surrogate-checkpoints" in r.stderr


def test_bundle_records_how_its_prior_was_really_trained(cli, tmp_path):
    """The prior_* options apply only when distill trains the prior: with --prior DIR the
    bundle records the folder's own recipe (ddcli's metadata) in ``prior_trained``, and None
    for a prior ddcli did not train, so a bundle never claims a recipe its prior did not have."""
    data = write_shards(tmp_path / "d", n_train=12, n_test=6)
    r = cli("prior", data, "--prior-steps", "2", "--prior-channels", "8,16", "--prior-batch",
            "4", "--no-prior-ema", "--seed", "5", "--device", "cpu", "-o", tmp_path / "p",
            "--json")
    assert r.code == 0, r
    r = cli("distill", data, "-m", "otgen", "--ipc", "1", "--prior", tmp_path / "p",
            "--sampling-steps", "2", "--real-per-class", "4", "--device", "cpu", "-o",
            tmp_path / "o.safetensors", "--json")
    assert r.code == 0, r
    cfg = r.json()["config"]
    # the options that train ddcli's own prior trained nothing: recorded as None (they were
    # recorded with their defaults, as if they had run)
    assert all(cfg[k] is None for k in ("prior_steps", "prior_channels", "prior_batch",
                                        "prior_ema")), cfg
    trained = cfg["prior_trained"]
    assert trained["recipe"]["steps"] == 2 and trained["recipe"]["ema"] is False
    assert trained["recipe"]["channels"] == [8, 16] and trained["seed"] == 5
    # a prior trained by distill itself records the same recipe as its options
    r = cli("distill", data, "-m", "otgen", "--ipc", "1", "--prior-steps", "2",
            "--prior-channels", "8,16", "--prior-batch", "4", "--sampling-steps", "2",
            "--real-per-class", "4", "--device", "cpu", "-o", tmp_path / "o2.safetensors",
            "--json")
    assert r.code == 0, r
    recipe = r.json()["config"]["prior_trained"]["recipe"]
    assert (recipe["steps"], recipe["batch_size"], recipe["ema"]) == (2, 4, True)
    tiny_dit_pipeline(tmp_path / "dit", {"0": "a", "1": "b"})
    assert load_prior(tmp_path / "dit", ["a", "b"]).trained is None
    # what the folder holds, not only its path: two priors copied in turn to one folder made
    # bundles whose metadata differed by the date alone
    from ddcli.io import tree_sha256

    assert cfg["prior_sha256"] == tree_sha256(tmp_path / "p")
    (tmp_path / "p" / "unet" / "config.json").write_text("{}")
    assert tree_sha256(tmp_path / "p") != cfg["prior_sha256"]


def test_ctrl_c_during_prior_training_saves_a_checkpoint(tmp_path):
    # no caller passed should_stop: Ctrl-C at step 259 of 3,000 lost every step (the next
    # periodic checkpoint was at 1,000)
    import signal

    from ddcli.errors import Interrupted

    ds = tiny_dataset(n=4)
    recipe = PriorRecipe(steps=4, batch_size=4, channels=(8, 16), checkpoint_every=1000)

    def ctrl_c_at_step_3(done, **kw):
        if done == 3:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted, match="step 3; checkpoint saved"):
        train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "a", recipe=recipe,
                    progress=ctrl_c_at_step_3)
    steps = []
    resumed, _ = train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "a",
                             recipe=recipe, progress=lambda done, **kw: steps.append(done))
    assert steps == [4]  # resumed after step 3
    whole, _ = train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "b", recipe=recipe)
    assert torch.equal(_unet_weights(resumed), _unet_weights(whole))


def test_a_damaged_or_half_replaced_prior_checkpoint(tmp_path):
    """A truncated state.pt in the prior's checkpoint failed every rerun with an internal error
    (exit 1) naming no remedy; a kill between the two renames that replace the checkpoint left
    none (only .partial.tmp, which the next run deleted): it started over from step 0."""
    import shutil

    from ddcli.errors import InputError, Interrupted

    ds = tiny_dataset(n=4)
    recipe = PriorRecipe(steps=4, batch_size=4, channels=(8, 16), checkpoint_every=2)
    whole, _ = train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "w", recipe=recipe)

    def stopped(cache):
        with pytest.raises(Interrupted, match="step 3"):
            train_prior(ds, device=torch.device("cpu"), cache=cache, recipe=recipe,
                        should_stop=_stop_at(3))
        return next(cache.glob("priors/*.partial"))

    partial = stopped(tmp_path / "d")
    state = partial / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot be read.*delete that folder"):
        train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "d", recipe=recipe)
    # killed after the old checkpoint moved aside, before the new one took its name
    partial = stopped(tmp_path / "k")
    previous = partial.with_name(partial.name + ".old")
    partial.rename(previous)
    steps = []
    again, _ = train_prior(ds, device=torch.device("cpu"), cache=tmp_path / "k", recipe=recipe,
                           progress=lambda done, **_: steps.append(done))
    assert steps == [4] and torch.equal(_unet_weights(again), _unet_weights(whole))
    assert not previous.exists() and not partial.exists()
    shutil.rmtree(tmp_path / "d")


def test_the_prior_trains_once_while_another_process_trains_it(tmp_path):
    """Two CI jobs training one prior at once wrote one temporary folder: the entry was left
    without its unet/ and taken for complete by every later run. One trains, the other waits
    for it (here: the lock held, the trainer waits; released, it finds or trains the prior)."""
    import threading
    import time

    from ddcli.io import build_lock

    ds = tiny_dataset(n=4)
    recipe = PriorRecipe(steps=2, batch_size=4, channels=(8, 16))
    folder = prior_dir(tmp_path, ds, recipe, 0, torch.device("cpu"))
    out = {}
    with build_lock(folder.with_name(folder.name + ".lock")):
        t = threading.Thread(target=lambda: out.update(r=train_prior(
            ds, device=torch.device("cpu"), cache=tmp_path, recipe=recipe)))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not list(folder.parent.glob(folder.name + "*.tmp")) \
            and not folder.with_name(folder.name + ".partial").exists()
    t.join(timeout=300)
    assert out["r"] == (folder, False) and (folder / "unet").is_dir()
    assert not folder.with_name(folder.name + ".lock").exists()  # done: no lock left


def test_a_resumed_prior_keeps_its_only_checkpoint_until_the_next_is_in_place(tmp_path,
                                                                               monkeypatch):
    """Resumed from .partial.old (a kill between the renames), the next save deleted .old
    before the new checkpoint took its name: a kill then left none."""
    from pathlib import Path

    from ddcli.errors import Interrupted

    ds = tiny_dataset(n=4)
    recipe = PriorRecipe(steps=6, batch_size=4, channels=(8, 16), checkpoint_every=2)
    with pytest.raises(Interrupted):
        train_prior(ds, device=torch.device("cpu"), cache=tmp_path, recipe=recipe,
                    should_stop=_stop_at(3))
    partial = next(tmp_path.glob("priors/*.partial"))
    previous = partial.with_name(partial.name + ".old")
    partial.rename(previous)
    real = Path.rename

    class Killed(Exception):
        pass

    def rename(self, target):
        if Path(target) == partial:
            raise Killed  # the kill, as the new checkpoint was taking its name
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Killed):
        train_prior(ds, device=torch.device("cpu"), cache=tmp_path, recipe=recipe)
    assert (previous / "state.pt").exists() and (previous / "unet").is_dir()


def test_resume_refuses_a_prior_folder_that_changed_and_prior_is_recorded_absolute(
        cli, tmp_path, monkeypatch):
    # a --prior folder retrained between a kill and --resume gave one bundle the samples of two
    # priors, recorded as the second's; a relative --prior was recorded as typed, so the same
    # folder named another way was "another run", and --prior-steps beside --prior was ignored
    import signal

    from ddcli.errors import Interrupted

    monkeypatch.chdir(tmp_path)
    data = write_shards(tmp_path / "d", n_train=8, n_test=4)
    opts = ["--prior-channels", "8,16", "--prior-batch", "4", "--device", "cpu", "--force"]
    assert cli("prior", data, "--prior-steps", "2", *opts, "-o", "p").code == 0
    kw = {"prior": str(tmp_path / "p"), "sampling_steps": 3, "real_per_class": 4}

    def stop(it, **_):
        if it == 2:
            signal.raise_signal(signal.SIGINT)

    ckpt = tmp_path / "k.safetensors"
    ds = load_dataset_for(data)
    with pytest.raises(Interrupted):
        run_method(create_method("otgen", ipc=1, **kw), ds, seed=1, checkpoint=ckpt,
                   progress=stop, log_every=1)
    assert cli("prior", data, "--prior-steps", "3", *opts, "-o", "p").code == 0
    with pytest.raises(InputError, match="the --prior folder's contents changed"):
        run_method(create_method("otgen", ipc=1, **kw), ds, seed=1, checkpoint=ckpt,
                   resume=True)
    base = ["distill", data, "-m", "otgen", "--ipc", "1", "--sampling-steps", "2",
            "--real-per-class", "4", "--device", "cpu", "--json"]
    r = cli(*base, "--prior", "p", "-o", "o.safetensors")
    assert r.code == 0 and r.json()["config"]["prior"] == str(tmp_path / "p"), r
    r = cli(*base, "--prior", "p", "--prior-steps", "9", "-o", "x.safetensors")
    assert r.code == 2 and "--prior-steps trains ddcli's own prior" in r.stderr, r
    r = cli(*base, "--prior", "p", "--no-prior-ema", "-o", "x.safetensors")
    assert r.code == 2 and "--prior-ema trains ddcli's own prior" in r.stderr, r


def load_dataset_for(data):
    from ddcli.data import load_dataset

    return load_dataset(data, "train")


def test_old_checkpoints_and_ipc_1_deviation_are_described_as_they_are(tmp_path, monkeypatch):
    # a checkpoint of an older ddcli (no prior hash in its key) was refused as "the --prior
    # folder's contents changed"; the deviation term alone at IPC 1 guides nothing, yet the
    # window was recorded as guided
    from ddcli.methods.base import _key_difference

    why = _key_difference("input_prior_sha256", None, "ab" * 32)
    assert "older ddcli" in why and "contents changed" not in why
    assert "contents changed" in _key_difference("input_prior_sha256", "cd" * 32, "ab" * 32)
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    ds = tiny_dataset(n=4, size=8)
    for ipc, guided in ((1, False), (2, True)):
        m = create_method("otgen", ipc=ipc, ot_scale=0.0, dev_scale=5.0, **TINY_PRIOR)
        run_method(m, ds, seed=1)
        assert bool(m.recorded_config()["guided_timesteps"]) is guided, ipc
