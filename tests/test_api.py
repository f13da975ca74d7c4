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


def test_arguments_of_the_wrong_type_are_refused_before_any_work(shards, tmp_path,
                                                                 bundle_file, monkeypatch):
    """Wrong types failed deep inside torch after the data was read (ipc=2.5, epochs=2.5), as
    internal errors (method=None, device=torch.device), or were recorded as given and made
    the bundle unreadable (factor=2.0: the run's output was lost)."""
    import numpy as np

    import ddcli.reporting

    def no_reading(*a, **k):
        raise AssertionError("read data before checking the arguments")

    monkeypatch.setattr(ddcli.reporting, "load_dataset_reported", no_reading)
    out = tmp_path / "x.safetensors"
    for kw, msg in (({"factor": 2.0}, "--factor must be an integer, got 2.0"),
                    ({"ipc": 2.5}, "--ipc must be an integer"),
                    ({"ipc": True}, "--ipc must be an integer"),
                    ({"ipc": "2"}, "--ipc must be an integer"),
                    ({"lr": "x"}, "--lr must be a number"),
                    ({"channels_last": "no"}, "--channels-last must be True or False"),
                    ({"method": None}, "method must be a name"),
                    ({"verbose": "yes"}, "verbose must be True or False"),
                    ({"out": 3}, "out must be a path"),
                    ({"channels": "3"}, "--channels must be an integer"),
                    ({"max_per_class": 1.5}, "--max-per-class must be an integer"),
                    ({"imbalance_factor": "2"}, "--imbalance-factor must be a number"),
                    ({"train_files": ["a.npz"]}, "train_files must be a string"),
                    ({"relabel": True, "relabel_teacher": [1]}, "relabel_teacher must be"),
                    ({"device": 0}, "device must be a string")):
        with pytest.raises(InputError, match=msg):
            ddcli.distill(shards, **{"iterations": 1, "out": out, "device": "cpu", **kw})
    for kw, msg in (({"epochs": 2.5}, "--epochs must be an integer"),
                    ({"protocol": None}, "protocol must be a name"),
                    ({"test": [shards]}, "test must be a path")):
        with pytest.raises(InputError, match=msg):
            ddcli.evaluate(bundle_file, **{"test": shards, "models": 1, "device": "cpu", **kw})
    with pytest.raises(InputError, match="write the Bundle with ddcli.save_bundle"):
        ddcli.evaluate(ddcli.load_bundle(bundle_file), test=shards)
    monkeypatch.undo()
    # what a script passes and the command line could not: numpy / torch integers, a
    # torch.device, a list image size, any case of a choice
    rep = ddcli.distill(shards, ipc=np.int64(1), iterations=torch.tensor(1), lr=np.float32(1),
                        batch_real=2, width=8, image_size=[8, 8], out=out,
                        device=torch.device("cpu"))
    # a number for a string option, a numpy image size (refused by the first version of
    # these checks)
    rep2 = ddcli.distill(shards, method="csdm", sigma=2.0, ipc=1, iterations=1, batch_real=2,
                         width=8, image_size=np.int64(8), out=tmp_path / "c.safetensors",
                         device="cpu")
    assert rep2["config"]["sigma"] == "2.0"
    assert rep["config"]["ipc"] == 1 and type(rep["config"]["iterations"]) is int
    assert ddcli.load_bundle(out).config["lr"] == 1.0
    r = ddcli.evaluate(out, test=shards, models=1, epochs=1, device=torch.device("cpu"),
                       baseline="RANDOM", real=shards)
    assert r["baseline"] is not None


