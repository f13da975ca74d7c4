import math

import numpy as np
import pytest
import torch
from conftest import tiny_dataset, write_shards

from ddcli.data import is_long_tailed
from ddcli.losses import (
    KERNELS,
    alpha_schedule,
    amplitude_phase,
    empirical_cf,
    sample_frequencies,
    spectral_loss,
)
from ddcli.methods import create_method
from ddcli.methods.base import run_method
from ddcli.training import accuracy_report, class_groups


def kernel(name: str, x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The kernels written out directly, for the O(n·m) reference."""
    d = x[:, None, :] - y[None, :, :]
    r = d.norm(dim=-1)
    if name == "gaussian":
        return torch.exp(-(d**2).sum(-1) / (2 * sigma**2))
    if name == "laplacian":
        return torch.exp(-d.abs().sum(-1) / sigma)
    if name == "cauchy":
        return (1 / (1 + d**2 / sigma**2)).prod(-1)
    nu = float(name.split("-")[1])
    s = math.sqrt(2 * nu) * r / sigma
    if nu == 0.5:
        return torch.exp(-s)
    if nu == 1.5:
        return (1 + s) * torch.exp(-s)
    return (1 + s + s**2 / 3) * torch.exp(-s)


def mmd2(x, y, name, sigma):
    """Biased (V-statistic) MMD², the quantity the empirical CFs estimate."""
    return (kernel(name, x, x, sigma).mean() + kernel(name, y, y, sigma).mean()
            - 2 * kernel(name, x, y, sigma).mean())


def test_amplitude_plus_phase_is_the_squared_cf_gap():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5
    w = torch.randn(50, 3, generator=g)
    re_r, im_r = empirical_cf(x, w)
    re_s, im_s = empirical_cf(y, w)
    a, p = amplitude_phase(re_r, im_r, re_s, im_s)
    gap = (re_r - re_s) ** 2 + (im_r - im_s) ** 2
    assert torch.allclose(a + p, gap, atol=1e-5)
    assert (a >= 0).all() and (p >= 0).all()
    naive = torch.stack([torch.exp(1j * (x.double() @ w[m].double())).mean() for m in range(50)])
    assert torch.allclose(re_r.double(), naive.real, atol=1e-5)


@pytest.mark.parametrize("name", KERNELS)
def test_sdd_converges_to_kernel_mmd(name):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64) * 0.7 + 0.4
    sigma = 0.8
    exact = float(mmd2(x, y, name, sigma))
    w = sample_frequencies(name, 400_000, 2, sigma, torch.Generator().manual_seed(2)).double()
    half_sdd = spectral_loss(x[None], y[None], w, torch.tensor([0.5]), "mean")  # ½·SDD
    assert float(2 * half_sdd) == pytest.approx(exact, rel=0.03, abs=2e-4)


@pytest.mark.parametrize("name", KERNELS)
def test_frequencies_are_finite_at_the_uniform_draws_edge(name, monkeypatch):
    """torch.rand returns exactly 0 about once in 2**24 draws, so a CSDM run (4,096 frequencies
    × 1,024 features an iteration) meets it within a few iterations: the Cauchy kernel's
    inverse CDF turned it into an infinite frequency and a NaN loss at iteration 10 on
    CIFAR-10. Every sampler stays finite when the uniform draws are all 0."""
    import ddcli.losses as losses

    real_rand = torch.rand
    monkeypatch.setattr(losses.torch, "rand", lambda *a, **k: torch.zeros_like(real_rand(*a, **k)))
    w = sample_frequencies(name, 64, 8, 1.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(w).all()


def test_alpha_schedule():
    assert torch.equal(alpha_schedule([50] * 4), torch.full((4,), 0.5))
    a = alpha_schedule([5000, 1000, 200, 50])
    assert a[0] == pytest.approx(0.7) and a[-1] == pytest.approx(0.3)
    assert all(a[i] > a[i + 1] for i in range(3))  # monotone in class frequency
    assert alpha_schedule([500, 100, 25], "two-group").tolist() == pytest.approx([0.7, 0.7, 0.3])
    assert torch.equal(alpha_schedule([500, 100, 25], "constant"), torch.full((3,), 0.5))


def test_class_weights_move_the_loss_between_amplitude_and_phase():
    g = torch.Generator().manual_seed(0)
    r, s = torch.randn(2, 8, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    w = torch.randn(64, 4, generator=g)
    only_amp = spectral_loss(r, s, w, torch.tensor([1.0, 1.0]))
    only_phase = spectral_loss(r, s, w, torch.tensor([0.0, 0.0]))
    mixed = spectral_loss(r, s, w, torch.tensor([1.0, 0.0]))
    assert torch.allclose(mixed, torch.stack([only_amp[0], only_phase[1]]))


def test_group_accuracies_on_a_toy_case():
    assert class_groups([10, 10, 10]) is None
    # cifar10-30k is balanced up to a few images per class: no long-tailed treatment (0.2.0
    # gave it many / medium / few groups and CSDM alphas spread over 0.3 .. 0.7)
    near = [3005, 2987, 3012, 2995, 3001, 3020, 2990, 2999, 3004, 2987]
    assert not is_long_tailed(near) and class_groups(near) is None
    assert torch.equal(alpha_schedule(near), torch.full((10,), 0.5))
    assert is_long_tailed([100, 10]) and not is_long_tailed([19, 10]) and is_long_tailed([20, 10])
    groups = class_groups([100, 10, 50, 5, 30, 20])
    assert groups == {"many": [0, 2], "medium": [4, 5], "few": [1, 3]}
    labels = torch.arange(6).repeat_interleave(2)
    preds = labels.clone()[None]
    preds[0, 2:4] = 0  # class 1 (few) wrong
    r = accuracy_report(preds, labels, 6, [100, 10, 50, 5, 30, 20])
    ga = r["group_accuracy"]
    assert ga["many"] == 100.0 and ga["medium"] == 100.0 and ga["few"] == 50.0



def test_groups_and_two_group_alpha_keep_equal_counts_together():
    # ties were split by class index (three of nine 100-image classes were "few" beside a
    # 1-image class); with two classes the small one was "medium", and no class was "few"
    assert class_groups([100] * 9 + [1]) == {"many": list(range(9)), "medium": [], "few": [9]}
    assert class_groups([100, 2]) == {"many": [0], "medium": [], "few": [1]}
    assert class_groups([50, 50, 50] + [5] * 6) == {"many": [0, 1, 2], "medium": [],
                                                    "few": [3, 4, 5, 6, 7, 8]}
    cifar = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # IF 100: as before
    assert class_groups(cifar) == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    # two-group α: torch.median's lower middle value gave the 1-image classes the head α
    assert alpha_schedule([100, 1, 1, 1], "two-group").tolist() == pytest.approx(
        [0.7, 0.3, 0.3, 0.3])
    assert alpha_schedule([100, 40, 15, 5, 2, 1], "two-group").tolist() == pytest.approx(
        [0.7, 0.7, 0.7, 0.3, 0.3, 0.3])
    assert alpha_schedule([100, 100, 100, 1], "two-group").tolist() == pytest.approx(
        [0.7, 0.7, 0.7, 0.3])


TINY = dict(ipc=2, iterations=4, batch_real=4, width=8, num_freqs=64)


@pytest.mark.parametrize("method", ["csdm", "sdm"])
def test_tiny_runs_are_seeded_and_resumable(method, tmp_path):
    import signal

    from ddcli.errors import Interrupted

    ds = tiny_dataset(n=6).select(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 12]))  # 6, 2, 1
    full, _ = run_method(create_method(method, **TINY), ds, seed=2)
    again, _ = run_method(create_method(method, **TINY), ds, seed=2)
    assert torch.equal(full.images, again.images)
    assert full.labels.tolist() == [0, 0, 1, 1, 2, 2]  # IPC 2 even for a 1-image class
    ckpt = tmp_path / "c.safetensors"

    def stop(it, **_):
        if it == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted):
        run_method(create_method(method, **TINY), ds, seed=2, checkpoint=ckpt,
                   checkpoint_every=100, progress=stop, log_every=1)
    resumed, _ = run_method(create_method(method, **TINY), ds, seed=2, checkpoint=ckpt,
                            resume=True)
    assert torch.equal(resumed.images, full.images)


def test_alpha_follows_the_data_and_sdm_is_constant():
    ds = tiny_dataset(n=8)
    lt = ds.select(torch.tensor([*range(8), 8, 9, 10, 16]))  # counts 8, 3, 1
    m = create_method("csdm", **TINY)
    run_method(m, lt)
    assert m.alpha[0] > m.alpha[1] > m.alpha[2]
    s = create_method("sdm", **TINY)
    run_method(s, lt)
    assert torch.equal(s.alpha.cpu(), torch.full((3,), 0.5))


def test_pool_extractor_and_median_bandwidth(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    ds = tiny_dataset(n=6)
    m = create_method("csdm", **TINY, extractor="pool", pool_size=2, pool_epochs=1,
                      sigma="median")
    syn, _ = run_method(m, ds)
    assert len(m.members) == 2 and 0 < m.sigma < 2  # normalised features: distances in (0, 2]
    assert m.recorded_config()["sigma"] == "median"
    assert m.recorded_config()["sigma_used"] == m.sigma  # the bundle says what was measured
    assert len(list((tmp_path / "experts").glob("*/*.safetensors"))) == 2  # cached, trained once
    m2 = create_method("csdm", **TINY, extractor="pool", pool_size=2, pool_epochs=1,
                       sigma="median")
    syn2, _ = run_method(m2, ds)
    assert torch.equal(syn.images, syn2.images)


def test_median_bandwidth_is_measured_in_the_kernels_metric():
    """--sigma median for the laplacian kernel exp(-|d|_1 / s) is the median L1 distance (at
    the L2 median that kernel is ~0 between any two images on real features: 31 % on the
    CIFAR-10 validation sweep); the same draws give the L2 median for the Gaussian."""
    ds = tiny_dataset(n=6)
    sig = {}
    for kernel in ("gaussian", "laplacian"):
        m = create_method("csdm", **TINY, kernel=kernel, sigma="median")
        run_method(m, ds, seed=2)
        sig[kernel] = m.sigma
    assert sig["laplacian"] > 1.5 * sig["gaussian"]  # |d|_1 >= |d|_2, much more in many dims


def test_csdm_cli_end_to_end_with_long_tailed_data(cli, tmp_path):
    data = write_shards(tmp_path / "d", n_train=16, n_test=6)
    out = tmp_path / "c.safetensors"
    r = cli("distill", data, "-m", "csdm", "--imbalance-factor", "8", "--ipc", "3",
            "--iterations", "3", "--batch-real", "4", "--width", "8", "--num-freqs", "32",
            "--kernel", "laplacian", "--device", "cpu", "-o", out, "--json")
    assert r.code == 0, r
    assert r.json()["config"]["kernel"] == "laplacian"
    r = cli("inspect", out, "--json")
    s = r.json()
    assert s["dataset"]["class_counts"] == [16, 5, 2] and s["ipc"] == 3
    assert s["dataset"]["subset"]["imbalance_factor"] == 8
    r = cli("evaluate", out, "--test", data, "--epochs", "2", "--models", "2", "--device",
            "cpu", "--json")
    assert r.code == 0, r
    ga = r.json()["result"]["group_accuracy"]
    assert set(ga["classes"]) == {"many", "medium", "few"} and ga["classes"]["few"] == [2]
    r = cli("distill", data, "-m", "dm", "--kernel", "gaussian", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "--kernel does not apply" in r.stderr


def test_random_baseline_draws_from_the_same_long_tailed_subset(cli, tmp_path):
    data = write_shards(tmp_path / "d", n_train=16, n_test=6)
    out = tmp_path / "c.safetensors"
    assert cli("distill", data, "--imbalance-factor", "8", "--ipc", "4", "--iterations", "1",
               "--batch-real", "4", "--width", "8", "--device", "cpu", "-o", out, "-q").code == 0
    r = cli("evaluate", out, "--test", data, "--epochs", "1", "--models", "1", "--device", "cpu",
            "--baseline", "random", "--real", data, "--json")
    assert r.code == 0 and "fingerprints differ" not in r.stderr, r
    assert r.json()["baseline"]["num_train_images"] == 4 + 4 + 2  # the tail class holds 2


def test_unbalanced_test_set_warning_only_for_a_real_imbalance(cli, tmp_path):
    """Long-tailed bundles warn when the test set is more than 10 % unbalanced, and not for a
    test set balanced up to a few images (cifar10-30k's train_4)."""
    data = write_shards(tmp_path / "d", n_train=16, n_test=30)
    out = tmp_path / "c.safetensors"
    assert cli("distill", data, "--imbalance-factor", "8", "--ipc", "2", "--iterations", "1",
               "--batch-real", "4", "--width", "8", "--device", "cpu", "-o", out, "-q").code == 0
    z = np.load(data / "test.npz")
    for name, keep in (("near", [30, 30, 29]), ("skewed", [30, 30, 15])):
        idx = np.concatenate([np.nonzero(z["labels"] == c)[0][:k] for c, k in enumerate(keep)])
        folder = tmp_path / name
        folder.mkdir()
        np.savez_compressed(folder / "test.npz", images=z["images"][idx], labels=z["labels"][idx])
        (folder / "classes.json").write_text((data / "classes.json").read_text())
        r = cli("evaluate", out, "--test", folder, "--epochs", "1", "--models", "1", "--device",
                "cpu", "--json")
        assert r.code == 0, r
        assert ("the test set is not balanced" in r.stderr) == (name == "skewed"), name
