import signal

import pytest
import torch
from conftest import tiny_dataset, write_shards

from ddcli import augment
from ddcli.errors import Interrupted
from ddcli.losses import dm_loss
from ddcli.methods import create_method, list_methods
from ddcli.methods.base import ClassPool, run_method, smallest_keys

TINY = dict(ipc=2, iterations=6, batch_real=4, width=8)


def test_registry():
    assert "dm" in list_methods()


def test_batched_step_equals_the_per_class_reference():
    """One forward pass over all classes == the reference's loop over classes (instance norm)."""
    ds = tiny_dataset(n=6)
    m = create_method("dm", **TINY)
    gen = torch.Generator().manual_seed(0)
    mean, std = ds.mean_std()
    m.setup(ds, torch.device("cpu"), gen, mean, std)
    net, c, b = m.net, 3, 4
    net.reset_parameters(torch.Generator().manual_seed(1))
    real = m.pool.sample(b, torch.Generator().manual_seed(2))
    params = augment.sample_params(c, torch.Generator().manual_seed(3))
    syn = m.syn.detach().clone().requires_grad_(True)

    batched = dm_loss(net.embed(augment.apply(real, params, m.real_rows)).view(c, b, -1),
                      net.embed(augment.apply(syn, params, m.syn_labels)).view(c, 2, -1))
    g_batched, = torch.autograd.grad(batched, syn)

    syn2 = m.syn.detach().clone().requires_grad_(True)
    ref = 0
    for k in range(c):
        pk = params.take(torch.tensor([k]))
        r = net.embed(augment.apply(real[k * b:(k + 1) * b], pk, torch.zeros(b, dtype=torch.long)))
        s = net.embed(augment.apply(syn2[k * 2:(k + 1) * 2], pk, torch.zeros(2, dtype=torch.long)))
        ref = ref + ((r.mean(0) - s.mean(0)) ** 2).sum()
    g_ref, = torch.autograd.grad(ref, syn2)
    assert torch.allclose(batched, ref, rtol=1e-5)
    assert torch.allclose(g_batched, g_ref, rtol=1e-4, atol=1e-7)


def test_pool_sampling_without_replacement_and_small_classes():
    ds = tiny_dataset(n=5)
    ds = ds.select(torch.tensor([0, 1, 2, 3, 4, 5, 6, 10]))  # class counts 5, 2, 1
    pool = ClassPool(ds, torch.device("cpu"), [0.5] * 3, [0.25] * 3)
    g = torch.Generator().manual_seed(0)
    idx = pool.sample_index(4, g)
    assert idx.shape == (3, 4)
    assert len(set(idx[0].tolist())) == 4  # class 0: 4 distinct of its 5
    assert set(idx[1].tolist()) == {5, 6} and set(idx[2].tolist()) == {7}
    sorted_labels = ds.labels[torch.argsort(ds.labels, stable=True)]
    assert (sorted_labels[idx] == torch.arange(3).view(3, 1)).all()
    init = pool.init_images(3, g)  # class 2 has one image: its repeats get noise
    assert not torch.equal(init[6], init[7]) and not torch.equal(init[7], init[8])


@pytest.mark.parametrize("per_class", [8, 150])
def test_a_small_class_weighs_its_images_alike(per_class):
    # a class smaller than the batch topped it up with its first images in file order at
    # every step: 5 images in batches of 8 weighed [.25, .25, .25, .125, .125]
    ds = tiny_dataset(n=100, classes=2)
    ds = ds.select(torch.cat([torch.nonzero(ds.labels == 0).flatten(),
                              torch.nonzero(ds.labels == 1).flatten()[:5]]))
    pool = ClassPool(ds, torch.device("cpu"), [0.5] * 3, [0.25] * 3)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(2000):
        idx = pool.sample_index(per_class, g)
        assert idx[1].bincount(minlength=105)[100:].min() >= per_class // 5  # each in turn
        if per_class <= 100:
            assert len(set(idx[0].tolist())) == per_class  # (a large class: no repeats)
        counts += idx[1].bincount(minlength=105)[100:]
    share = counts / counts.sum()
    assert torch.allclose(share, torch.full((5,), 0.2), atol=0.01), share


