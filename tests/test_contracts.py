"""The CLI's contracts under a script's hands: what a CI job, a shell variable left unset, a
terminal or a full disk do to it. Each test was found by a scripted exploration and fails on
the code before its fix."""

import io
import json
import sys

import pytest
from conftest import assert_one_line_error, write_shards

from ddcli.bundle import load_bundle, save_bundle
from ddcli.errors import BundleError, DataError


def _bundle(tmp_path, **changes):
    from test_bundle import make_bundle

    b = make_bundle()
    for k, v in changes.items():
        setattr(b, k, v)
    path = tmp_path / "b.safetensors"
    save_bundle(b, path)
    return path


def test_experts_and_prior_replace_only_a_folder_they_wrote(cli, tmp_path, monkeypatch):
    # -o DIR --force replaced any non-empty folder: the input data set itself with -o DATA
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    args = ("experts", data, "--num-experts", "1", "--expert-epochs", "1", "--width", "8",
            "--device", "cpu", "--force", "-o")
    for target in (notes, data):
        assert_one_line_error(cli(*args, target), 2, "is not a folder ddcli wrote")
    assert (notes / "a.txt").read_text() == "mine" and (data / "classes.json").exists()
    monkeypatch.chdir(tmp_path)
    for target in (".", ".."):  # internal errors (an empty name; a busy folder)
        assert_one_line_error(cli(*args, target), 2, "names no new folder")
    out = tmp_path / "mine"
    assert cli(*args, out).code == 0 and cli(*args, out).code == 0  # its own: replaced
    assert sorted(p.name for p in out.iterdir()) == [".ddcli-copy", "trajectory_000.safetensors"]
    r = cli("prior", data, "--prior-steps", "1", "--prior-channels", "8,16", "--prior-batch",
            "2", "--device", "cpu", "--force", "-o", notes)
    assert_one_line_error(r, 2, "is not a folder ddcli wrote")


def test_an_output_is_never_a_file_of_the_input_data(cli, tmp_path):
    # with --force, -o DATA/train_1.npz replaced a training shard (a bundle), --test's shard
    # became the JSON report; a new shard in the data folder would join the data set
    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    shard = data / "train_1.npz"
    before = shard.read_bytes()
    base = ("--ipc", "1", "--iterations", "1", "--device", "cpu", "--force")
    for out in (shard, data / "new.npz", data / "classes.json"):
        assert_one_line_error(cli("distill", data, *base, "-o", out), 2, "DATA data")
    b = tmp_path / "b.safetensors"
    assert cli("distill", data, *base, "-o", b).code == 0
    r = cli("evaluate", b, "--test", data, "--test-files", "test.npz", "-o", data / "test.npz",
            "--force", "--epochs", "1", "--models", "1", "--device", "cpu")
    assert_one_line_error(r, 2, "--test data")
    r = cli("relabel", b, "--data", data, "--train-teacher", "convnet", "-o", shard, "--force")
    assert_one_line_error(r, 2, "--data data")
    assert shard.read_bytes() == before
    assert cli("distill", data, *base, "-o", data / "bundle.safetensors").code == 0  # not read


def test_numbers_beyond_float32_and_bad_devices_are_refused(cli, tmp_path):
    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    base = (data, "--ipc", "1", "--iterations", "1", "-o", tmp_path / "o.safetensors")
    r = cli("distill", *base, "--lr", "1e39", "--device", "cpu")  # was an internal error
    assert_one_line_error(r, 2, "--lr is out of range: 1e+39")
    r = cli("distill", *base, "--device", "cuda:-1")  # torch's own error: internal
    assert_one_line_error(r, 2, "cuda:N counts from 0")
    b = _bundle(tmp_path)
    r = cli("relabel", b, "--data", data, "--train-teacher", "convnet", "--temperature", "1e39")
    assert_one_line_error(r, 2, "--temperature is out of range")  # made uniform soft labels


def test_an_empty_argument_is_refused_not_read_as_the_current_folder(cli, tmp_path):
    # "$DATA" unset: '' was Path('.'), a glob '' the default, a device '' auto
    for args, where in ((("distill", ""), "argument 2 (after 'distill')"),
                        (("evaluate", "b.safetensors", "--test", ""), "the value of --test"),
                        (("distill", "--train-files="), "the value of --train-files"),
                        (("inspect", ""), "argument 2 (after 'inspect')")):
        assert_one_line_error(cli(*args), 2, f"{where} is empty")
    from ddcli.reporting import resolve_device

    with pytest.raises(Exception, match="bad device ''"):
        resolve_device("")


