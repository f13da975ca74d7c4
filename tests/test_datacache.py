"""The memory-mapped uint8 data cache (issue 16, item 1): built once per source, resumable,
read lazily; the same dataset, fingerprint and bundles as reading into memory."""

import json

import numpy as np
import pytest
import torch
from conftest import write_image_folder, write_shards

from ddcli import datacache
from ddcli.data import load_dataset
from ddcli.errors import DataError
from ddcli.methods.base import ClassPool


def _same(a, b):
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.classes == b.classes
    assert a.info() == b.info()  # fingerprint, mean / std, counts, source, size


def test_shards_through_the_cache_equal_the_in_memory_set(tmp_path):
    data = write_shards(tmp_path / "d", n_train=20)
    mem = load_dataset(data)
    cached = load_dataset(data, cache="on")
    assert cached.mapped is not None and mem.mapped is None
    _same(cached, mem)
    folder = cached.mapped.path.parent
    meta = json.loads((folder / "meta.json").read_text())
    order = np.load(folder / "class_index.npy")
    labels = np.load(folder / "labels.npy")
    for c, (lo, n) in enumerate(zip(meta["offsets"], meta["counts"], strict=True)):
        assert (labels[order[lo:lo + n]] == c).all()  # the per-class index arrays
    # resized / converted on the way in, exactly as the in-memory path does
    _same(load_dataset(data, cache="on", image_size=(5, 6), channels=1),
          load_dataset(data, image_size=(5, 6), channels=1))
    # subsets of a cached set are the in-memory subsets
    _same(load_dataset(data, cache="on", max_per_class=3), load_dataset(data, max_per_class=3))


def test_image_folder_through_the_cache(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=5)
    _same(load_dataset(root, cache="on"), load_dataset(root))


def test_the_cache_is_built_once_and_resumes_a_killed_build(tmp_path, monkeypatch):
    data = write_shards(tmp_path / "d", n_train=20)
    reads = []
    real_build = datacache.build

    def failing_build(src, folder, workers=None, progress=None):
        read = src.read

        def flaky(i):
            if i == 1 and "killed" not in reads and "resumed" not in reads:
                reads.append("killed")
                raise KeyboardInterrupt  # killed while converting the second shard
            reads.append(i)
            return read(i)

        src.read = flaky
        return real_build(src, folder, workers=1, progress=progress)

    monkeypatch.setattr(datacache, "build", failing_build)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(data, cache="on")
    assert reads == [0, "killed"]
    reads.clear()
    reads.append("resumed")  # the next run converts only what is missing
    ds = load_dataset(data, cache="on")
    assert reads == ["resumed", 1]
    _same(ds, load_dataset(data))
    reads.clear()
    reads.append("again")
    load_dataset(data, cache="on")  # complete: nothing converted
    assert reads == ["again"]


def test_a_changed_source_gets_its_own_cache(tmp_path):
    data = write_shards(tmp_path / "d", n_train=20)
    a = load_dataset(data, cache="on")
    write_shards(tmp_path / "d", n_train=26)  # rewritten: other sizes / mtimes
    b = load_dataset(data, cache="on")
    assert a.mapped.path != b.mapped.path and len(b) == len(load_dataset(data))


def test_auto_caches_large_sets_only(tmp_path, monkeypatch):
    data = write_shards(tmp_path / "d", n_train=20)
    assert load_dataset(data, cache="auto").mapped is None  # far below 1 GiB
    monkeypatch.setenv("DDCLI_DATA_CACHE_MIN_BYTES", "1")
    assert load_dataset(data, cache="auto").mapped is not None


def test_a_streaming_pool_draws_the_batches_of_the_device_pool(tmp_path):
    data = write_shards(tmp_path / "d", n_train=20)
    cached = load_dataset(data, cache="on")
    mem = load_dataset(data)
    mean, std = mem.mean_std()
    a = ClassPool(cached, torch.device("cpu"), mean, std)
    b = ClassPool(mem, torch.device("cpu"), mean, std)
    assert a.src.mapped is not None and a.src.u8 is None and b.src.mapped is None
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        assert torch.equal(a.sample(4, ga), b.sample(4, gb))
    assert torch.equal(a.init_images(2, ga), b.init_images(2, gb))
    # the per-iteration batches, read one iteration ahead in a worker thread when streamed
    for classes in (None, (1, 3), None):
        assert torch.equal(a.next_batch(4, ga, classes), b.next_batch(4, gb, classes))
    assert a._next[2] is not None and b._next[2] is None  # a is reading the next one


