"""The Python API: ddcli.load_bundle, ddcli.BundleDataset, ddcli.distill, ddcli.evaluate."""

import pytest
import torch
from test_bundle import make_bundle

import ddcli
from ddcli.bundle import save_bundle
from ddcli.errors import InputError


def test_bundle_dataset_batches_with_a_plain_dataloader(bundle_file):
    ds = ddcli.BundleDataset(bundle_file)
    assert len(ds) == 6 and ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    b = ddcli.load_bundle(bundle_file)
    assert torch.equal(ds[5][0], b.images[5].float())  # pixel scale, as stored
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 8, 8) and labels.dtype == torch.int64
    assert labels.tolist() == b.labels[:4].tolist()


def test_bundle_dataset_soft_labels_and_transform(bundle_file, tmp_path):
    ds = ddcli.BundleDataset(bundle_file, soft_labels=True, transform=lambda x: x * 0 + 1)
    x, y = ds[2]
    assert torch.all(x == 1) and y.shape == (3,) and abs(float(y.sum()) - 1) < 1e-5
    _, soft = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert soft.shape == (6, 3)
    hard = tmp_path / "hard.safetensors"
    save_bundle(make_bundle(soft=False), hard)
    with pytest.raises(InputError, match="no soft labels"):
        ddcli.BundleDataset(hard, soft_labels=True)


def test_bundle_dataset_decodes_multi_formation(tmp_path):
    b = make_bundle()
    b.config["factor"] = 2
    path = tmp_path / "f2.safetensors"
    save_bundle(b, path)
    ds = ddcli.BundleDataset(path, soft_labels=True)
    assert len(ds) == 24 and ds[0][0].shape == (3, 8, 8)
    images, labels, soft = ddcli.load_bundle(path).decoded()
    assert torch.equal(ds[7][0], images[7]) and torch.equal(ds[7][1], soft[7])


def test_distill_and_evaluate_return_what_the_commands_report(shards, tmp_path, cli):
    out = tmp_path / "d.safetensors"
    rep = ddcli.distill(shards, ipc=1, iterations=2, batch_real=4, width=8, out=out,
                        device="cpu", checkpoint_every=0)
    assert rep["bundle"] == str(out) and out.exists() and rep["stats"]["iterations"] == 2
    assert rep["config"]["ipc"] == 1 and rep["method"] == "dm"
    # the config returned is the one recorded, preset included (the returned one lacked it)
    recorded = ddcli.load_bundle(out)
    assert rep["config"] == recorded.config == recorded.provenance[0]["config"]
    assert "preset" in rep["config"]
    assert "Python API" in recorded.provenance[0]["command"]
    r = cli("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "4",
            "--width", "8", "-o", tmp_path / "c.safetensors", "--device", "cpu", "--json",
            "--checkpoint-every", "0")
    assert r.code == 0, r
    # the same run: the same tensors (the checksum differs, as it covers the recorded command)
    a, c = ddcli.load_bundle(out), ddcli.load_bundle(tmp_path / "c.safetensors")
    assert torch.equal(a.images, c.images) and torch.equal(a.labels, c.labels)
    assert a.config == c.config and r.json()["checksum"] != rep["checksum"]
    report = ddcli.evaluate(out, test=shards, models=1, epochs=2, device="cpu",
                            out=tmp_path / "r.json")
    assert set(report["result"]) >= {"accuracy_mean", "per_class_accuracy"}
    assert report["protocol"]["epochs"] == 2 and (tmp_path / "r.json").exists()
    with pytest.raises(InputError, match="unknown method"):
        ddcli.distill(shards, method="magic", out=tmp_path / "x.safetensors")


def test_method_and_protocol_names_are_case_insensitive(shards, tmp_path):
    out = tmp_path / "d.safetensors"
    assert ddcli.distill(shards, method="DM", ipc=1, iterations=1, batch_real=2, width=8,
                         out=out, device="cpu")["method"] == "dm"
    rep = ddcli.evaluate(out, test=shards, protocol="DM", models=1, epochs=1, device="cpu")
    assert rep["protocol"]["name"] == "dm"


def test_bad_arguments_raise_input_error_before_any_work(shards, tmp_path, bundle_file,
                                                          monkeypatch):
    # the API skipped the command line's checks: compile / amp raised ValueError after the
    # data was read, seed 2**70 an overflow, seed -1 was recorded, dtype="bfloat16" failed
    # after the whole run, and one teacher name given as a string was split into letters
    import ddcli.reporting

    def no_reading(*a, **k):
        raise AssertionError("read data before checking the arguments")

    monkeypatch.setattr(ddcli.reporting, "load_dataset_reported", no_reading)
    out = tmp_path / "x.safetensors"
    for kw, msg in (({"seed": -1}, "seed must be an integer"), ({"seed": 2**70}, "seed must"),
                    ({"seed": 1.5}, "seed must"), ({"dtype": "bfloat16"}, "dtype must be one"),
                    ({"data_cache": "maybe"}, "data_cache must be one"),
                    ({"checkpoint_every": -5}, "--checkpoint-every must be an integer >= 0")):
        with pytest.raises(InputError, match=msg):
            ddcli.distill(shards, ipc=1, iterations=1, out=out, device="cpu", **kw)
    for kw, msg in (({"compile": "maybe"}, "compile must be one of auto, on, off"),
                    ({"amp": "fp8"}, "amp must be one of off, bf16"), ({"seed": -1}, "seed")):
        with pytest.raises(InputError, match=msg):
            ddcli.evaluate(bundle_file, test=shards, models=1, epochs=1, device="cpu", **kw)
    monkeypatch.undo()
    ddcli.distill(shards, ipc=1, iterations=1, batch_real=2, width=8, out=out, device="cpu")
    with pytest.raises(InputError, match="teacher not found: nope.safetensors"):
        ddcli.evaluate(out, test=shards, protocol="kd-online", teacher="nope.safetensors",
                       models=1, epochs=1, device="cpu")