def test_outputs_that_cannot_be_written_say_why_in_one_line(cli, tmp_path, monkeypatch):
    import os

    import ddcli.runtime

    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    # a read-only cache failed with an internal error, experts' after the first trajectory
    cache = tmp_path / "ro"
    cache.mkdir()
    monkeypatch.setenv("DDCLI_CACHE", str(cache))
    real_access = os.access
    monkeypatch.setattr(ddcli.runtime.os, "access",
                        lambda p, mode: False if str(p) == str(cache) else real_access(p, mode))
    r = cli("experts", data, "--num-experts", "1", "--expert-epochs", "1", "--device", "cpu")
    assert_one_line_error(r, 2, "cannot be written", "$DDCLI_CACHE")
    assert not any(cache.iterdir())
    assert cli("cache", "list").code == 0 and cli("env").code == 0  # they only read it
    # an output name of other bytes than UTF-8: an internal error, or a bundle nothing reads
    r = cli("distill", data, "--ipc", "1", "-o", tmp_path / "o\udcff.safetensors")
    assert_one_line_error(r, 2, "not valid UTF-8")
    # a full disk under stdout was an "internal error"

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys.modules["ddcli.cli.env"], "print_json", full)
    assert_one_line_error(cli("env", "--json"), 1, "No space left on device")
    assert "internal error" not in cli("env", "--json").stderr


def test_streams_that_cannot_show_a_character_or_are_closed(monkeypatch):
    # PYTHONIOENCODING=ascii: the ± of every report, a class name, ended in an internal error
    # (evaluate's after all its training); a closed stdout (>&-) was None
    from ddcli.cli.common import _usable_streams

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    monkeypatch.setattr(sys, "stderr", None)
    _usable_streams()
    sys.stdout.write("80.2 ± 0.3\n")
    sys.stdout.flush()
    assert raw.getvalue() == b"80.2 \\xb1 0.3\n"
    sys.stderr.write("anything\n")  # nowhere, as 2>/dev/null


def test_inspect_never_passes_control_characters_to_the_terminal(cli, tmp_path):
    # a bundle's class names (or any text in it) are data: an escape sequence cleared the
    # screen; a provenance step's parent checksum of another type was an internal error
    from test_bundle import make_bundle

    b = make_bundle()
    b.dataset["classes"] = ["a\x1b[2J", "b", "c\x07"]
    b.provenance = [{"command": "ddcli distill \x1b[31m", "parent_checksum": 5}]
    path = tmp_path / "b.safetensors"
    save_bundle(b, path)
    r = cli("inspect", path)
    assert r.code == 0, r
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "a\\x1b[2J" in r.stdout and "c\\x07" in r.stdout
    assert json.loads(cli("inspect", path, "--json").stdout)["dataset"]["classes"][0] == \
        "a\x1b[2J"  # JSON keeps the data as it is (escaped by JSON itself)


def test_crafted_metadata_is_a_bundle_error_not_an_internal_error(tmp_path):
    from ddcli.io import read_safetensors, write_safetensors

    path = _bundle(tmp_path)
    tensors, meta = read_safetensors(path, "bundle")
    for seed in ("9" * 5000, "\u00b2"):  # int() refused both: internal errors
        write_safetensors(tmp_path / "x.safetensors", tensors, {**meta, "seed": seed})
        with pytest.raises(BundleError, match="seed metadata must be an integer"):
            load_bundle(tmp_path / "x.safetensors", verify=False)


def test_options_that_change_nothing_are_refused(cli, tmp_path):
    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    base = (data, "--ipc", "1", "--iterations", "1", "--device", "cpu", "-o",
            tmp_path / "o.safetensors")
    r = cli("distill", *base, "--relabel-teacher", "convnet")
    assert_one_line_error(r, 2, "--relabel-teacher chooses the teacher of --relabel")
    r = cli("prior", data, "--prior-channels", "8,,16", "--device", "cpu")  # read as 8,16
    assert_one_line_error(r, 2, "--prior-channels must be positive integers")
    b = _bundle(tmp_path)
    teacher = tmp_path / "t.safetensors"
    teacher.write_bytes(b"")
    r = cli("relabel", b, "--teacher", teacher, "--teacher-epochs", "0")
    assert_one_line_error(r, 2, "--teacher-epochs sets the training of --train-teacher")
    r = cli("relabel", b, "--teacher", teacher, "--data", data)
    assert_one_line_error(r, 2, "--data is about the real data --train-teacher teachers learn")
    # the real data's other options were ignored beside --teacher files alone
    for extra in (("--train-files", "x*.npz"), ("--skip-bad",), ("--data-cache", "on")):
        r = cli("relabel", b, "--teacher", teacher, *extra)
        assert_one_line_error(r, 2, f"{extra[0]} is about the real data")
    r = cli("prior", data, "--prior-batch", "0", "--device", "cpu")
    assert_one_line_error(r, 2, "--prior-batch must be >= 1, got 0")
    assert "--ipc" not in r.stderr


def test_class_names_must_be_two_or_more_and_distinct(tmp_path):
    from ddcli.data import load_dataset

    data = write_shards(tmp_path / "d", n_train=6, n_test=3)
    # names equal but for their Unicode form: read, distilled, then refused by save_bundle
    for names, msg in ((["a", "a", "c"], "names the class 'a' more than once"),
                       (["\u00e9", "e\u0301", "c"], "names the class '\u00e9' more than once"),
                       ([], "names 0 class")):
        (data / "classes.json").write_text(json.dumps(names))
        with pytest.raises(DataError, match=msg):
            load_dataset(data)
