import json

import pytest
import torch
from safetensors.torch import save_file

from ddcli.bundle import (
    FORMAT_VERSION,
    Bundle,
    compute_checksum,
    load_bundle,
    save_bundle,
)
from ddcli.errors import BundleError, InputError


def make_bundle(soft: bool = True) -> Bundle:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(2)
    return Bundle(
        images=torch.randn(6, 3, 8, 8, generator=g) * 0.6 + 0.5,  # leaves 0..1: kept as is
        labels=labels,
        soft_labels=torch.softmax(torch.randn(6, 3, generator=g), 1) if soft else None,
        extras={"factor": torch.tensor([2])},
        method="dm",
        config={"ipc": 2, "lr": 1.0},
        dataset={"name": "tiny", "classes": ["a", "b", "c"], "class_counts": [5, 5, 5],
                 "channels": 3, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.2] * 3,
                 "fingerprint": "f" * 64},
        seed=7,
        provenance=[{"command": "ddcli distill", "parent_checksum": None}],
    )


def test_round_trip_keeps_everything(tmp_path):
    b = make_bundle()
    path = tmp_path / "b.safetensors"
    checksum = save_bundle(b, path)
    r = load_bundle(path)
    assert torch.equal(r.images, b.images) and torch.equal(r.labels, b.labels)
    assert torch.equal(r.soft_labels, b.soft_labels)
    assert torch.equal(r.extras["factor"], torch.tensor([2]))
    assert r.config == {"ipc": 2, "lr": 1.0} and r.seed == 7 and r.method == "dm"
    assert r.checksum == checksum and r.checksum_ok and r.ipc == 2
    assert r.images.max() > 1  # never clamped
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temp file left


def test_plain_safetensors_can_read_it(tmp_path):
    from safetensors import safe_open

    save_bundle(make_bundle(), tmp_path / "b.safetensors")
    with safe_open(str(tmp_path / "b.safetensors"), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"images", "labels", "soft_labels", "extra.factor"}
    assert meta["ddcli.format"] == "ddcli.bundle"
    assert meta["ddcli.format_version"] == str(FORMAT_VERSION)
    assert json.loads(meta["dataset"])["classes"] == ["a", "b", "c"]
    for key in ("ddcli.version", "method", "config", "seed", "created", "torch", "device",
                "provenance", "checksum"):
        assert key in meta


def test_float16_storage(tmp_path):
    save_bundle(make_bundle(), tmp_path / "h.safetensors", dtype="float16")
    assert load_bundle(tmp_path / "h.safetensors").images.dtype == torch.float16


def test_a_float16_overflow_is_named_as_such(tmp_path):
    # images finite as computed but beyond float16's 65504 were "not finite (NaN or infinity)"
    from ddcli.errors import RunError

    b = make_bundle()
    b.images = b.images.float() * 0 + 4e5
    with pytest.raises(RunError, match="reach 4e.05, beyond float16's range .*--dtype float32"):
        save_bundle(b, tmp_path / "h.safetensors", dtype="float16")
    assert not (tmp_path / "h.safetensors").exists()
    save_bundle(b, tmp_path / "f.safetensors")