def test_distill_and_evaluate_leave_the_global_random_state_alone(shards, tmp_path):
    """Building a module drew its default initialisation from the caller's global torch
    generator: a script's seeded stream moved with every call."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    out = tmp_path / "d.safetensors"
    ddcli.distill(shards, ipc=1, iterations=1, batch_real=2, width=8, out=out, device="cpu")
    ddcli.evaluate(out, test=shards, models=1, epochs=1, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_save_bundle_refuses_what_load_bundle_would_refuse(tmp_path):
    """save_bundle wrote bundles that ddcli then refused to read (a run's output lost), and
    truncated float labels."""
    from ddcli.errors import BundleError

    def bad(**changes):
        b = make_bundle()
        for k, v in changes.items():
            if k in ("dataset", "config"):
                getattr(b, k).update(v)
            else:
                setattr(b, k, v)
        return b

    for b, msg in ((bad(soft_labels=torch.full((6, 3), 2.0)), "not probabilities"),
                   (bad(seed="x"), "seed metadata must be an integer"),
                   (bad(config={"factor": 2.0}), "config.factor"),
                   (bad(provenance={"a": 1}), "provenance metadata must be a JSON list"),
                   (bad(dataset={"classes": [0, 1, 2]}), "dataset.classes"),
                   (bad(dataset={"mean": [float("nan")] * 3}), "not plain JSON"),
                   (bad(labels=torch.tensor([0.7, 1.2, 0, 1, 2, 2])), "class indices")):
        path = tmp_path / "b.safetensors"
        with pytest.raises((InputError, BundleError), match=msg):
            save_bundle(b, path)
        assert not path.exists()
    # whole-number float labels are class indices; the caller's tensors stay as they were
    b = make_bundle()
    b.labels = b.labels.float()
    images = b.images.clone()
    save_bundle(b, tmp_path / "h.safetensors", dtype="float16")
    assert b.images.dtype == torch.float32 and torch.equal(b.images, images)
    assert b.labels.dtype == torch.float32
    loaded = ddcli.load_bundle(tmp_path / "h.safetensors")
    assert loaded.checksum == b.checksum and loaded.images.dtype == torch.float16
    assert loaded.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_errors_module_and_short_messages():
    """ddcli.errors was unreachable after a bare `import ddcli`; a Bundle given to
    BundleDataset without soft labels printed its tensors in the message."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import ddcli; print(ddcli.errors.InputError)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "InputError" in r.stdout, r.stderr
    with pytest.raises(InputError) as e:
        ddcli.BundleDataset(make_bundle(soft=False), soft_labels=True)
    assert len(str(e.value)) < 120 and str(e.value).startswith("the bundle:")


@pytest.mark.parametrize("interrupted", ["ddcli.methods.lgm", "ddcli.models.resnet"])
def test_an_import_interrupted_by_ctrl_c_leaves_the_registries_whole(interrupted):
    # a Ctrl-C in a notebook's first call, while ddcli imported its methods, left "unknown
    # method 'dm'" (or model 'convnet') on every later call until the kernel restarted
    import subprocess
    import sys

    script = f"""
import sys
class Boom:
    def find_spec(self, name, *a):
        if name == {interrupted!r}:
            sys.meta_path.remove(self)
            raise KeyboardInterrupt
sys.meta_path.insert(0, Boom())
try:
    import ddcli.methods
except KeyboardInterrupt:
    pass
else:
    raise SystemExit("not interrupted")
import ddcli.methods, ddcli.models
print(ddcli.methods.list_methods(), ddcli.models.list_models())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("['csdm', 'dm', 'lgm', 'otgen', 'sdm', 'sfm', 'tgdd'] "
                                "['convnet', 'convnet-bn', 'resnet18', 'resnet18-bn']")


def test_a_ctrl_c_in_distill_is_not_swallowed_by_except_exception(shards, tmp_path,
                                                                   monkeypatch):
    # Interrupted was an Exception: a sweep's `except Exception` caught the Ctrl-C and went
    # on to its next setting
    import signal

    from ddcli.errors import Interrupted
    from ddcli.methods.dm import DM

    step = DM.step

    def ctrl_c_at_2(self, it):
        if it == 1:
            signal.raise_signal(signal.SIGINT)
        return step(self, it)

    monkeypatch.setattr(DM, "step", ctrl_c_at_2)
    done = []
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved to") as caught:
        for lr in (1.0, 2.0):
            try:
                ddcli.distill(shards, ipc=1, iterations=5, batch_real=4, width=8, lr=lr,
                              out=tmp_path / f"s{lr}.safetensors", device="cpu", verbose=False)
            except Exception:
                done.append(lr)
    assert isinstance(caught.value, Interrupted) and caught.value.exit_code == 130
    assert done == [] and (tmp_path / "s1.0.safetensors.ckpt.safetensors").exists()


def test_the_api_runs_whatever_the_callers_torch_state(shards, tmp_path):
    # inside torch.no_grad() distill failed with an internal error, inside
    # torch.inference_mode() every image was "unreadable", with float64 as the default dtype
    # the ConvNet failed; numpy seeds and torch.device("cpu", 0) were refused
    import numpy as np

    kw = dict(ipc=1, iterations=2, batch_real=4, width=8, device=torch.device("cpu", 0),
              seed=np.int64(3))
    ref = ddcli.distill(shards, out=tmp_path / "ref.safetensors", **kw)
    for i, state in enumerate((torch.no_grad, torch.inference_mode)):
        with state():
            r = ddcli.distill(shards, out=tmp_path / f"{i}.safetensors", **kw)
        assert r["checksum"] and not torch.is_inference_mode_enabled()
        assert ddcli.load_bundle(r["bundle"]).content_checksum == \
            ddcli.load_bundle(ref["bundle"]).content_checksum
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        r = ddcli.evaluate(ref["bundle"], test=shards, test_files="test.npz", epochs=1,
                           models=np.int64(1), device="cpu")
        assert torch.get_default_dtype() == torch.float64  # the caller's, left as it was
    finally:
        torch.set_default_dtype(old)
    assert r["result"]["accuracy_per_model"]
    with pytest.raises(InputError, match="presets are the built-in sample's"):
        ddcli.distill(shards, out=tmp_path / "p.safetensors", preset="sample-cpu")
    with pytest.raises(InputError, match="unknown option 'world'"):
        ddcli.distill(shards, out=tmp_path / "p.safetensors", world=2)


def test_bundle_dataset_items_are_copies_and_arguments_are_checked(bundle_file, tmp_path):
    # an in-place transform changed the bundle's images (x8 after three epochs); load_bundle(5)
    # and save_bundle(5, path) were TypeError / AttributeError; verify="no" verified
    b = ddcli.load_bundle(bundle_file)
    before = b.images.clone()
    ds = ddcli.BundleDataset(b, transform=lambda x: x.mul_(2))
    for _ in range(3):
        _ = [ds[i] for i in range(len(ds))]
    assert torch.equal(b.images, before) and torch.equal(ds[0][0], before[0].float() * 2)
    for call in (lambda: ddcli.load_bundle(5), lambda: ddcli.save_bundle(5, tmp_path / "x"),
                 lambda: ddcli.save_bundle(b, 5), lambda: ddcli.load_bundle(bundle_file,
                                                                             verify="no"),
                 lambda: ddcli.BundleDataset(bundle_file, soft_labels="yes"),
                 lambda: ddcli.BundleDataset(None)):
        with pytest.raises(InputError):
            call()


def test_messages_go_to_stderr_in_a_notebook_too(monkeypatch):
    # in Jupyter rich drew ddcli's messages and warnings as display outputs (saved into the
    # notebook with colour codes, out of reach of redirect_stderr)
    import rich.console

    from ddcli.reporting import stderr_console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    assert rich.console.Console().is_jupyter  # (what rich would do)
    assert not stderr_console().is_jupyter


def test_reports_carry_the_content_checksum_two_same_seed_runs_share(shards, tmp_path, cli):
    # distill --json and evaluate reported only the file's checksum, which covers the creation
    # time: reports of bit-identical bundles could not be matched
    kw = dict(ipc=1, iterations=2, batch_real=4, width=8, device="cpu", checkpoint_every=0)
    a = ddcli.distill(shards, out=tmp_path / "a.safetensors", **kw)
    b = ddcli.distill(shards, out=tmp_path / "b.safetensors", **kw)
    assert a["content_checksum"] == b["content_checksum"] == \
        ddcli.load_bundle(a["bundle"]).content_checksum
    r = ddcli.evaluate(a["bundle"], test=shards, test_files="test.npz", epochs=1, models=1,
                       device="cpu")
    assert r["bundle_content_checksum"] == a["content_checksum"]


def test_api_paths_expand_the_home_folder(shards, tmp_path, monkeypatch):
    # out="~/b.safetensors" said "output folder ~ does not exist"; command=5 was recorded
    monkeypatch.setenv("HOME", str(tmp_path))
    r = ddcli.distill(shards, out="~/b.safetensors", ipc=1, iterations=1, batch_real=4, width=8,
                      device="cpu")
    assert r["bundle"] == str(tmp_path / "b.safetensors")
    e = ddcli.evaluate("~/b.safetensors", test=shards, test_files="test.npz", epochs=1,
                       models=1, device="cpu", out="~/r.json")
    assert (tmp_path / "r.json").exists() and e["bundle"] == str(tmp_path / "b.safetensors")
    r = ddcli.distill(shards, out=tmp_path / "c.safetensors", command=5, ipc=1, iterations=1,
                      batch_real=4, width=8, device="cpu")
    assert ddcli.load_bundle(r["bundle"]).provenance[0]["command"] == "5"
