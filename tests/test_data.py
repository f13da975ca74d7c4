import json

import numpy as np
import pytest
import torch
from conftest import CLASSES, write_image_folder, write_shards

from ddcli.data import (
    cap_per_class,
    fingerprint,
    load_dataset,
    long_tailed_counts,
    make_long_tailed,
    sample_dir,
)
from ddcli.errors import DataError


def test_shards_splits_and_globs(shards):
    train = load_dataset(shards, "train")
    test = load_dataset(shards, "test")
    assert len(train) == 36 and len(test) == 18
    assert train.classes == CLASSES and train.images.shape[1:] == (3, 8, 8)
    assert train.class_counts == [12, 12, 12]
    only1 = load_dataset(shards, "train", files="train_1.npz")
    assert len(only1) == 18
    one_file = load_dataset(shards / "test.npz")
    assert len(one_file) == 18


def test_shard_test_split_missing_is_refused(tmp_path):
    folder = write_shards(tmp_path / "s")
    (folder / "test.npz").unlink()
    # it names what the folder holds and the option (an npz export holds train.npz alone)
    with pytest.raises(DataError, match=r"no test shards \(it holds train_1\.npz, train_2\.npz\); "
                       r"choose them with --test-files, e\.g\. --test-files 'train_1\.npz'"):
        load_dataset(folder, "test")


def test_inconsistent_and_corrupt_shards(tmp_path):
    folder = write_shards(tmp_path / "s")
    np.savez(folder / "train_3.npz", images=np.zeros((2, 4, 4, 3), np.uint8),
             labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="inconsistent shards"):
        load_dataset(folder, "train")
    (folder / "train_3.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read shard .*train_3.npz"):
        load_dataset(folder, "train")
    (folder / "train_3.npz").unlink()
    (folder / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match="outside the 2 classes"):
        load_dataset(folder, "train")


def test_image_folder_reads_classes_in_sorted_order(image_folder):
    ds = load_dataset(image_folder)
    assert ds.classes == sorted(CLASSES)
    assert ds.class_counts == [4, 4, 4] and ds.images.shape == (12, 3, 8, 8)


def test_image_folder_train_split_dirs(tmp_path):
    write_image_folder(tmp_path / "d" / "train")
    write_image_folder(tmp_path / "d" / "val", n=2)
    assert len(load_dataset(tmp_path / "d", "train")) == 12
    assert len(load_dataset(tmp_path / "d", "test")) == 6


def test_mixed_sizes_and_modes_resolve_to_majority(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "d", n=3, size=8, mode="L")
    Image.new("RGB", (12, 10), (255, 0, 0)).save(root / "cat" / "odd.png")
    Image.new("RGBA", (8, 8), (0, 255, 0, 128)).save(root / "dog" / "alpha.png")
    warnings = []
    ds = load_dataset(root, warn=warnings.append)
    assert ds.channels == 1 and ds.image_size == (8, 8)  # 9 gray 8x8 vs 2 colour
    # said, with counts (both were silent)
    assert any("1 of 11 images" in w and "resized" in w and "8x8" in w for w in warnings), \
        warnings
    assert any("2 of 11 images" in w and "colour: converted to greyscale" in w
               for w in warnings), warnings
    warnings.clear()
    rgb = load_dataset(root, channels=3, image_size=(16, 16), warn=warnings.append)
    assert rgb.images.shape == (11, 3, 16, 16)
    assert not warnings  # chosen by the caller: nothing to say