def test_the_pending_batch_survives_a_resume(tmp_path):
    """The batch drawn ahead is state: a pool restored from it, with the generator's state,
    continues with the batches the first pool gives."""
    data = write_shards(tmp_path / "d", n_train=20)
    ds = load_dataset(data, cache="on")
    mean, std = ds.mean_std()
    a = ClassPool(ds, torch.device("cpu"), mean, std)
    ga = torch.Generator().manual_seed(5)
    a.next_batch(3, ga)
    st, rng = a.state(), ga.get_state()
    assert set(st) == {"real_next"} and st["real_next"].shape == (3, 3)
    want = [a.next_batch(3, ga) for _ in range(2)]
    b = ClassPool(ds, torch.device("cpu"), mean, std)
    gb = torch.Generator()
    gb.set_state(rng)
    b.load_state(st)
    assert all(torch.equal(b.next_batch(3, gb), w) for w in want)


def test_distill_through_the_cache_writes_the_same_bundle(cli, tmp_path):
    import ddcli

    data = write_shards(tmp_path / "d", n_train=20)
    bundles = {}
    for mode in ("off", "on"):
        r = cli("distill", data, "-m", "dm", "--ipc", "2", "--iterations", "3", "--batch-real",
                "4", "--width", "8", "--device", "cpu", "--data-cache", mode, "-o",
                tmp_path / f"{mode}.safetensors", "--json")
        assert r.code == 0, r
        bundles[mode] = ddcli.load_bundle(tmp_path / f"{mode}.safetensors")
    on, off = bundles["on"], bundles["off"]  # the command lines differ, nothing else
    assert torch.equal(on.images, off.images) and torch.equal(on.labels, off.labels)
    assert on.dataset == off.dataset and on.config == off.config
    r = cli("distill", data, "--data-cache", "sometimes", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "--data-cache" in r.stderr


def test_fingerprint_from_digests_is_the_naive_canonical_hash():
    """The vectorised canonical order (label, then digest) hashes what a per-image loop does."""
    import hashlib

    from ddcli.data import fingerprint

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8))
    x[7] = x[3]  # duplicates too
    y = torch.from_numpy(rng.integers(0, 5, 40))
    classes = [f"c{i}" for i in range(5)]
    digests = [hashlib.sha256(x[i].numpy().tobytes()).digest() for i in range(40)]
    h = hashlib.sha256()
    h.update(json.dumps(classes).encode())
    h.update(json.dumps([3, 4, 4]).encode())
    for i in sorted(range(40), key=lambda i: (int(y[i]), digests[i])):
        h.update(int(y[i]).to_bytes(8, "little") + digests[i])
    assert fingerprint(x, y, classes) == h.hexdigest()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    assert fingerprint(x[perm], y[perm], classes) == h.hexdigest()


def test_normalized_images_stream_what_a_normalised_copy_holds(tmp_path):
    """Teachers, experts and test sets index a NormalizedImages: the values of the whole set
    normalised at once, from memory or read batch by batch from the cache (rows, slices)."""
    from ddcli.data import NormalizedImages, normalize

    data = write_shards(tmp_path / "d", n_train=20)
    mem, cached = load_dataset(data), load_dataset(data, cache="on")
    mean, std = mem.mean_std()
    whole = normalize(mem.images.float() / 255, mean, std)
    rows = torch.tensor([7, 3, 3, 40, 0])
    idx = torch.tensor([4, 0, 2])
    for ds in (mem, cached):
        x = NormalizedImages(ds, torch.device("cpu"), mean, std)
        assert (x.mapped is None) == (ds is mem) and x.shape == whole.shape
        assert torch.equal(x[idx], whole[idx]) and torch.equal(x[5:9], whole[5:9])
        sub = NormalizedImages(ds, torch.device("cpu"), mean, std, rows=rows)
        assert len(sub) == 5 and torch.equal(sub[idx], whole[rows[idx]])
        assert torch.equal(sub[1:], whole[rows[1:]])