@pytest.mark.parametrize("n", [2, 7, 1000, 70_000])
def test_smallest_keys_is_a_stable_sort_of_the_keys(n):
    """The pool's selection == a stable argsort, ties (float32 keys repeat at 2**-24; the
    padding keys are all 2.0) in order of position, at the precision limit of large rows."""
    g = torch.Generator().manual_seed(n)
    keys = torch.rand((4, n), generator=g)
    keys[:, ::3] = keys[:, :1]  # many equal keys
    keys[1, n // 2:] = 2.0  # a short class: its padding
    keys[2] = torch.randint(0, 3, (n,), generator=g) * 2.0**-24  # ties one bit apart
    k = min(n, 300)
    want = keys.argsort(dim=1, stable=True)[:, :k]
    assert torch.equal(smallest_keys(keys, k), want)


def run(ds, seed=0, **kw):
    m = create_method("dm", **{**TINY, **kw})
    syn, stats = run_method(m, ds, seed=seed)
    return syn, stats


def test_same_seed_same_result_other_seed_other_result():
    ds = tiny_dataset()
    a, _ = run(ds, seed=3)
    b, _ = run(ds, seed=3)
    c, _ = run(ds, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_distillation_lowers_the_loss_and_moves_pixels():
    ds = tiny_dataset(n=20)
    init, _ = run(ds, iterations=0)
    syn, stats = run(ds, iterations=60, lr=1.0)
    assert not torch.allclose(init.images, syn.images)
    # the DM loss under fresh random nets, before vs after
    mean, std = ds.mean_std()
    pool = ClassPool(ds, torch.device("cpu"), mean, std)
    from ddcli.models import create_model

    def avg_loss(images):
        x = (images - pool.mean) / pool.std
        total = 0.0
        for s in range(10):
            net = create_model("convnet", 3, 3, 8, width=8)
            net.reset_parameters(torch.Generator().manual_seed(100 + s))
            with torch.no_grad():
                fr = net.embed(pool.sample(20, torch.Generator().manual_seed(s)))
                total += float(dm_loss(fr.view(3, 20, -1), net.embed(x).view(3, 2, -1)))
        return total / 10

    assert avg_loss(syn.images) < 0.7 * avg_loss(init.images)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_resume_equals_an_uninterrupted_run(tmp_path, sig):
    # SIGTERM (timeout, a batch scheduler) killed the run at once: the work since the last
    # periodic checkpoint was lost; it now stops as Ctrl-C does
    ds = tiny_dataset()
    full, _ = run(ds, seed=1)
    ckpt = tmp_path / "out.ckpt.safetensors"

    def interrupt_at_3(it, **_):
        if it == 3:
            signal.raise_signal(sig)

    m = create_method("dm", **TINY)
    with pytest.raises(Interrupted, match="iteration 3/6"):
        run_method(m, ds, seed=1, checkpoint=ckpt, checkpoint_every=100,
                   progress=interrupt_at_3, log_every=1)
    assert ckpt.exists()
    resumed, stats = run_method(create_method("dm", **TINY), ds, seed=1, checkpoint=ckpt,
                                resume=True)
    assert stats["resumed_from"] == 3
    assert torch.equal(resumed.images, full.images)


def test_a_resumed_runs_total_time_counts_the_interrupted_part(tmp_path, monkeypatch):
    # a resumed bundle's wall time covered only the resumed iterations: a 10-hour run
    # interrupted at 9 hours recorded 1 hour
    import ddcli.methods.base as base

    clock = {"t": 0.0}

    def tick():  # every reading of the clock: one second later
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(base.time, "perf_counter", tick)
    ds = tiny_dataset()
    ckpt = tmp_path / "out.ckpt.safetensors"

    def stop_at_3(it, **_):
        if it == 3:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted):
        run_method(create_method("dm", **TINY), ds, checkpoint=ckpt, checkpoint_every=100,
                   progress=stop_at_3, log_every=1)
    first = clock["t"]
    _, stats = run_method(create_method("dm", **TINY), ds, checkpoint=ckpt, resume=True)
    assert stats["resumed_from"] == 3 and stats["wall_time_s"] < clock["t"] - first + 1
    assert stats["total_wall_time_s"] > stats["wall_time_s"] + 0.5
    _, fresh = run_method(create_method("dm", **TINY), ds)
    assert fresh["total_wall_time_s"] == fresh["wall_time_s"]


def test_resume_refuses_a_foreign_checkpoint(tmp_path):
    ds = tiny_dataset()
    ckpt = tmp_path / "c.safetensors"
    m = create_method("dm", **TINY)
    run_method(m, ds, seed=1, checkpoint=ckpt, checkpoint_every=2)
    assert ckpt.exists()
    from ddcli.errors import InputError

    # the option that differs is named (it said "config differs"), and the remedy works (it
    # said "drop --resume", which is refused while a checkpoint exists)
    with pytest.raises(InputError, match=r"another run \(--lr 1\.0 there, 2\.0 here\); delete "
                       r"it, or rerun with --force instead of --resume"):
        run_method(create_method("dm", **{**TINY, "lr": 2.0}), ds, seed=1, checkpoint=ckpt,
                   resume=True)


def test_a_damaged_checkpoint_is_refused_not_resumed(tmp_path):
    """A checkpoint had no checksum: flipped bits in its synthetic images resumed silently
    into another bundle (or failed later as "loss became non-finite ... a smaller --lr")."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ddcli.errors import InputError

    ds = tiny_dataset()
    ckpt = tmp_path / "c.safetensors"
    run_method(create_method("dm", **TINY), ds, seed=1, checkpoint=ckpt, checkpoint_every=2)
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 8)
    t = tensors[name].clone()
    t.view(-1)[:8].view(torch.int32).bitwise_xor_(1)  # the lowest bit of 8 numbers
    save_file({**tensors, name: t}, str(ckpt), metadata=meta)
    with pytest.raises(InputError, match="checksum does not match"):
        run_method(create_method("dm", **TINY), ds, seed=1, checkpoint=ckpt, resume=True)


def test_the_last_iteration_is_checkpointed_before_relabel_even_with_checkpoint_every_0(
        cli, tmp_path, monkeypatch):
    """With --checkpoint-every 0 nothing was saved after the last iteration, so a Ctrl-C during
    --relabel's teacher training lost every iteration; with the default it was kept. Without
    --relabel, 0 still writes nothing (a failed run left no checkpoint to refuse a rerun)."""
    import ddcli.methods.base as base

    ds = tiny_dataset()
    ckpt = tmp_path / "c.safetensors"
    run_method(create_method("dm", **TINY), ds, seed=1, checkpoint=ckpt, checkpoint_every=0)
    assert not ckpt.exists()
    full, _ = run_method(create_method("dm", **TINY), ds, seed=1, checkpoint=ckpt,
                         checkpoint_every=0, keep_last=True)
    assert ckpt.exists()
    again, stats = run_method(create_method("dm", **TINY), ds, seed=1, checkpoint=ckpt,
                              resume=True)
    assert stats["resumed_from"] == TINY["iterations"] and torch.equal(again.images, full.images)
    # the command asks for it exactly when --relabel follows
    seen = []

    def spy(*a, **k):
        seen.append(k["keep_last"])
        raise KeyboardInterrupt  # (enough: the run is not needed)

    monkeypatch.setattr(base, "run_method", spy)
    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    for extra in ([], ["--relabel"]):
        r = cli("distill", data, "--ipc", "1", "--iterations", "2", "--checkpoint-every", "0",
                "--device", "cpu", "-o", tmp_path / "o.safetensors", *extra)
        assert r.code == 130, r
    assert seen == [False, True]


def test_bad_config_values():
    from ddcli.errors import InputError

    for bad in ({"ipc": 0}, {"init": "zeros"}, {"amp": "fp8"}, {"dsa_strategy": "blur"}):
        with pytest.raises(InputError):
            create_method("dm", **bad)
    with pytest.raises(InputError, match=r"--kernel does not apply to this method \(an "
                       r"option of csdm, sdm\)"):
        create_method("dm", kernel="gaussian")
    # no method's option (a typo through the Python API): it said "does not apply"
    with pytest.raises(InputError, match="^unknown option --temperature$"):
        create_method("dm", temperature=2.0)


def test_an_ipc_beyond_a_class_size_is_warned_about(cli, tmp_path):
    """12 real images a class (6 in each of two shards), --ipc 13: the 13th starts as a noisy
    copy; say so (it was silent), once, and still distil; --ipc 12 says nothing."""
    data = write_shards(tmp_path / "d", n_train=12, n_test=3)
    for ipc, want in (("13", ["3 of 3 classes have fewer real images than --ipc 13: their"]),
                      ("12", [])):
        r = cli("distill", data, "--ipc", ipc, "--iterations", "1", "--device", "cpu", "-o",
                tmp_path / f"o{ipc}.safetensors")
        assert r.code == 0, r
        lines = [x for x in r.stderr.splitlines() if "noisy copies" in x]
        assert len(lines) == len(want), r.stderr
        assert all(w in x for w, x in zip(want, lines, strict=True)), r.stderr