def test_data_read_to_match_a_bundle_says_what_it_resized_or_converted(tmp_path):
    """A test set read at a bundle's size and mode (evaluate --test, --real, relabel --data)
    was resized / converted without a word: a 28 px set judged a 32 px bundle upsampled."""
    from PIL import Image

    root = write_image_folder(tmp_path / "d", n=3, size=8)
    Image.new("L", (12, 10), 7).save(root / "cat" / "odd.png")
    said = []
    load_dataset(root, image_size=(8, 8), channels=3, conform="the bundle's", warn=said.append)
    assert any("1 of 10 images" in w and "10x12" in w and "resized to the bundle's size" in w
               for w in said), said
    assert any("1 of 10 images" in w and "greyscale: converted to RGB, the bundle's mode" in w
               for w in said), said
    said.clear()
    load_dataset(root, image_size=(8, 8), channels=3, warn=said.append)
    assert not said  # (without conform: the caller's own --image-size, nothing to say)
    shards = write_shards(tmp_path / "s", size=8, channels=1)
    for cache in ("off", "on"):
        said.clear()
        ds = load_dataset(shards, "test", image_size=(16, 16), channels=3, cache=cache,
                          conform="the bundle's", warn=said.append)
        assert ds.images.shape[1:] == (3, 16, 16)
        assert any("18 of 18 images" in w and "(8x8)" in w and "resized" in w for w in said), said
        assert any("18 of 18 images" in w and "greyscale" in w for w in said), said
    said.clear()
    load_dataset(shards, "test", image_size=(8, 8), channels=1, conform="the bundle's",
                 warn=said.append)
    assert not said


def test_unreadable_images_are_named_or_skipped(image_folder):
    (image_folder / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read image") as e:
        load_dataset(image_folder)
    assert str(image_folder / "cat") in str(e.value) and "--skip-bad" in str(e.value)
    warnings = []
    ds = load_dataset(image_folder, skip_bad=True, warn=warnings.append)
    assert len(ds) == 12 and "skipped 1 unreadable image" in warnings[0]


def test_non_image_files_are_skipped_with_a_count(image_folder):
    (image_folder / "cat" / "notes.txt").write_text("hi")
    (image_folder / "dog" / "README").write_text("hi")
    (image_folder / "dog" / "labels.csv").write_text("a,b")
    warnings = []
    ds = load_dataset(image_folder, warn=warnings.append)
    assert len(ds) == 12 and len(warnings) == 1
    assert "skipped 3 non-image file(s)" in warnings[0] and ".txt" in warnings[0]


def test_folder_errors(tmp_path, image_folder):
    with pytest.raises(DataError, match="dataset not found"):
        load_dataset(tmp_path / "nope")
    (image_folder / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images"):
        load_dataset(image_folder)
    single = tmp_path / "single"
    write_image_folder(single)
    for d in ("dog", "frog"):
        for f in (single / d).iterdir():
            f.unlink()
        (single / d).rmdir()
    with pytest.raises(DataError, match="single class"):
        load_dataset(single)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(tmp_path / "flat")


def test_fingerprint_is_order_independent_and_content_sensitive(image_folder, shards):
    a = load_dataset(shards, "train")
    perm = torch.randperm(len(a))
    assert fingerprint(a.images[perm], a.labels[perm], a.classes) == a.fingerprint
    changed = a.images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert fingerprint(changed, a.labels, a.classes) != a.fingerprint
    assert fingerprint(a.images, a.labels, ["x", "y", "z"]) != a.fingerprint
    assert load_dataset(shards, "train").fingerprint == a.fingerprint


def test_long_tailed_counts_follow_the_formula():
    assert long_tailed_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139,
                                                     83, 50]
    assert long_tailed_counts([5000] * 10, 10)[-1] == 500
    assert long_tailed_counts([5000] * 10, 200)[-1] == 25
    assert long_tailed_counts([30, 25, 40], 5) == [25, 11, 5]  # n_max = the smallest count


def test_long_tailed_subset_is_exact_and_seeded(shards):
    ds = load_dataset(shards, "train")
    lt = make_long_tailed(ds, 4)
    assert lt.class_counts == [12, 6, 3]
    again = load_dataset(shards, "train", imbalance_factor=4)
    assert torch.equal(lt.images, again.images) and lt.subset["imbalance_factor"] == 4
    other = make_long_tailed(ds, 4, seed=1)
    assert not torch.equal(other.images, lt.images)
    with pytest.raises(DataError):
        make_long_tailed(ds, 0.5)
    capped = cap_per_class(ds, 5)
    assert capped.class_counts == [5, 5, 5]


def test_builtin_sample_is_there():
    ds = load_dataset(sample_dir(), "train")
    assert ds.class_counts == [300] * 10 and ds.image_size == (28, 28) and ds.channels == 1
    assert load_dataset(sample_dir(), "test").class_counts == [100] * 10
    assert (sample_dir() / "LICENSE").read_text().count("MIT") >= 1


def _npz(path, entries: dict, version=None):
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in entries.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, version=version)
            zf.writestr(f"{key}.npy", buf.getvalue())
    return path