def test_teachers_and_experts_from_the_cache_equal_those_from_memory(tmp_path):
    from ddcli.experts import build_experts, load_trajectory
    from ddcli.teachers import train_teacher

    data = write_shards(tmp_path / "d", n_train=20)
    cpu = torch.device("cpu")
    got = {}
    for mode in ("off", "on"):
        ds = load_dataset(data, cache=mode)
        t, _ = train_teacher(ds, "convnet", device=cpu, epochs=2)
        paths = build_experts(ds, num=1, device=cpu, cache=tmp_path / mode, epochs=2, width=8)
        got[mode] = (t, load_trajectory(paths[0]))
    (t_off, e_off), (t_on, e_on) = got["off"], got["on"]
    assert t_on.val_accuracy == t_off.val_accuracy
    for a, b in zip(t_on.model.state_dict().values(), t_off.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    last_on, last_off = e_on.snapshots[-1], e_off.snapshots[-1]
    assert all(torch.equal(last_on[k], last_off[k]) for k in last_off)


def test_experts_command_reads_through_the_cache(cli, tmp_path, monkeypatch):
    """`ddcli experts --data-cache on` trains from the cache and files the trajectories under
    the same key as an in-memory run (the fingerprint is the set's, not the reader's)."""
    import json as json_

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    data = write_shards(tmp_path / "d", n_train=20)
    args = ["experts", data, "--num-experts", "1", "--expert-epochs", "1", "--width", "8",
            "--device", "cpu", "--json", "--quiet"]
    on = cli(*args, "--data-cache", "on")
    assert on.code == 0, on
    assert (tmp_path / "cache" / "data").is_dir()
    off = cli(*args, "--data-cache", "off")
    assert off.code == 0, off
    assert json_.loads(on.stdout)["folder"] == json_.loads(off.stdout)["folder"]
    bad = cli(*args, "--data-cache", "sometimes")
    assert bad.code == 2 and "--data-cache" in bad.stderr


def test_evaluate_and_relabel_read_through_the_cache(cli, tmp_path, monkeypatch):
    """`evaluate --data-cache on` (test and baseline sets) and `relabel --data-cache on` (the
    teacher's data) give what the in-memory runs give."""
    import ddcli

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    data = write_shards(tmp_path / "d", n_train=20)
    bundle = tmp_path / "b.safetensors"
    r = cli("distill", data, "--ipc", "2", "--iterations", "2", "--batch-real", "4", "--width",
            "8", "--device", "cpu", "--data-cache", "off", "-o", bundle, "--quiet")
    assert r.code == 0, r
    got = {}
    for mode in ("off", "on"):  # a cache each: the "on" run trains its own teacher
        monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / f"cache-{mode}"))
        e = cli("evaluate", bundle, "--test", data, "--models", "2", "--epochs", "3",
                "--baseline", "random", "--real", data, "--device", "cpu", "--compile", "off",
                "--data-cache", mode, "--json", "--quiet")
        assert e.code == 0, e
        out = tmp_path / f"soft-{mode}.safetensors"
        rl = cli("relabel", bundle, "--data", data, "--train-teacher", "convnet",
                 "--teacher-epochs", "1", "--device", "cpu", "--data-cache", mode, "-o", out,
                 "--quiet")
        assert rl.code == 0, rl
        got[mode] = (e.json(), ddcli.load_bundle(out).soft_labels)
    (e_off, soft_off), (e_on, soft_on) = got["off"], got["on"]
    assert (tmp_path / "cache-on" / "data").is_dir()
    assert not (tmp_path / "cache-off" / "data").exists()
    assert len(list((tmp_path / "cache-on" / "teachers").iterdir())) == 1
    assert e_on["result"]["accuracy_per_model"] == e_off["result"]["accuracy_per_model"]
    assert e_on["baseline"]["accuracy_per_model"] == e_off["baseline"]["accuracy_per_model"]
    assert torch.equal(soft_on, soft_off)