def test_refuses_overwrite_without_force(tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(make_bundle(), path)
    with pytest.raises(InputError, match="pass force=True"):  # a Python call: no flag to pass
        save_bundle(make_bundle(), path)
    save_bundle(make_bundle(soft=False), path, force=True)
    assert load_bundle(path).soft_labels is None


def test_tampered_file_is_detected(tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(make_bundle(), path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(path)
    assert load_bundle(path, verify=False, values=False).checksum_ok is False
    # verify=False skips the checksum, not the values (the flipped bits broke a soft label)
    with pytest.raises(BundleError, match="not probabilities"):
        load_bundle(path, verify=False)


def test_truncated_foreign_and_newer_files(tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(make_bundle(), path)
    data = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(tmp_path / "t.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not a bundle")
    with pytest.raises(BundleError, match="not a ddcli bundle"):
        load_bundle(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(BundleError, match="not a ddcli bundle"):
        load_bundle(tmp_path / "foreign.safetensors")
    b = make_bundle()
    meta = b.metadata()
    meta["ddcli.format_version"] = str(FORMAT_VERSION + 1)
    save_file(b.tensors(), str(tmp_path / "new.safetensors"), metadata=meta)
    with pytest.raises(BundleError, match="newer than this ddcli"):
        load_bundle(tmp_path / "new.safetensors")
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing.safetensors")


def test_inconsistent_contents_are_refused(tmp_path):
    b = make_bundle()
    b.labels = torch.tensor([0, 1, 2, 3, 0, 1])
    with pytest.raises(BundleError, match="outside the 3 classes"):
        save_bundle(b, tmp_path / "x.safetensors")
    b = make_bundle()
    b.soft_labels = torch.rand(6, 4)
    with pytest.raises(BundleError, match="soft_labels"):
        save_bundle(b, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_migration_from_v0(tmp_path):
    """v0 (the draft layout of methods.md §7) is read as v1."""
    images = torch.rand(4, 1, 8, 8)
    tensors = {"images": images, "labels_hard": torch.tensor([0, 0, 1, 1]),
               "labels_soft": torch.tensor([[0.9, 0.1]] * 4)}
    old_meta = {"method": "dm", "config": {"ipc": 2}, "seed": 3,
                "dataset": {"name": "old", "classes": ["x", "y"], "channels": 1}}
    save_file(tensors, str(tmp_path / "v0.safetensors"),
              metadata={"ddcli.format": "ddcli.bundle", "ddcli.format_version": "0",
                        "metadata": json.dumps(old_meta)})
    said: list[str] = []
    b = load_bundle(tmp_path / "v0.safetensors", warn=said.append)
    # v0 had no checksum: it was told its checksum "covers the tensors only"
    assert said == [f"{tmp_path / 'v0.safetensors'} is a bundle of format 0: it has no "
                    "checksum, so nothing in it can be verified"]
    assert b.format_version == FORMAT_VERSION and b.method == "dm" and b.seed == 3
    assert torch.equal(b.labels, torch.tensor([0, 0, 1, 1])) and b.soft_labels.shape == (4, 2)
    assert b.provenance[-1]["command"] == "migrate v0->v1"
    assert b.checksum == compute_checksum(b.tensors())
    save_bundle(b, tmp_path / "v1.safetensors")  # and it saves as the current version
    assert load_bundle(tmp_path / "v1.safetensors").classes == ["x", "y"]


def test_written_files_honour_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_bundle(make_bundle(), tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o644


def _sealed(tmp_path, name, edit):
    """A bundle file edited as another tool would write it (and sealed: its checksum holds)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = tmp_path / "src.safetensors"
    if not src.exists():
        save_bundle(make_bundle(), src)
    tensors = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors, meta = edit(tensors, meta)
    meta["checksum"] = compute_checksum(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name),
              metadata=meta)
    return tmp_path / name


def test_odd_files_of_other_tools_are_refused_on_reading(tmp_path, cli):
    # float8 images or soft labels, 5-channel images and duplicate class names loaded and
    # verified, then failed inspect / export with internal errors or read back as other data
    def classes(names):
        def edit(t, m):
            d = json.loads(m["dataset"])
            return t, {**m, "dataset": json.dumps({**d, "classes": names})}
        return edit

    f8 = getattr(torch, "float8_e4m3fn", None)
    cases = {
        "ch5.safetensors": (lambda t, m: ({**t, "images": t["images"][:, :1].repeat(1, 5, 1, 1)},
                                          {**m, "dataset": json.dumps(
                                              {**json.loads(m["dataset"]), "channels": 5,
                                               "mean": [0.5] * 5, "std": [0.2] * 5})}),
                            "1 or 3 channels"),
        "dup.safetensors": (classes(["a", "a", "c"]), "distinct names"),
        "nfd.safetensors": (classes(["e\u0301", "\u00e9", "c"]), "once decomposed"),
    }
    if f8 is not None:
        cases["f8.safetensors"] = (lambda t, m: ({**t, "images": t["images"].to(f8)}, m),
                                   "images must be float32")
        cases["f8soft.safetensors"] = (lambda t, m: ({**t, "soft_labels":
                                                      t["soft_labels"].to(f8)}, m),
                                       "soft_labels must be float32")
    for name, (edit, message) in cases.items():
        path = _sealed(tmp_path, name, edit)
        with pytest.raises(BundleError, match=message):
            load_bundle(path)
        r = cli("inspect", path, "--json")
        assert r.code == 2 and message in r.stderr and "internal" not in r.stderr, (name, r)
    # bfloat16 and float64, which ddcli can show and check, are still read
    for dt in (torch.bfloat16, torch.float64):
        path = _sealed(tmp_path, f"{dt}.safetensors",
                       lambda t, m, dt=dt: ({**t, "images": t["images"].to(dt)}, m))
        assert load_bundle(path).images.dtype == dt


def test_save_bundle_records_this_writer_and_time(tmp_path):
    # a re-saved bundle kept its first writer's ddcli.version and creation time
    b = make_bundle()
    b.ddcli_version, b.created = "0.0.1", "2020-01-01T00:00:00+00:00"
    save_bundle(b, tmp_path / "b.safetensors")
    from ddcli import __version__

    r = load_bundle(tmp_path / "b.safetensors")
    assert r.ddcli_version == __version__ and not r.created.startswith("2020"), r.created
    assert b.ddcli_version == __version__ and b.created == r.created