def test_shards_parse_their_npy_headers_under_one_lock(tmp_path, monkeypatch):
    """numpy parses npy headers with ast.literal_eval, which CPython 3.11 cannot run in two
    threads at once ("AST constructor recursion depth mismatch", seen in the data cache's
    threaded build): every parse ddcli makes holds ``_NPY_HEADER_LOCK`` (np.load did not)."""
    import ast

    from ddcli import data as ddata

    seen = []
    real = ast.literal_eval

    def checked(s):
        seen.append(ddata._NPY_HEADER_LOCK.locked())
        return real(s)

    monkeypatch.setattr(ast, "literal_eval", checked)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    labels = np.arange(5) % 2
    f = _npz(tmp_path / "a.npz", {"images": np.asfortranarray(images), "labels": labels})
    x, y = ddata._load_shard(f)
    assert np.array_equal(x, images) and np.array_equal(y, labels) and x.flags.c_contiguous
    grey = _npz(tmp_path / "g.npz", {"images": images[..., 0], "labels": labels})
    x, _ = ddata._load_shard(grey)
    assert x.shape == (5, 6, 7, 1) and np.array_equal(x[..., 0], images[..., 0])
    ddata._shard_source([f], ["a", "b"], "t", "t", None, None)
    assert seen and all(seen)
    v3 = _npz(tmp_path / "v3.npz", {"images": images, "labels": labels}, version=(3, 0))
    with pytest.raises(DataError, match="npy format 3.0"):
        ddata._load_shard(v3)


def test_images_in_subfolders_of_a_class_are_read_and_hidden_ones_skipped(tmp_path):
    # the hidden-part check called Path.name on str parts: any nested image was an internal
    # error (exit 1) in every command that reads data
    from PIL import Image

    root = write_image_folder(tmp_path / "d", n=4)
    (root / "cat" / "sub").mkdir()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(root / "cat" / "sub" / "nested.png")
    (root / "cat" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8), (7, 7, 7)).save(root / "cat" / ".thumbs" / "t.png")
    for cache in ("off", "on"):
        ds = load_dataset(root, cache=cache)
        assert len(ds) == 13 and ds.class_counts[0] == 5


def test_16_bit_images_are_scaled_and_32_bit_ones_refused(tmp_path):
    # 16-bit grey was clipped by PIL's convert("L") (a 0..65535 gradient read as almost all
    # 255), a float TIFF in [0, 1] as almost all 0
    from PIL import Image

    root = tmp_path / "d"
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(ramp).save(root / c / f"{i}.png")
    ds = load_dataset(root)
    assert ds.channels == 1
    want = (ramp.astype(np.int64) * 255 + 32767) // 65535
    assert torch.equal(ds.images[0, 0], torch.from_numpy(want.astype(np.uint8)))
    Image.fromarray(ramp.astype(np.float32) / 65535).save(root / "a" / "f.tif")
    with pytest.raises(DataError, match="32-bit float pixels .* no fixed range.*--skip-bad"):
        load_dataset(root)
    warnings = []
    assert len(load_dataset(root, skip_bad=True, warn=warnings.append)) == 4
    assert "skipped 1 unreadable image" in warnings[0]