def test_a_file_replaced_with_its_size_and_time_kept_is_read_again(tmp_path):
    """The cache knew a file by path, size and modification time: a file replaced by another
    of the same size whose time was kept (cp -p, rsync -a, tar -x) served the old pixels."""
    import os

    from PIL import Image

    root = tmp_path / "d"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.bmp")
    first = load_dataset(root, cache="on")
    target = root / "cat" / "0.bmp"
    st = target.stat()
    new = tmp_path / "new.bmp"
    Image.new("RGB", (8, 8), (0, 200, 0)).save(new)
    assert new.stat().st_size == st.st_size
    os.replace(new, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_dataset(root, cache="on")
    assert again.fingerprint == load_dataset(root).fingerprint != first.fingerprint


def test_a_damaged_entry_is_refused_with_its_remedy(tmp_path):
    """A truncated images file, a lost labels file or a garbled meta.json ended the run with an
    internal error (exit 1) or a bare "No such file or directory"."""
    data = write_shards(tmp_path / "d", n_train=20)
    first = load_dataset(data, cache="on")
    folder = first.mapped.path.parent
    saved = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for damage in (lambda: (folder / "images.u8").write_bytes(saved["images.u8"][:100]),
                   lambda: (folder / "labels.npy").unlink(),
                   lambda: (folder / "labels.npy").write_bytes(b""),  # (EOFError: "interrupted")
                   lambda: (folder / "meta.json").write_text("garbage")):
        damage()
        with pytest.raises(DataError, match="is damaged .*cache clear data"):
            load_dataset(data, cache="on")
        for name, content in saved.items():  # mended: read again
            (folder / name).write_bytes(content)
        assert len(load_dataset(data, cache="on")) == len(first)


def test_a_damaged_entry_is_one_error_line_not_an_interruption(cli, tmp_path, monkeypatch):
    """An empty labels.npy (what a power loss left: it was not synced before meta.json said
    the entry was complete) raised EOFError, which click reports as Ctrl-C: "error:
    interrupted", exit 130."""
    from conftest import assert_one_line_error

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    data = write_shards(tmp_path / "d", n_train=20)
    folder = load_dataset(data, cache="on").mapped.path.parent
    (folder / "labels.npy").write_bytes(b"")
    r = cli("distill", data, "--ipc", "1", "--iterations", "1", "--device", "cpu",
            "--data-cache", "on", "-o", tmp_path / "b.safetensors")
    assert_one_line_error(r, 2, "is damaged")


def test_an_eof_error_is_an_internal_error_not_an_interruption(cli, monkeypatch):
    from ddcli import api

    def ends_early(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(api, "distill", ends_early)
    r = cli("distill", "--iterations", "1")
    assert r.code == 1 and "interrupted" not in r.stderr, r
    assert "internal error" in r.stderr and "Ran out of input" in r.stderr, r


def test_two_folders_of_the_same_files_keep_their_own_names(tmp_path):
    """Folders whose shards are symbolic links to the same files share one cache entry; the
    second was read under the first's name (in the bundle, and the default output name)."""
    data = write_shards(tmp_path / "d", n_train=20)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        for f in data.iterdir():
            (tmp_path / name / f.name).symlink_to(f)
    a = load_dataset(tmp_path / "one", cache="on")
    b = load_dataset(tmp_path / "two", cache="on")
    assert a.mapped.path == b.mapped.path  # one entry
    assert (a.name, b.name) == ("one", "two")


def test_an_empty_shard_resized_through_the_cache(tmp_path):
    """An empty shard beside others, with --image-size, failed only through the cache
    (torch.cat of no chunks: an internal error)."""
    data = write_shards(tmp_path / "d", n_train=20)
    np.savez(data / "train_3.npz", images=np.zeros((0, 8, 8, 3), np.uint8),
             labels=np.zeros(0, np.int64))
    on = load_dataset(data, image_size=(12, 12), cache="on")
    off = load_dataset(data, image_size=(12, 12), cache="off")
    assert torch.equal(on.images, off.images) and on.fingerprint == off.fingerprint


def test_data_cache_on_is_honoured_for_the_built_in_sample(cli, tmp_path, monkeypatch):
    """`--data-cache on` with no DATA (the built-in sample) was ignored by distill and by
    evaluate's test set, and honoured by evaluate's implied --real set."""
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    r = cli("distill", "--ipc", "1", "--iterations", "1", "--data-cache", "on", "-o",
            tmp_path / "b.safetensors")
    assert r.code == 0, r
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1  # the sample's train split
    r = cli("evaluate", tmp_path / "b.safetensors", "--models", "1", "--epochs", "1",
            "--data-cache", "on", "--quiet")
    assert r.code == 0, r
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 2  # and its test split
