import os

import pytest
import torch
from conftest import tiny_dataset, write_shards

from ddcli import formation
from ddcli.errors import InputError
from ddcli.experts import build_experts, load_trajectory
from ddcli.losses import tgdd_loss
from ddcli.methods import create_method
from ddcli.methods.base import run_method
from ddcli.methods.tgdd import sequential_class_steps
from ddcli.protocols import get_protocol
from ddcli.training import cutmix


def test_sequential_class_steps_equal_the_reference_loop():
    """C SGD steps, one per class on the whole tensor, == the closed form."""
    g = torch.Generator().manual_seed(0)
    c, lr, m = 4, 0.3, 0.5
    labels = torch.arange(c).repeat_interleave(3)
    w = torch.randn(12, 5, generator=g)
    p0 = torch.randn(12, 5, generator=g)

    def class_losses(p):  # class k's loss depends only on its own rows
        per_row = ((p * w) ** 2).sum(1) + (p.sum(1) - 1) ** 2
        return torch.zeros(c).index_add(0, labels, per_row * (1 + labels.float()))

    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=lr, momentum=m)
    for _ in range(3):  # three outer iterations: momentum carries over
        for k in range(c):
            opt.zero_grad()
            class_losses(ref)[k].backward()
            opt.step()
    p, buf = p0.clone(), torch.zeros_like(p0)
    for _ in range(3):
        p, buf, _ = sequential_class_steps(p, buf, labels, c, lr, m, class_losses)
    assert torch.allclose(p, ref.detach(), atol=1e-5)
    assert torch.allclose(buf, opt.state[ref]["momentum_buffer"], atol=1e-5)


def test_tgdd_loss_against_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    r, s = torch.randn(3, 5, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    logits = torch.randn(3, 2, 3, generator=g)
    out = tgdd_loss(r, s, logits, 2.5)
    for k in range(3):
        mmd = ((r[k].mean(0) - s[k].mean(0)) ** 2).sum()
        ce = torch.nn.functional.cross_entropy(logits[k], torch.full((2,), k))
        assert torch.allclose(out[k], mmd + 2.5 * ce, atol=1e-6)


def test_window_sampling_stays_in_the_expert_region():
    ds = tiny_dataset(n=6)
    m = create_method("tgdd", ipc=1, iterations=0, batch_real=4, width=8, num_experts=2,
                      expert_epochs=4, window=3)
    run_method(m, ds)
    seen = set()
    for _ in range(600):
        i, js, jf = m._pick()
        assert 0 <= i < 2 and 0 <= js <= 4 and js <= jf <= min(js + 2, 4)
        seen.add((js, jf - js))
    assert {(0, 0), (0, 2), (4, 0), (2, 2)} <= seen


def test_multi_formation_round_trip():
    tiles = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 8, 8)  # constant images
    enc = formation.encode(tiles, 2)
    assert enc.shape == (2, 3, 8, 8)
    assert enc[0, 0, 0, 0] == 0 and enc[0, 0, 0, 7] == 1 and enc[0, 0, 7, 0] == 2
    assert torch.equal(formation.decode(enc, 2), tiles)  # decode(encode(x)) == x here
    img = torch.rand(1, 3, 8, 8)
    dec = formation.decode(img, 2)
    for r in range(2):
        for c in range(2):  # tile (r, c) -> image r·f + c: its quadrant, upsampled
            quad = img[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
            up = torch.nn.functional.interpolate(quad, size=(8, 8), mode="bilinear")
            assert torch.allclose(dec[2 * r + c], up[0])
    assert formation.decode_labels(torch.tensor([0, 1]), 2).tolist() == [0] * 4 + [1] * 4


def test_expert_cache_hit_miss_and_foreign_data(tmp_path):
    ds = tiny_dataset(n=6)
    kw = dict(num=2, device=torch.device("cpu"), cache=tmp_path, epochs=2, width=8)
    paths = build_experts(ds, **kw)
    t = load_trajectory(paths[0], ds.fingerprint)
    assert t.epochs == 2 and len(t.snapshots) == 3
    assert not torch.equal(t.snapshots[0]["classifier.weight"], t.snapshots[2]["classifier.weight"])
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    assert build_experts(ds, **kw) == paths  # hit: nothing retrained
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps
    whole = [load_trajectory(p).snapshots[-1] for p in paths]
    # a killed build writes the missing trajectory only, and the one a whole build wrote (it
    # was trained alone: other draws, another trajectory, so the same seed gave another bundle)
    paths[1].unlink()
    assert build_experts(ds, **kw) == paths and os.stat(paths[0]).st_mtime_ns == stamps[0]
    again = load_trajectory(paths[1]).snapshots[-1]
    assert all(torch.equal(again[k], whole[1][k]) for k in again)
    one = build_experts(ds, **{**kw, "num": 1})  # fewer experts: their own folder and draws
    assert one[0].parent != paths[0].parent
    assert build_experts(ds, **{**kw, "epochs": 3})[0] != paths[0]  # another recipe: a miss
    with pytest.raises(InputError, match="other data"):
        load_trajectory(paths[0], "0" * 64)


def test_cutmix_mixes_a_box_and_reports_the_kept_fraction():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 1, 8, 8)
    proto = get_protocol("tgdd")
    mixed, partner, kept = cutmix(x.contiguous(), proto, g)
    mixed = mixed.view(2, 4, 1, 8, 8)
    for mdl in range(2):
        changed = (mixed[mdl] != x[mdl]).float().mean(dim=(1, 2, 3))
        own = (mixed[mdl, :, 0] == x[mdl, :, 0]).float().mean(dim=(1, 2))
        fixed_points = partner[mdl] == torch.arange(4)
        assert torch.allclose(own[~fixed_points], kept[mdl].expand(int((~fixed_points).sum())))
        assert changed[fixed_points].sum() == 0
    none = get_protocol("tgdd", cutmix_prob=0.0)
    assert torch.equal(cutmix(x.contiguous(), none, g)[0].view_as(x), x)