def test_skip_bad_skips_undecodable_pixels_through_the_data_cache_too(tmp_path):
    # an image whose header reads and whose pixels do not: --skip-bad skipped it in memory,
    # and the cache stopped on it; both now give the same set
    root = write_image_folder(tmp_path / "d", n=5)
    good = (root / "dog").glob("*.png").__next__().read_bytes()
    (root / "dog" / "trunc.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="trunc.png.*pass --skip-bad"):
        load_dataset(root, cache="on")
    ref = load_dataset(root, skip_bad=True)
    for _ in range(2):  # building the cache, then reading it
        warnings = []
        ds = load_dataset(root, cache="on", skip_bad=True, warn=warnings.append)
        assert len(ds) == len(ref) == 15 and torch.equal(ds.images, ref.images)
        assert ds.fingerprint == ref.fingerprint and ds.mean_std() == ref.mean_std()
        assert warnings == [f"skipped 1 unreadable image(s) in {root}"]
    with pytest.raises(DataError, match="1 image.* cannot be decoded.*--skip-bad"):
        load_dataset(root, cache="on")  # the cache built with --skip-bad, read without it


def test_folder_warnings_come_once_when_auto_keeps_a_small_set_in_memory(image_folder):
    # --data-cache auto planned a small folder twice: every warning came twice (3 then 3 + k)
    (image_folder / "cat" / "notes.txt").write_text("hi")
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    warnings = []
    load_dataset(image_folder, cache="auto", skip_bad=True, warn=warnings.append)
    assert len(warnings) == 2 and "skipped 1 non-image" in warnings[0]
    assert "skipped 1 unreadable image" in warnings[1]


def test_an_empty_shard_is_read_through_the_cache(tmp_path):
    # memoryview().cast on a 0-row chunk was an internal error
    data = write_shards(tmp_path / "d", n_train=12)
    np.savez(data / "train_3.npz", images=np.zeros((0, 8, 8, 3), np.uint8),
             labels=np.zeros(0, np.int64))
    on, off = load_dataset(data, cache="on"), load_dataset(data)
    assert torch.equal(on.images, off.images) and on.fingerprint == off.fingerprint
    for f in data.glob("train_[12].npz"):
        f.unlink()
    with pytest.raises(DataError, match="no images"):
        load_dataset(data, cache="on")


def test_a_dataset_given_as_dot_is_named_after_its_folder(image_folder, monkeypatch):
    # "." had an empty name: the default output became "-dm-ipc1.safetensors"
    monkeypatch.chdir(image_folder)
    assert load_dataset(".").name == image_folder.name


def test_images_too_small_for_the_networks_are_refused(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    np.savez(data / "train.npz", images=np.zeros((4, 1, 1, 3), np.uint8),
             labels=np.array([0, 1, 0, 1]))
    (data / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match="1x1 px, too small .*--image-size"):
        load_dataset(data)
    assert load_dataset(data, image_size=(4, 4)).image_size == (4, 4)


def test_shard_label_errors_name_the_bad_label(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "classes.json").write_text(json.dumps(["a", "b"]))
    x = np.zeros((3, 4, 4, 3), np.uint8)
    for labels, match in ((np.array([-1, 0, 1]), "label -1 outside the 2 classes"),
                          (np.array([2**63, 0, 1], np.uint64), f"label {2**63} outside"),
                          (np.array([[0], [1], [0]]), r"one-dimensional \(N,\), got shape")):
        np.savez(data / "train.npz", images=x, labels=labels)
        for cache in ("off", "on"):
            with pytest.raises(DataError, match=match):
                load_dataset(data, cache=cache)


def test_an_unreadable_image_names_the_callers_skip_option(image_folder):
    (image_folder / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"broken.png.*\(remove or replace it\)"):
        load_dataset(image_folder, "test", skip_flag=None)  # evaluate has no --skip-bad


def test_library_warnings_become_one_warning_line_each(image_folder, recwarn):
    # PIL's UserWarning on palette transparency reached stderr as Python's two-line warning
    from PIL import Image

    im = Image.fromarray(np.zeros((8, 8), np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    for i in range(2):
        im.save(image_folder / "cat" / f"p{i}.png", transparency=b"\x00\x80")
    warnings = []
    ds = load_dataset(image_folder, warn=warnings.append)
    assert len(ds) == 14 and not recwarn.list
    assert warnings == ["2 x UserWarning while reading the data: Palette images with "
                        "Transparency expressed in bytes should be converted to RGBA images"]


def test_symlinked_subfolders_of_a_class_are_followed_once(tmp_path):
    # a class's subfolder that was a symbolic link was skipped (real subfolders were read;
    # torchvision's ImageFolder follows links); a link to a folder above must not loop
    from PIL import Image

    root = write_image_folder(tmp_path / "d", n=4)
    elsewhere = tmp_path / "more"
    elsewhere.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(elsewhere / f"m{i}.png")
    (root / "cat" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "cat" / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)
    ds = load_dataset(root)
    assert ds.class_counts[0] == 7 and len(ds) == 15


def test_split_folders_in_any_case_and_classes_named_like_splits(tmp_path):
    """Split folders spelled other than train / test / val (Kaggle's Training/ Testing/,
    TRAIN/) were read as two classes, test images trained on; a class named like a split
    (CIFAR-100's "train") was taken for a split."""
    for train, test in (("Training", "Testing"), ("TRAIN", "Validation")):
        root = tmp_path / train
        write_image_folder(root / train)
        write_image_folder(root / test, n=2)
        ds = load_dataset(root, "train")
        assert ds.classes == sorted(CLASSES) and len(ds) == 12
        assert len(load_dataset(root, "test")) == 6
    # a class "train" holding images beside other classes: four classes
    c100 = write_image_folder(tmp_path / "c100", classes=["apple", "bus", "tractor", "train"])
    assert load_dataset(c100).classes == ["apple", "bus", "tractor", "train"]
    # splits beside other folders (docs/, models/): the splits, as before
    mixed = write_image_folder(tmp_path / "mixed" / "train")
    write_image_folder(tmp_path / "mixed" / "notes", classes=["a", "b"])
    assert load_dataset(mixed.parent).classes == sorted(CLASSES)
    # a class named like a split whose images sit in subfolders, beside another class and no
    # training split: classes (it read so before "validation" was a split name)
    nested = tmp_path / "nested"
    write_image_folder(nested / "validation" / "sub", classes=["x", "y"])
    write_image_folder(nested / "other" / "sub", classes=["x", "y"])
    assert load_dataset(nested).classes == ["other", "validation"]


def test_folder_layout_warnings_and_what_is_never_a_class(tmp_path):
    """__MACOSX (a Mac zip's resource forks) was refused as an empty class; images at the root
    of DATA were ignored silently; splits under other names (Train2019/) are said."""
    from PIL import Image

    root = write_image_folder(tmp_path / "d")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._img000.png").write_bytes(b"x")
    Image.new("RGB", (8, 8)).save(root / "stray.png")
    said: list[str] = []
    ds = load_dataset(root, warn=said.append)
    assert ds.classes == sorted(CLASSES)
    assert any("1 image(s) outside any class folder" in w for w in said), said
    splits = tmp_path / "s"
    write_image_folder(splits / "Train2019")
    write_image_folder(splits / "Test2019", n=2)
    said.clear()
    assert load_dataset(splits, warn=said.append).classes == ["Test2019", "Train2019"]
    assert any("look like splits" in w for w in said), said
    said.clear()  # a nested class layout is not warned about
    load_dataset(tmp_path / "d", warn=said.append)
    assert not any("look like splits" in w for w in said)


def test_dangling_links_are_errors_not_silent_drops(tmp_path):
    """A class folder that is a link to an unmounted disk, or an image link to a deleted
    file, was left out without a word (a whole class missing)."""
    root = write_image_folder(tmp_path / "d")
    (root / "zebra").symlink_to(tmp_path / "unmounted" / "zebra")
    said: list[str] = []
    assert len(load_dataset(root, warn=said.append)) == 12
    assert any("zebra link(s) to nothing" in w for w in said), said
    (root / "zebra").unlink()
    (root / "cat" / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(DataError, match="gone.png"):
        load_dataset(root)
    said: list[str] = []
    assert len(load_dataset(root, skip_bad=True, warn=said.append)) == 12
    assert any("skipped 1" in w for w in said), said


def test_exif_rotated_photos_are_read_upright(tmp_path):
    """A phone's portrait photo (stored landscape, EXIF orientation 6) was read sideways, and
    an upright copy of it squashed to the folder's landscape size."""
    from PIL import Image

    upright = np.zeros((32, 24, 3), np.uint8)
    upright[:16] = 255  # 32 tall, 24 wide, white on top
    for c in ("a", "b"):
        d = tmp_path / "exif" / c
        d.mkdir(parents=True)
        Image.fromarray(upright).save(d / "upright.png")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise to display
        Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
            d / "phone.png", exif=exif)
        # a TIFF with the same tag: Pillow turns it itself (it was turned twice, squashed)
        Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
            d / "phone.tif", tiffinfo={0x0112: 6})
    ds = load_dataset(tmp_path / "exif")
    assert ds.image_size == (32, 24) and len(ds) == 6
    top, bottom = ds.images[:, :, :16].float().mean(), ds.images[:, :, 16:].float().mean()
    assert top > 250 and bottom < 5  # every image upright: white on top


def test_class_names_are_unicode_normalised(tmp_path):
    """A folder unpacked on a Mac spells "café" decomposed (NFD), the same class on Linux
    composed (NFC): the test classes "did not match" the bundle's."""
    import unicodedata

    nfd = write_image_folder(tmp_path / "nfd", classes=[unicodedata.normalize("NFD", "café"),
                                                        "dog"])
    nfc = write_image_folder(tmp_path / "nfc", classes=["café", "dog"])
    assert load_dataset(nfd).classes == load_dataset(nfc).classes == ["café", "dog"]
    # a bundle written before names were normalised keeps the Mac's spelling: it still matches
    from types import SimpleNamespace

    from ddcli.evaluation import check_classes

    old = SimpleNamespace(classes=[unicodedata.normalize("NFD", "café"), "dog"])
    check_classes(old, load_dataset(nfc))


def test_class_order_and_labels_do_not_depend_on_how_accents_are_spelt(tmp_path):
    """The classes were sorted by the folder names as spelt and normalised after: "élan"
    decomposed (a Mac's copy) sorted before "zebra", composed (Linux's) after it, so the same
    folder gave other labels on each system; both spellings at once gave a bundle with the
    class "élan" twice."""
    import unicodedata

    nfd = write_image_folder(tmp_path / "nfd", classes=[unicodedata.normalize("NFD", "élan"),
                                                        "zebra"])
    nfc = write_image_folder(tmp_path / "nfc", classes=["élan", "zebra"])
    a, b = load_dataset(nfd), load_dataset(nfc)
    assert a.classes == b.classes == ["zebra", "élan"]  # code-point order of the NFC names
    assert a.fingerprint == b.fingerprint
    both = write_image_folder(tmp_path / "both", classes=["élan", "zebra"])
    write_image_folder(tmp_path / "both", classes=[unicodedata.normalize("NFD", "élan"), "x"])
    with pytest.raises(DataError, match="two class folders named 'élan'"):
        load_dataset(both)


def test_a_png_export_reads_back_with_its_class_names(tmp_path):
    """`inspect --export` names its folders 0_<class> (safe for a file system, in the
    bundle's order) and keeps the real names in .ddcli-export, which the reader ignored:
    distilling from an export, or testing on one, saw classes "0_T-shirt_top" ..."""
    from ddcli.data import EXPORT_MARKER
    from ddcli.viz import export_image_folder

    classes = ["T-shirt/top", "10", "2"]
    images = torch.rand(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = tmp_path / "export"
    export_image_folder(images, labels, classes, out)
    ds = load_dataset(out)
    assert ds.classes == classes and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # a marker that does not describe the folders (renamed by hand): the folders' names
    marker = json.loads((out / EXPORT_MARKER).read_text())
    marker["folders"][0] = "0_other"
    (out / EXPORT_MARKER).write_text(json.dumps(marker))
    assert load_dataset(out).classes == ["0_T-shirt_top", "1_10", "2_2"]


def test_a_link_to_a_folder_above_a_class_is_not_read_into_it(tmp_path):
    """cat/up -> .. read dog's images into cat (each real folder once, but the root's other
    classes were new folders)."""
    root = write_image_folder(tmp_path / "d", n=4)
    before = load_dataset(root).class_counts
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)
    (root / "cat" / "top").symlink_to(tmp_path, target_is_directory=True)
    assert load_dataset(root).class_counts == before