def test_tgdd_end_to_end_with_multi_formation(cli, tmp_path):
    data = write_shards(tmp_path / "d", n_train=16, n_test=6)
    r = cli("experts", data, "--num-experts", "2", "--expert-epochs", "2", "--width", "8",
            "--device", "cpu", "--json", "-o", tmp_path / "copy", "--seed", "3")
    assert r.code == 0 and len(r.json()["trajectories"]) == 2, r
    assert r.json()["seed"] == 3
    assert len(list((tmp_path / "copy").glob("*.safetensors"))) == 2
    cached = set((tmp_path / "cache" / "experts").rglob("*.safetensors"))
    out = tmp_path / "t.safetensors"
    r = cli("distill", data, "-m", "tgdd", "--ipc", "2", "--iterations", "4", "--batch-real",
            "4", "--width", "8", "--num-experts", "2", "--expert-epochs", "2", "--device", "cpu",
            "-o", out, "--json", "--seed", "3")
    assert r.code == 0, r
    # the same seed finds what `ddcli experts` prepared: nothing new is trained
    assert set((tmp_path / "cache" / "experts").rglob("*.safetensors")) == cached
    conf = r.json()["config"]
    assert conf["factor"] == 2 and conf["alpha"] == 2.5 and conf["lr"] == pytest.approx(0.02)
    r = cli("inspect", out, "--json")
    assert r.json()["factor"] == 2 and r.json()["pixel_range"][0] >= 0
    r = cli("inspect", out, "--decode", "--export", tmp_path / "dec")
    assert r.code == 0 and len(list((tmp_path / "dec").rglob("*.png"))) == 6 * 4, r
    r = cli("evaluate", out, "--test", data, "-p", "tgdd", "--epochs", "2", "--models", "2",
            "--device", "cpu", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["factor"] == 2 and rep["result"]["num_train_images"] == 24
    assert rep["protocol"]["cutmix_prob"] == 0.5 and rep["protocol"]["batch_size"] == 64
    r = cli("relabel", out, "--teacher", out, "-o", tmp_path / "r.safetensors")
    assert r.code == 2 and "multi-formation" in r.stderr


def test_tgdd_resume_equals_uninterrupted(tmp_path, monkeypatch):
    import signal

    from ddcli.errors import Interrupted

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    ds = tiny_dataset(n=6)
    kw = dict(ipc=1, iterations=4, batch_real=4, width=8, num_experts=2, expert_epochs=2,
              factor=2)
    full, _ = run_method(create_method("tgdd", **kw), ds, seed=5)

    def stop(it, **_):
        if it == 2:
            signal.raise_signal(signal.SIGINT)

    ckpt = tmp_path / "c.safetensors"
    with pytest.raises(Interrupted):
        run_method(create_method("tgdd", **kw), ds, seed=5, checkpoint=ckpt, progress=stop,
                   log_every=1)
    resumed, _ = run_method(create_method("tgdd", **kw), ds, seed=5, checkpoint=ckpt,
                            resume=True)
    assert torch.equal(resumed.images, full.images)


def test_a_trajectory_changed_in_place_is_refused_with_the_remedy(tmp_path, monkeypatch):
    """Expert trajectories had no checksum: 4 KB overwritten at the same size were used
    without a word (here: a run ending "loss became non-finite"), and no refusal of a damaged
    cache entry said what to do."""
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path))
    ds = tiny_dataset(n=4)
    (path,) = build_experts(ds, num=1, device=torch.device("cpu"), cache=tmp_path / "experts",
                            epochs=1, width=8)
    load_trajectory(path, ds.fingerprint)  # as written: read
    raw = bytearray(path.read_bytes())
    raw[-64:-32] = bytes(32)  # numbers inside the last tensor, the file's size kept
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"checksum mismatch .*'ddcli cache clear experts'"):
        load_trajectory(path, ds.fingerprint)
