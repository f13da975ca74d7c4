"""Issue 14: a hostile user's inputs and faults. Each case: the exit code, one ``error:`` line on
stderr, no traceback, and nothing written (no output, no temporary file left behind)."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, write_image_folder, write_shards
from safetensors.torch import save_file
from test_bundle import make_bundle

from ddcli.bundle import FORMAT, compute_checksum, load_bundle, save_bundle
from ddcli.errors import BundleError, DataError, InputError, RunError

REPO = Path(__file__).resolve().parents[1]


def python_c(code: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in the repository (a fresh interpreter: signals, imports)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders ddcli may have left in ``folder``."""
    return [p.name for p in folder.iterdir() if "ddcli-tmp" in p.name or ".tmp-" in p.name]


def write_raw_bundle(path: Path, tensors: dict, meta: dict[str, str], v2: bool = True) -> None:
    """A bundle written around save_bundle's checks, with a valid checksum (format 2 covers
    the metadata, format 1 the tensors only)."""
    meta = {"ddcli.format": FORMAT, "ddcli.format_version": "2" if v2 else "1", **meta}
    meta["checksum"] = compute_checksum(tensors, meta if v2 else None)
    save_file(tensors, str(path), metadata=meta)


def bundle_parts(**meta_overrides) -> tuple[dict, dict[str, str]]:
    b = make_bundle()
    meta = b.metadata()
    meta.update(meta_overrides)
    return b.tensors(), meta


# --------------------------------------------------------------------------------------------
# Ctrl-C during start-up


def test_ctrl_c_while_torch_imports_is_one_error_line_exit_130():
    # deterministic: the KeyboardInterrupt arrives exactly where a Ctrl-C during start-up does
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "sys.argv = ['ddcli', 'inspect', 'x.safetensors']\n"
        "from ddcli.__main__ import main\n"
        "main()\n"
    )
    r = python_c(code)
    assert r.returncode == 130, r
    assert r.stderr == "error: interrupted\n", r.stderr


def test_console_script_is_the_guarded_entry_point():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ddcli"] == "ddcli.__main__:main"


def test_ctrl_c_inside_an_import_is_held_until_the_import_is_over(tmp_path):
    """Raised inside an import, a KeyboardInterrupt left numpy half-loaded (internal error
    "cannot load module more than once per process", exit 1) or escaped through torch's C++
    (std::terminate, exit -6): both seen in CI. The interrupt must wait for the import's end."""
    (tmp_path / "slowmod.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.3)  # the handler runs in here, inside the import\n"
        "DONE = True\n")
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from ddcli.__main__ import _guard_sigint\n"
        "_guard_sigint()\n"
        "try:\n"
        "    import slowmod\n"
        "    time.sleep(5)\n"
        "    print('not interrupted')\n"
        "except KeyboardInterrupt:\n"
        "    m = sys.modules.get('slowmod')\n"
        "    print('interrupted after the import:', getattr(m, 'DONE', False))\n"
    )
    r = python_c(code)
    assert r.stdout.strip() == "interrupted after the import: True", (r.stdout, r.stderr)


def test_real_ctrl_c_while_torch_imports_waits_for_torch_then_ends_the_command():
    # a real SIGINT sent from inside torch's import (a finder on sys.meta_path runs within
    # importlib): torch finishes importing, then the command ends with exit 130, one line
    code = (
        "import os, signal, sys\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Finder())\n"
        "import time\n"
        "import ddcli.__main__ as m\n"
        "import ddcli.cli\n"
        "real_main = ddcli.cli.main\n"
        "def cli_main():  # the command's first import of torch, then work\n"
        "    import torch  # noqa\n"
        "    time.sleep(3)  # the held interrupt arrives in here\n"
        "    real_main()\n"
        "ddcli.cli.main = cli_main\n"
        "def finish(code):\n"
        "    t = sys.modules.get('torch')\n"
        "    print('exit', code, 'torch loaded:', hasattr(t, 'tensor'), flush=True)\n"
        "    os._exit(0)\n"
        "m._finish = finish\n"
        "sys.argv = ['ddcli', 'inspect', 'x.safetensors']\n"
        "m.main()\n"
    )
    r = python_c(code)
    assert r.stdout.strip() == "exit 130 torch loaded: True", (r.stdout, r.stderr)
    assert r.stderr == "error: interrupted\n", r.stderr


def test_real_sigint_during_start_up(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "ddcli", "inspect", str(tmp_path / "x")],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p.wait(timeout=1.0)  # too quick to be interrupted: then nothing to test
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert "Traceback" not in err
    assert p.returncode in (130, 2), err  # interrupted, or done before the signal came
    assert len([ln for ln in err.splitlines() if ln.startswith("error: ")]) == 1



def test_ctrl_c_after_the_error_line_changes_nothing():
    # seen under load: the command printed its error, a Ctrl-C arrived while it wound down,
    # and a second line ("error: interrupted", exit 130) followed the first
    code = (
        "import os, signal, sys\n"
        "import ddcli.__main__ as m\n"
        "import ddcli.cli.common as c\n"
        "real = c.error_line\n"
        "def spy(msg):\n"
        "    real(msg)\n"
        "    signal.raise_signal(signal.SIGINT)  # the Ctrl-C, right after the line\n"
        "c.error_line = spy\n"
        "def finish(code):\n"
        "    print('exit', code, flush=True)\n"
        "    os._exit(0)\n"
        "m._finish = finish\n"
        "sys.argv = ['ddcli', 'inspect', 'missing.safetensors']\n"
        "m.main()\n"
    )
    r = python_c(code)
    assert r.stdout.strip() == "exit 2", (r.stdout, r.stderr)
    assert r.stderr.count("error: ") == 1 and "bundle not found" in r.stderr, r.stderr


def test_ctrl_c_during_shutdown_changes_nothing(tmp_path):
    """A Ctrl-C after the command has finished (while the interpreter shuts down, slow after torch)
    left a KeyboardInterrupt traceback, or killed the process by SIGINT (exit status -2, seen in
    CI) instead of the exit code the command had already chosen."""
    code = (
        "import atexit, sys, time\n"
        "atexit.register(lambda: (sys.stderr.write('finalizing\\n'), sys.stderr.flush(),"
        " time.sleep(5)))\n"
        f"sys.argv = ['ddcli', 'inspect', {str(tmp_path / 'missing.safetensors')!r}]\n"
        "from ddcli.__main__ import main\n"
        "main()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE,
                         text=True)
    lines = []
    for line in p.stderr:
        lines.append(line)
        if line.startswith("finalizing"):
            p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    err = "".join(lines)
    assert "Traceback" not in err, err
    assert p.returncode == 2, err
    assert [ln for ln in lines if ln.startswith("error: ")] == [
        f"error: bundle not found: {tmp_path / 'missing.safetensors'}\n"
    ]


# --------------------------------------------------------------------------------------------
# FIFOs and other non-regular files are refused before they are opened


def run_with_timeout(cli, fifo: Path, *args, timeout: float = 120):
    """Invoke the CLI in a thread; a hang would leave it blocked on the FIFO (then the FIFO is
    opened for writing to release it, and the test fails)."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", cli(*args)), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        t.join(10)
        pytest.fail(f"ddcli {' '.join(map(str, args))} hung on a FIFO")
    return box["r"]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo.safetensors"
    os.mkfifo(path)
    return path


def test_fifo_bundle_is_refused(cli, fifo):
    for cmd in (("inspect",), ("evaluate",), ("relabel",)):
        r = run_with_timeout(cli, fifo, *cmd, fifo)
        assert_one_line_error(r, 2, "not a regular file")


def test_fifo_shard_is_refused(cli, tmp_path):
    shards = write_shards(tmp_path / "shards")
    (shards / "train_2.npz").unlink()
    os.mkfifo(shards / "train_2.npz")
    out = tmp_path / "o.safetensors"
    r = run_with_timeout(cli, shards / "train_2.npz", "distill", shards, "--iterations", "1",
                         "--device", "cpu", "-o", out)
    assert_one_line_error(r, 2, "not a regular file", "train_2.npz")
    r = run_with_timeout(cli, shards / "train_2.npz", "distill", shards / "train_2.npz",
                         "--iterations", "1", "--device", "cpu", "-o", out)
    assert_one_line_error(r, 2, "not a regular file")
    assert not out.exists() and not leftovers(tmp_path)


def test_fifo_classes_json_teacher_and_config_are_refused(cli, tmp_path, bundle_file):
    shards = write_shards(tmp_path / "shards")
    (shards / "classes.json").unlink()
    os.mkfifo(shards / "classes.json")
    r = run_with_timeout(cli, shards / "classes.json", "distill", shards, "--iterations", "1",
                         "-o", tmp_path / "o.safetensors")
    assert_one_line_error(r, 2, "not a regular file")
    teacher = tmp_path / "t.safetensors"
    os.mkfifo(teacher)
    r = run_with_timeout(cli, teacher, "relabel", bundle_file, "--teacher", teacher,
                         "-o", tmp_path / "r.safetensors")
    assert_one_line_error(r, 2, "not a regular file")
    config = tmp_path / "c.toml"
    os.mkfifo(config)
    r = run_with_timeout(cli, config, "distill", "--config", config)
    assert_one_line_error(r, 2, "not a regular file")
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "r.safetensors").exists()


def test_fifo_checkpoint_is_refused(cli, tmp_path):
    shards = write_shards(tmp_path / "shards")
    out = tmp_path / "o.safetensors"
    ckpt = tmp_path / "o.safetensors.ckpt.safetensors"
    os.mkfifo(ckpt)
    r = run_with_timeout(cli, ckpt, "distill", shards, "--ipc", "1", "--iterations", "2",
                         "--batch-real", "2", "--width", "8", "--device", "cpu", "--resume",
                         "-o", out)
    assert_one_line_error(r, 2, "not a regular file")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# option values: finite, in range, validated where the configs are built (before reading)


@pytest.mark.parametrize("args, fragment", [
    (("--lr", "inf"), "--lr must be a finite number"),
    (("--lr", "nan"), "--lr must be a finite number"),
    (("--lr", "-inf"), "--lr must be a finite number"),
    (("--width", "0"), "--width must be >= 1"),
    (("--iterations", str(2**40)), "--iterations is out of range"),
    (("--image-size", "1000000"), "--image-size too large"),
    (("--imbalance-factor", "nan"), "--imbalance-factor must be a finite number"),
    (("--imbalance-factor", "inf"), "--imbalance-factor must be a finite number"),
    (("--seed", "1e23"), "--seed"),
    (("--seed", str(10**23)), "'--seed': must lie in"),
    (("--seed", "-1"), "'--seed': must lie in"),
    (("-m", "csdm", "--alpha-head", "nan"), "--alpha-head must be a finite number"),
    (("-m", "otgen", "--ot-reg", "inf"), "--ot-reg must be a finite number"),
    (("-m", "sfm", "--lr", "nan"), "--lr must be a finite number"),
    # ran into internal errors (exit 1) before these checks
    (("--factor", "9"), "--factor 9 is larger than the 8x8 px images"),
    (("-m", "tgdd", "--factor", "40", "--num-experts", "1", "--expert-epochs", "1"),
     "--factor 40 is larger"),
    (("-m", "otgen", "--prior-channels", "7,9"), "every width must be a multiple of 7"),
    (("-m", "otgen", "--prior-steps", "0"), "--prior-steps must be >= 1"),
    (("-m", "otgen", "--influence-scale", "5", "--surrogate-checkpoints", "1,1"),
     "distinct epochs"),
    # found only after the data was read (and csdm's said "experts")
    (("-m", "tgdd", "--model", "convnet-bn"), "expert trajectories need an architecture"),
    (("-m", "csdm", "--model", "convnet-bn", "--extractor", "pool"),
     "--extractor pool needs an architecture without batch norm"),
])
def test_bad_option_values_exit_2_before_work(cli, tmp_path, args, fragment):
    shards = write_shards(tmp_path / "shards")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, *args, "--device", "cpu", "-o", out)
    assert_one_line_error(r, 2, fragment)
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("cmd, args, fragment", [
    ("prior", ("--prior-batch", "0"), "--prior-batch must be >= 1"),
    ("prior", ("--prior-channels", "7,9"), "every width must be a multiple of 7"),
    ("prior", ("--prior-steps", "0"), "--prior-steps must be >= 1"),
    ("experts", ("--width", "0"), "--width must be >= 1"),
])
def test_prior_and_experts_check_their_options_as_distill_does(cli, tmp_path, cmd, args,
                                                                fragment):
    # these commands built their recipe without distill's checks: internal errors, exit 1
    shards = write_shards(tmp_path / "shards")
    r = cli(cmd, shards, *args, "--device", "cpu")
    assert_one_line_error(r, 2, fragment)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("cmd", ["prior", "experts"])
def test_prior_and_experts_refuse_a_bad_output_folder_before_training(cli, tmp_path, cmd):
    # -o was checked only when the copy was made, after the training
    shards = write_shards(tmp_path / "shards")
    (tmp_path / "afile").write_text("x")
    short = {"prior": ("--prior-steps", "1", "--prior-channels", "8,16"),
             "experts": ("--num-experts", "1", "--expert-epochs", "1")}[cmd]
    for out, fragment in ((tmp_path / "afile", "exists and is not a folder"),
                          (tmp_path / "no" / "dir", "does not exist")):
        r = cli(cmd, shards, *short, "--device", "cpu", "-o", out)
        assert_one_line_error(r, 2, fragment)
        assert not (tmp_path / "cache").exists()


def test_a_prior_that_is_a_file_or_unloadable_is_one_line(cli, tmp_path):
    shards = write_shards(tmp_path / "shards")
    (tmp_path / "p.txt").write_text("x")
    r = cli("distill", shards, "-m", "otgen", "--prior", tmp_path / "p.txt", "-o",
            tmp_path / "o.safetensors")
    assert_one_line_error(r, 2, "is a file; --prior takes a diffusers pipeline folder")
    broken = tmp_path / "broken"  # a UNet config without weights: diffusers logged first
    (broken / "unet").mkdir(parents=True)
    (broken / "scheduler").mkdir()
    (broken / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    r = cli("distill", shards, "-m", "otgen", "--prior", broken, "-o",
            tmp_path / "o.safetensors")
    assert_one_line_error(r, 2, "cannot load the prior in")
    assert "An error occurred" not in r.stderr


def test_a_files_glob_with_one_shard_is_refused(cli, tmp_path):
    # the glob was ignored and the shard read: a typo in --train-files went unnoticed
    shard = write_shards(tmp_path / "shards") / "train_1.npz"
    r = cli("distill", shard, "--train-files", "zzz*.npz", "--iterations", "1", "-o",
            tmp_path / "o.safetensors")
    assert_one_line_error(r, 2, "chooses shards in a dataset folder", "is one shard")
    assert not (tmp_path / "o.safetensors").exists()
    # a glob on an image folder said "missing classes.json: npz shards need a classes.json"
    folder = write_image_folder(tmp_path / "imgs", n=4)
    r = cli("distill", folder, "--train-files", "*.npz", "--iterations", "1", "-o",
            tmp_path / "o.safetensors")
    assert_one_line_error(r, 2, "chooses .npz shards", "holds none", "drop the glob")
    # (the review: globs into a linked folder, or out of the folder, still choose shards)
    (folder / "shards").symlink_to(write_shards(tmp_path / "real", n_train=4))
    (folder / "classes.json").write_text('["cat", "dog", "frog"]')
    for glob in ("shards/train_*.npz", str(tmp_path / "real" / "train_*.npz"),
                 "../real/train_*.npz"):
        r = cli("distill", folder, "--train-files", glob, "--iterations", "1", "--ipc", "1",
                "-o", tmp_path / "o.safetensors", "--force")
        assert r.code == 0, (glob, r)
    # a FIFO where the checkpoint is: --resume blocked for good reading its notes
    os.mkfifo(tmp_path / "o.safetensors.ckpt.safetensors")
    signal.alarm(120)
    try:
        r = cli("distill", folder, "--train-files", "shards/train_*.npz", "--iterations", "1",
                "--ipc", "1", "-o", tmp_path / "o.safetensors", "--force", "--resume")
    finally:
        signal.alarm(0)
    assert_one_line_error(r, 2, "not a regular file")


def test_a_bundle_name_that_promises_another_format_is_refused(cli, tmp_path, bundle_file):
    # `-o x.npz` wrote a safetensors bundle named .npz, which every tool (ddcli's own shard
    # reader included) then took for arrays
    from ddcli.bundle import load_bundle, save_bundle
    from ddcli.errors import InputError

    data = write_shards(tmp_path / "d", n_train=8, n_test=4)
    r = cli("distill", data, "--iterations", "1", "--ipc", "1", "-o", tmp_path / "x.npz",
            "--force")
    assert_one_line_error(r, 2, "x.npz: a bundle is a safetensors file", "x.safetensors",
                          "--export")
    r = cli("relabel", bundle_file, "--teacher", tmp_path / "t.pt", "-o", tmp_path / "s.PT")
    assert_one_line_error(r, 2, "s.PT: a bundle is a safetensors file, not pt")
    with pytest.raises(InputError, match="not json"):
        save_bundle(load_bundle(bundle_file), tmp_path / "b.json")
    assert not list(tmp_path.glob("x*")) and not (tmp_path / "b.json").exists()
    assert cli("distill", data, "--iterations", "1", "--ipc", "1", "-o",
               tmp_path / "x.bundle").code == 0


def test_a_one_class_test_folder_names_the_missing_classes(cli, tmp_path):
    # it said "at least two classes are needed, found 1", not which classes the test lacks
    data = write_shards(tmp_path / "d", n_train=8, n_test=4)
    out = tmp_path / "b.safetensors"
    assert cli("distill", data, "--iterations", "1", "--ipc", "1", "-o", out).code == 0
    test = write_image_folder(tmp_path / "t", n=2, classes=["dog"])
    r = cli("evaluate", out, "--test", test, "--models", "1", "--epochs", "1")
    assert_one_line_error(r, 2, "missing ['cat', 'frog']")
    one = write_image_folder(tmp_path / "one", n=2, classes=["dog"])  # still refused to distil
    assert_one_line_error(cli("distill", one, "-o", tmp_path / "o.safetensors"), 2,
                          "a single class (dog); at least two needed")


def test_grid_format_follows_its_name(cli, tmp_path, bundle_file):
    # --grid wrote PNG bytes under any name
    r = cli("inspect", bundle_file, "--grid", tmp_path / "g.jpgx")
    assert_one_line_error(r, 2, "name the image *.png, *.jpg or *.jpeg")
    assert not (tmp_path / "g.jpgx").exists()
    for name, magic in (("g.png", b"\x89PNG"), ("g.JPG", b"\xff\xd8\xff")):
        r = cli("inspect", bundle_file, "--grid", tmp_path / name)
        assert r.code == 0, r
        assert (tmp_path / name).read_bytes()[:len(magic)] == magic


def test_relabel_temperature_must_be_finite(cli, tmp_path, bundle_file):
    r = cli("relabel", bundle_file, "--temperature", "inf", "-o", tmp_path / "r.safetensors")
    assert_one_line_error(r, 2, "--temperature must be a finite number")


def test_config_file_errors(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe lr = 1\n")
    assert_one_line_error(cli("distill", "--config", bad), 2, "not UTF-8")
    big = tmp_path / "seed.toml"
    big.write_text("seed = 1e23\n")
    assert_one_line_error(cli("distill", "--config", big), 2, "seed.toml: seed = ")
    frac = tmp_path / "width.toml"
    frac.write_text("lr = nan\n")
    assert_one_line_error(cli("distill", "--config", frac, "--iterations", "1"), 2,
                          "--lr must be a finite number")


def test_a_bad_value_from_a_config_file_names_the_file(cli, tmp_path):
    """A value checked after parsing (--ipc's range) or by an option's callback (--seed's)
    named a flag that the command line did not give, not the file it came from."""
    cfg = tmp_path / "run.toml"
    cfg.write_text("ipc = 0\n")
    r = cli("distill", "--config", cfg)
    assert_one_line_error(r, 2, "run.toml: --ipc must be >= 1")
    # given on the command line, the flag is the command line's: no file named
    r = cli("distill", "--config", cfg, "--ipc=0")
    assert_one_line_error(r, 2, "--ipc must be >= 1")
    assert "run.toml" not in r.stderr
    # and a later command in the same process does not inherit the file
    r = cli("distill", "--ipc", "0")
    assert "run.toml" not in r.stderr
    cfg.write_text("seed = -1\n")
    r = cli("distill", "--config", cfg)
    assert_one_line_error(r, 2, "run.toml: Invalid value for '--seed': must lie in 0..")
    # the command line's --seed wins over the file's, which is then not checked
    r = cli("distill", "--config", cfg, "--seed", "3", "--iterations", "-1")
    assert_one_line_error(r, 2, "--iterations must be >= 0")
    r = cli("distill", "--seed", "-1")
    assert_one_line_error(r, 2, "'--seed': must lie in 0..")  # the flag named once


# --------------------------------------------------------------------------------------------
# never write non-finite images


def test_a_run_whose_loss_goes_non_finite_writes_nothing(cli, tmp_path):
    shards = write_shards(tmp_path / "shards")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--ipc", "1", "--iterations", "5", "--batch-real", "4",
            "--lr", "1e30", "--device", "cpu", "-o", out)
    assert_one_line_error(r, 1, "non-finite", "iteration 2/5")
    assert not out.exists() and not leftovers(tmp_path)
    assert not (tmp_path / "o.safetensors.ckpt.safetensors").exists()


def test_the_harness_names_the_first_non_finite_iteration():
    from conftest import tiny_dataset

    from ddcli.methods.base import Method, MethodConfig, SyntheticSet, run_method

    class Cfg(MethodConfig):
        pass

    class Blowup(Method):
        name = "blowup"
        Config = Cfg
        iterations = 120

        def setup(self, data, device, generator, mean, std):
            self.x = torch.zeros(3, 3, 8, 8)

        def step(self, it):
            return torch.tensor(float("nan") if it >= 6 else 1.0)  # it is 0-based

        def state(self):
            return {"x": self.x}

        def load_state(self, state):
            pass

        def result(self):
            return SyntheticSet(self.x, torch.arange(3))

    with pytest.raises(RunError, match="at iteration 7/120"):
        run_method(Blowup(Cfg()), tiny_dataset(), seed=0)


def test_save_bundle_refuses_non_finite_images_and_soft_labels(tmp_path):
    for field in ("images", "soft_labels"):
        b = make_bundle()
        getattr(b, field)[0, 0] = float("nan")
        with pytest.raises(RunError, match="not finite"):
            save_bundle(b, tmp_path / "b.safetensors")
        assert not (tmp_path / "b.safetensors").exists() and not leftovers(tmp_path)


# --------------------------------------------------------------------------------------------
# inspect: strict JSON, --verify, --export


def test_inspect_json_is_strict_json(cli, tmp_path):
    tensors, meta = bundle_parts()
    tensors["images"][0, 0, 0, 0] = float("nan")
    tensors["images"][1, 0, 0, 0] = float("inf")
    path = tmp_path / "nan.safetensors"
    write_raw_bundle(path, tensors, meta)
    r = cli("inspect", path, "--json")
    assert r.code == 0, r

    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    s = json.loads(r.stdout, parse_constant=refuse)
    assert s["pixel_range"] == [None, None]


def test_inspect_verify_on_a_damaged_tensor_is_one_error_line(cli, tmp_path, bundle_file):
    raw = bytearray(bundle_file.read_bytes())
    raw[-5] ^= 0x01
    bundle_file.write_bytes(bytes(raw))
    grid = tmp_path / "g.png"
    r = cli("inspect", bundle_file, "--verify", "--grid", grid)
    assert_one_line_error(r, 1, "checksum mismatch")
    assert "warning" not in r.stderr and r.stdout == "" and not grid.exists()


def test_export_force_replaces_only_a_folder_ddcli_wrote(cli, tmp_path, bundle_file):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    r = cli("inspect", bundle_file, "--export", mine, "--force")
    assert_one_line_error(r, 2, "not a folder ddcli wrote")
    assert (mine / "thesis.tex").read_text() == "precious" and len(list(mine.iterdir())) == 1
    exp = tmp_path / "exp"
    assert cli("inspect", bundle_file, "--export", exp).code == 0
    assert (exp / ".ddcli-export").is_file()
    assert_one_line_error(cli("inspect", bundle_file, "--export", exp), 2, "--force")
    assert cli("inspect", bundle_file, "--export", exp, "--force").code == 0  # as it wrote it
    # a file of the user's inside ddcli's folder (notes, results, the bundle itself) was
    # deleted with the rest by --force
    for stray in (exp / "0_a" / "stray.txt", exp / "notes" / "mine.txt"):
        stray.parent.mkdir(exist_ok=True)
        stray.write_text("x")
        r = cli("inspect", bundle_file, "--export", exp, "--force")
        assert_one_line_error(r, 2, str(stray.relative_to(exp).parts[0]), "did not write")
        assert stray.read_text() == "x"
        stray.unlink()
    (exp / "notes").rmdir()
    assert cli("inspect", bundle_file, "--export", exp, "--force", "--export-format",
               "npz").code == 0
    assert not leftovers(tmp_path)


def test_inspect_checks_every_output_before_writing_any(cli, tmp_path, bundle_file):
    # the grid was written, then the export refused; or written inside the folder the export
    # then replaced (and reported as written)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for target in (tmp_path / "full", tmp_path / "missing" / "sub"):
        r = cli("inspect", bundle_file, "--grid", tmp_path / "g.png", "--export", target)
        assert r.code == 2 and not (tmp_path / "g.png").exists(), r
    (tmp_path / "empty").mkdir()
    r = cli("inspect", bundle_file, "--grid", tmp_path / "empty" / "g.png", "--export",
            tmp_path / "empty", "--force")
    assert_one_line_error(r, 2, "lies in --export")


def test_names_with_brackets_are_shown_literally(cli, tmp_path):
    # rich read them as markup: "exp[ipc10].safetensors" shown as "exp.safetensors", a class
    # "[unk]" as "", and "[/]" an internal error after the whole evaluation
    b = make_bundle()
    b.dataset["classes"] = ["[unk]", "b[/]", "c"]
    b.dataset["name"] = "set[x]"
    path = tmp_path / "exp[ipc10].safetensors"
    save_bundle(b, path)
    r = cli("inspect", path)
    assert r.code == 0, r
    for text in ("exp[ipc10].safetensors", "[unk]", "b[/]", "set[x]"):
        assert text in r.stdout, text
    r = cli("inspect", path, "--grid", tmp_path / "g[b]x.png")
    assert r.code == 0 and "g[b]x.png" in r.stderr, r


def test_export_onto_an_existing_file_is_refused(cli, tmp_path, bundle_file):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    for extra in ((), ("--force",)):
        r = cli("inspect", bundle_file, "--export", target, *extra)
        assert_one_line_error(r, 2, "not a folder")
        assert target.read_text() == "keep"


def test_export_a_300_character_class_name(cli, tmp_path):
    long = "n" * 150 + "/é" * 75
    b = make_bundle()
    b.dataset["classes"] = [long, "b", "c"]
    path = tmp_path / "long.safetensors"
    save_bundle(b, path)
    exp = tmp_path / "exp"
    r = cli("inspect", path, "--export", exp)
    assert r.code == 0, r
    folders = sorted(p.name for p in exp.iterdir() if p.is_dir())
    assert len(folders) == 3 and all(len(f.encode()) <= 110 for f in folders)
    assert json.loads((exp / ".ddcli-export").read_text())["classes"][0] == long


# --------------------------------------------------------------------------------------------
# bundles: one schema, checked on read


def raw_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def test_bundle_header_schema(cli, tmp_path):
    cases = {
        "list": ([], "not a JSON object"),
        "offsets": ({"images": {"dtype": "F32", "shape": [1]}}, "data_offsets"),
        "badoffsets": ({"images": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
                       "data_offsets"),
        "meta": ({"__metadata__": {"seed": 3}}, "metadata must map names to strings"),
    }
    for name, (header, fragment) in cases.items():
        path = raw_safetensors(tmp_path / f"{name}.safetensors", header, b"\0" * 4)
        assert_one_line_error(cli("inspect", path), 2, fragment)


@pytest.mark.parametrize("override, fragment", [
    ({"dataset": json.dumps([1, 2])}, "dataset metadata must be a JSON object"),
    ({"dataset": "{not json"}, "not valid JSON"),
    ({"config": json.dumps("x")}, "config metadata must be a JSON object"),
    ({"provenance": json.dumps([1])}, "provenance step"),
    ({"seed": "abc"}, "seed metadata must be an integer"),
    ({"seed": "1.5"}, "seed metadata must be an integer"),
    ({"dataset": json.dumps({"classes": "ab"})}, "dataset.classes"),
    ({"dataset": json.dumps({"classes": ["a", "b", "c"], "class_counts": ["x"] * 3})},
     "dataset.class_counts"),
    ({"dataset": json.dumps({"classes": ["a", "b", "c"], "mean": ["x"]})}, "dataset.mean"),
    ({"config": json.dumps({"factor": "2"})}, "config.factor"),
])
def test_bundle_metadata_schema(cli, tmp_path, override, fragment):
    tensors, meta = bundle_parts(**override)
    path = tmp_path / "m.safetensors"
    write_raw_bundle(path, tensors, meta)
    assert_one_line_error(cli("inspect", path), 2, fragment)
    with pytest.raises(BundleError):
        load_bundle(path)


def test_bundle_with_zero_images(cli, tmp_path):
    tensors, meta = bundle_parts()
    tensors = {"images": torch.zeros(0, 3, 8, 8), "labels": torch.zeros(0, dtype=torch.int64)}
    path = tmp_path / "empty.safetensors"
    write_raw_bundle(path, tensors, meta)
    assert_one_line_error(cli("inspect", path), 2, "holds no images")
    b = make_bundle()
    b.images, b.labels, b.soft_labels = b.images[:0], b.labels[:0], None
    with pytest.raises(BundleError, match="no images"):
        save_bundle(b, tmp_path / "out.safetensors")


def test_v0_bundle_with_malformed_json(cli, tmp_path):
    path = tmp_path / "v0.safetensors"
    save_file({"images": torch.rand(2, 1, 4, 4), "labels_hard": torch.tensor([0, 1])},
              str(path), metadata={"ddcli.format": FORMAT, "ddcli.format_version": "0",
                                   "metadata": "{not json"})
    assert_one_line_error(cli("inspect", path), 2, "v0 'metadata' field is not a JSON object")


# --------------------------------------------------------------------------------------------
# the checksum covers the metadata (format 2); v1 bundles are read with a warning


def test_metadata_is_covered_by_the_checksum(cli, tmp_path, bundle_file):
    from safetensors import safe_open

    with safe_open(str(bundle_file), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["ddcli.format_version"] == "2"
    ds = json.loads(meta["dataset"])
    ds["classes"] = ds["classes"][::-1]  # the label -> class mapping, reversed
    for key, value in (("dataset", json.dumps(ds)), ("seed", "8"), ("method", "sfm"),
                       ("provenance", "[]"), ("config", "{}")):
        tampered = tmp_path / f"t-{key}.safetensors"
        save_file(tensors, str(tampered), metadata={**meta, key: value})
        assert_one_line_error(cli("inspect", tampered, "--verify"), 1, "checksum mismatch")
        with pytest.raises(BundleError, match="checksum mismatch"):
            load_bundle(tampered)


def write_v1_bundle(path: Path, **meta_overrides) -> None:
    """A bundle as ddcli 0.2.0 wrote it: format 1, the checksum over the tensors only."""
    b = make_bundle()
    b.created, b.torch_version = "2025-01-01T00:00:00Z", torch.__version__
    tensors = b.tensors()
    meta = {**b.metadata(), "ddcli.format_version": "1", "ddcli.version": "0.2.0",
            "checksum": compute_checksum(tensors), **meta_overrides}
    save_file(tensors, str(path), metadata=meta)


def test_v1_bundles_are_read_with_a_warning(cli, tmp_path):
    path = tmp_path / "v1.safetensors"
    write_v1_bundle(path)
    warnings = []
    b = load_bundle(path, warn=warnings.append)
    assert b.checksum_ok and b.file_format_version == 1 and not b.metadata_checksummed
    assert b.classes == ["a", "b", "c"] and b.seed == 7
    assert len(warnings) == 1 and "not the metadata" in warnings[0]
    r = cli("inspect", path, "--verify", "--json")
    assert r.code == 0, r
    assert r.json()["format_version"] == 1 and r.json()["checksum_ok"] is True
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "format 1" in lines[0]
    # its tensors are still protected
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01
    path.write_bytes(bytes(raw))
    assert_one_line_error(cli("inspect", path, "--verify"), 1, "checksum mismatch")
    # with --json, CI read nothing on stdout: the summary comes first, then the error
    r = cli("inspect", path, "--verify", "--json")
    assert_one_line_error(r, 1, "checksum mismatch")
    assert r.json()["checksum_ok"] is False


def test_a_v1_bundle_rewritten_gets_a_v2_checksum(tmp_path):
    path = tmp_path / "v1.safetensors"
    write_v1_bundle(path)
    b = load_bundle(path)
    save_bundle(b, tmp_path / "v2.safetensors")
    again = load_bundle(tmp_path / "v2.safetensors", warn=pytest.fail)
    assert again.file_format_version == 2 and again.checksum_ok


# --------------------------------------------------------------------------------------------
# teachers and checkpoints: one schema each


def test_teacher_with_foreign_weights(cli, tmp_path, bundle_file):
    from ddcli.models import create_model
    from ddcli.teachers import Teacher, load_teacher, save_teacher

    model = create_model("convnet", 3, 3, (8, 8))
    t = Teacher(model, "resnet18", ["a", "b", "c"], 3, (8, 8), [0.5] * 3, [0.2] * 3, "f" * 64,
                {}, None)
    path = tmp_path / "t.safetensors"
    save_teacher(t, path)
    r = cli("relabel", bundle_file, "--teacher", path, "-o", tmp_path / "r.safetensors")
    assert_one_line_error(r, 2, "weights do not fit a resnet18")
    assert not (tmp_path / "r.safetensors").exists()
    t.arch = "convnet"
    t.classes = "abc"
    save_teacher(t, path)
    with pytest.raises(InputError, match="'classes' must be"):
        load_teacher(path)


def test_checkpoint_without_its_rng_state(cli, tmp_path):
    from safetensors import safe_open

    from ddcli.data import load_dataset
    from ddcli.methods import create_method
    from ddcli.methods.base import checkpoint_path_for, run_method

    shards = write_shards(tmp_path / "shards")
    out = tmp_path / "o.safetensors"
    ckpt = checkpoint_path_for(out)
    opts = dict(ipc=1, iterations=4, batch_real=2, width=8)

    class Stop(Exception):
        pass

    def progress(it, **_):
        if it == 2:
            raise Stop

    with pytest.raises(Stop):
        run_method(create_method("dm", **opts), load_dataset(shards), device="cpu", seed=0,
                   checkpoint=ckpt, checkpoint_every=1, progress=progress, log_every=1)
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "_generator"}
    meta.pop("checksum", None)  # (a file made by hand: a stale checksum is refused first)
    save_file(tensors, str(ckpt), metadata=meta)
    args = ("distill", shards, "--ipc", "1", "--iterations", "4", "--batch-real", "2",
            "--width", "8", "--device", "cpu", "--resume", "-o", out)
    assert_one_line_error(cli(*args), 2, "random generator's state")
    assert not out.exists()
    save_file({"x": torch.zeros(1)}, str(ckpt), metadata={**meta, "iteration": "x"})
    assert_one_line_error(cli(*args), 2, "bad iteration")


# --------------------------------------------------------------------------------------------
# read-only output folders are found before the work starts


def test_unwritable_output_folder_is_refused_before_the_work(cli, tmp_path, monkeypatch):
    shards = write_shards(tmp_path / "shards")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def no_write(path, flags, *a, **k):  # what a read-only folder answers (also as root)
        if str(path).startswith(str(ro)) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr("ddcli.io.os.open", no_write)
    read = []
    monkeypatch.setattr("ddcli.cli.common.load_cli_dataset", lambda *a, **k: read.append(1))
    r = cli("distill", shards, "--iterations", "1", "-o", ro / "o.safetensors")
    assert_one_line_error(r, 2, "cannot write to output folder", "Permission denied")
    assert not read and list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(cli, tmp_path, bundle_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for args in (("inspect", bundle_file, "--export", ro / "exp"),
                     ("inspect", bundle_file, "--grid", ro / "g.png"),
                     ("evaluate", bundle_file, "--out", ro / "r.json")):
            assert_one_line_error(cli(*args), 2, "cannot write to output folder")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------------------------
# memory: npz sizes checked before inflating; images resized as they are decoded


def test_npz_declared_sizes_are_checked_before_inflating(tmp_path, monkeypatch):
    from ddcli.data import load_dataset

    folder = write_shards(tmp_path / "shards")
    np.savez_compressed(folder / "train_1.npz", images=np.zeros((2000, 32, 32, 3), np.uint8),
                        labels=np.zeros(2000, np.int64))
    assert (folder / "train_1.npz").stat().st_size < 100_000  # 6 MB of pixels, compressed
    monkeypatch.setenv("DDCLI_MAX_SHARD_BYTES", str(1 << 20))
    inflated = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: inflated.append(a) or real_load(*a, **k))
    with pytest.raises(DataError, match=r"declares 6.2 MB of arrays, more than ddcli reads "
                                        r"\(1.0 MB;"):
        load_dataset(folder)
    monkeypatch.setenv("DDCLI_MAX_SHARD_BYTES", "100")  # was "0 MiB ... (0 MiB"
    with pytest.raises(DataError, match=r"\(100 B;"):
        load_dataset(folder)
    assert not inflated


def test_npz_wrong_dtype_or_lying_header_is_refused_before_inflating(tmp_path, monkeypatch):
    import zipfile

    from ddcli.data import load_dataset

    folder = write_shards(tmp_path / "shards")
    np.savez_compressed(folder / "train_1.npz", images=np.zeros((4, 8, 8, 3), np.float64),
                        labels=np.zeros(4, np.int64))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("inflated"))
    with pytest.raises(DataError, match="images must be uint8"):
        load_dataset(folder)
    # a header declaring far more than the zip entry holds
    hdr = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 512, 512, 3)}
    from io import BytesIO

    buf = BytesIO()
    np.lib.format.write_array_header_2_0(buf, hdr)
    with zipfile.ZipFile(folder / "train_1.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", buf.getvalue() + b"\0" * 64)
        z.writestr("labels.npy", buf.getvalue())
    with pytest.raises(DataError, match="declares"):
        load_dataset(folder)


def test_images_are_resized_as_they_are_decoded(tmp_path, monkeypatch):
    from PIL import Image, JpegImagePlugin

    from ddcli import data

    root = write_image_folder(tmp_path / "imgs")
    big = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "cat" / "big.jpg", quality=90)
    drafts, shapes = [], []
    real_draft, real_decode = JpegImagePlugin.JpegImageFile.draft, data._decode

    def spy_draft(self, mode, size):
        drafts.append(size)
        return real_draft(self, mode, size)

    def spy_decode(path, size, channels):
        t = real_decode(path, size, channels)
        shapes.append(tuple(t.shape))
        return t

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    monkeypatch.setattr(data, "_decode", spy_decode)
    ds = data.load_dataset(root)
    assert ds.images.shape[1:] == (3, 8, 8)  # the most common size, known from the headers
    assert set(shapes) == {(3, 8, 8)} and len(shapes) == len(ds)
    assert drafts == [(8, 8)]  # the big JPEG decoded at a reduced scale


# --------------------------------------------------------------------------------------------
# temporary files: recognisable, and stale ones (SIGKILL) removed on the next write


def test_sigkill_during_a_write_leaves_a_recognisable_tmp_removed_next_time(tmp_path):
    out = tmp_path / "b.safetensors"
    code = ("import sys, time\n"
            "from ddcli.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half')\n"
            "    print(tmp, flush=True)\n"
            "    time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO,
                         stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(p.stdout.readline().strip())
    finally:
        p.kill()
        p.wait(timeout=60)
    assert tmp.exists() and tmp.name == f".b.safetensors.ddcli-tmp-{p.pid}"
    legacy = tmp_path / f".b.safetensors.tmp-{p.pid}"  # ddcli 0.2.0's name
    legacy.write_bytes(b"old")
    alive = tmp_path / f".b.safetensors.ddcli-tmp-{os.getppid()}"  # a live writer's
    alive.write_bytes(b"busy")
    other = tmp_path / ".other.safetensors.ddcli-tmp-1"
    other.write_bytes(b"not ours")
    save_bundle(make_bundle(), out)
    assert not tmp.exists() and not legacy.exists()
    assert alive.exists() and other.exists()
    assert load_bundle(out).checksum_ok


def test_evaluate_text_report_shows_class_names_literally_and_names_its_baseline(capsys):
    # a class "[/]" ended a finished evaluation in an internal error (rich markup), and a
    # centroids baseline was labelled "random real"
    from ddcli.cli.evaluate import _render

    res = {"num_train_images": 3, "accuracy_mean": 50.0, "accuracy_std": 1.0,
           "accuracy_per_model": [49.0, 51.0], "train_time_per_model_s": 0.1,
           "per_class_accuracy": [40.0, 60.0]}
    from ddcli.protocols import get_protocol

    report = {"protocol": get_protocol("linear-probe").to_dict(), "test": {"num_images": 4},
              "num_models": 2, "classes": ["[/]", "b[x]"], "result": res,
              "baseline": {**res, "ipc": 1, "kind": "centroids"}, "improvement_points": 1.0}
    _render(report)
    out = capsys.readouterr().out
    assert "per class: [/] 40.0, b[x] 60.0" in out
    assert "class centroids (IPC 1)" in out and "improvement over class centroids" in out
    assert "random real" not in out


def test_checksum_valid_bundles_with_wrong_values_are_refused_in_one_line(cli, tmp_path):
    # another tool's bundle with a valid checksum: a normalisation of the wrong length or a
    # zero std, a factor larger than the images were internal errors in evaluate; NaN images
    # or soft labels that are not probabilities were evaluated silently (chance accuracy)
    import torch

    def dataset(**kw):
        return json.dumps({**json.loads(bundle_parts()[1]["dataset"]), **kw})

    cases = [({"dataset": dataset(mean=[0.5])}, {}, "dataset.mean has 1 values for 3"),
             ({"dataset": dataset(std=[0.2, 0.0, 0.2])}, {}, "dataset.std must be positive"),
             ({"config": json.dumps({"ipc": 2, "factor": 100})}, {}, "config.factor must be"),
             ({}, {"images": float("nan")}, "images are not finite"),
             ({}, {"soft_labels": -1.0}, "soft_labels are not probabilities"),
             ({}, {"labels": torch.int32}, "labels must be int64 (6,), got int32")]
    for i, (meta_kw, tensor_kw, msg) in enumerate(cases):
        tensors, meta = bundle_parts(**meta_kw)
        for name, v in tensor_kw.items():
            if isinstance(v, torch.dtype):
                tensors[name] = tensors[name].to(v)
            else:
                tensors[name][0].fill_(v)
        path = tmp_path / f"b{i}.safetensors"
        write_raw_bundle(path, tensors, meta)
        with pytest.raises(BundleError, match=re.escape(msg)):
            load_bundle(path)
        r = cli("evaluate", path, "--epochs", "1", "--models", "1", "--device", "cpu")
        assert_one_line_error(r, 2, msg)
    # inspect shows such a bundle; its --verify exited 0 on wrong values and --json had no
    # field telling them (a CI check passed a bundle evaluate refuses)
    for i in (3, 4):
        path, msg = tmp_path / f"b{i}.safetensors", cases[i][2]
        r = cli("inspect", path, "--json")
        assert r.code == 0 and msg in json.loads(r.stdout)["problem"]
        assert_one_line_error(cli("inspect", path, "--verify"), 1, msg)
        r = cli("inspect", path, "--verify", "--json")
        assert r.code == 1 and msg in r.json()["problem"]
    r = cli("inspect", tmp_path / "b5.safetensors", "--json")  # not a value problem: refused
    assert r.code == 2


def test_safetensors_writes_leave_no_file_of_their_own(tmp_path, monkeypatch):
    # safetensors' save_file writes through a randomly named temporary file (.tmpXXXXXX) in
    # the target folder: a kill during a write left it there for good (ddcli removes only its
    # own temporary names). Every write now serialises in memory and goes through ddcli's.
    import safetensors.torch
    import torch

    from ddcli.experts import save_trajectory

    def refuse(*a, **k):
        raise AssertionError("wrote through safetensors' own temporary file")

    monkeypatch.setattr(safetensors.torch, "serialize_file", refuse)
    save_bundle(make_bundle(), tmp_path / "b.safetensors")
    save_trajectory(tmp_path / "t.safetensors", "convnet", [{"w": torch.zeros(2)}], {"i": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors", "t.safetensors"]
    assert load_bundle(tmp_path / "b.safetensors").checksum_ok


def test_output_names_near_and_past_the_file_system_limit(cli, tmp_path, shards):
    # a 230-byte -o wrote the bundle, then its checkpoint's longer name ended the run in an
    # internal error (exit 1); a name past 255 bytes was an internal error too
    args = ("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "2",
            "--width", "8", "--device", "cpu", "--checkpoint-every", "1")
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / ("b" * 230 + ".safetensors")
    r = cli(*args, "-o", out)
    assert r.code == 0 and out.exists(), r
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the checkpoint: gone
    r = cli(*args, "-o", tmp_path / ("c" * 260 + ".safetensors"))
    assert_one_line_error(r, 2, "file name is 272 bytes long")


def test_a_second_run_writing_the_same_output_is_refused_at_once(cli, tmp_path, shards):
    # both ran, overwrote each other's checkpoint, and the second failed only at the end
    # (or, with --force, silently replaced the first's bundle)
    from ddcli.io import output_lock

    out = tmp_path / "o.safetensors"
    args = ("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "2",
            "--width", "8", "--device", "cpu", "-o", out, "--force")
    with output_lock(out):  # the first run, still going
        assert_one_line_error(cli(*args), 2, "another ddcli run is writing")
    assert cli(*args).code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors", "shards"]


def test_a_lock_file_deleted_while_it_was_being_taken_is_taken_again(tmp_path, monkeypatch):
    """A run ending deletes its lock file: a run that had opened it just before, and locked it
    just after, held a lock on a file no longer there, and a third run took the lock at the
    name at the same time: two runs writing one output."""
    import fcntl

    from ddcli.io import output_lock

    out = tmp_path / "o.safetensors"
    real = fcntl.flock
    taken: list[int] = []

    def flock(fd, op):
        if not taken:  # the run that held it ends between this run's open and its lock
            next(tmp_path.glob(".*ddcli-lock")).unlink()
        taken.append(fd)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with output_lock(out):
        monkeypatch.setattr(fcntl, "flock", real)
        with pytest.raises(InputError, match="another ddcli run is writing"):
            with output_lock(out):
                pass


def test_caches_built_on_a_gpu_are_not_reused_on_a_cpu(tmp_path):
    # experts, teachers, priors and backbone features were keyed without the device: entries a
    # GPU built (other random streams, other rounding) made a later CPU run's bundle depend on
    # what the cache held. The CPU's keys are those it had (no CPU cache is rebuilt).
    import hashlib
    import json

    from conftest import tiny_dataset

    from ddcli.experts import EXPERT_RECIPE, expert_dir
    from ddcli.priors import PriorRecipe, prior_dir
    from ddcli.seeding import SEED_SCHEME
    from ddcli.teachers import RECIPES, teacher_cache_path

    ds = tiny_dataset()
    recipe = RECIPES["convnet"]
    for key_of in (lambda d: expert_dir(tmp_path, ds, EXPERT_RECIPE, 128, 0, device=d),
                   lambda d: teacher_cache_path(tmp_path, ds, recipe, 0, device=d),
                   lambda d: prior_dir(tmp_path, ds, PriorRecipe(), 0, device=d)):
        cpu = key_of(torch.device("cpu"))
        assert cpu == key_of("cpu") != key_of(torch.device("cuda", 1)) == key_of("cuda")
    old = json.dumps({"fingerprint": ds.fingerprint, "recipe": EXPERT_RECIPE.to_dict(),
                      "width": 128, "seed": 0, "init": SEED_SCHEME, "stream": "expert",
                      "ends_only": False, "num": 1}, sort_keys=True)
    digest = hashlib.sha256(old.encode()).hexdigest()[:20]
    assert expert_dir(tmp_path, ds, EXPERT_RECIPE, 128, 0).name.endswith(digest)


def test_sigterm_outside_the_loops_ends_with_one_line_and_130():
    """SIGTERM (timeout, a batch scheduler) outside the loops that finish their step on it (a
    data read, an evaluation, a teacher's training) killed the process at once: exit 143 and
    no word, where Ctrl-C says "interrupted" and exits 130 (the README's table: "also on
    SIGTERM")."""
    code = (
        "import os, signal, sys, time\n"
        "import ddcli.__main__ as m\n"
        "import ddcli.cli\n"
        "def cli_main():  # a command at work, outside any loop's own handler\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    print('not interrupted', flush=True)\n"
        "ddcli.cli.main = cli_main\n"
        "def finish(code):\n"
        "    print('exit', code, flush=True)\n"
        "    os._exit(0)\n"
        "m._finish = finish\n"
        "sys.argv = ['ddcli', 'evaluate', 'x.safetensors']\n"
        "m.main()\n"
    )
    r = python_c(code)
    assert r.stdout.strip() == "exit 130", (r.stdout, r.stderr)
    assert r.stderr == "error: interrupted\n", r.stderr


def test_under_a_launcher_sigterm_is_left_to_end_the_process():
    """A Python handler runs only between C++ calls: with it, a rank blocked joining a torchrun
    group (up to 30 minutes) no longer ended on torchrun's SIGTERM. Under a launcher
    (WORLD_SIZE set) SIGTERM keeps its default until the group's own handler."""
    import os

    code = ("import signal\n"
            "from ddcli.__main__ import _guard_sigint\n"
            "_guard_sigint()\n"
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    for env, want in (({"WORLD_SIZE": "2"}, "True"), ({}, "False")):
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, timeout=120,
                           env={**{k: v for k, v in os.environ.items() if k != "WORLD_SIZE"},
                                **env})
        assert r.stdout.strip() == want, (env, r.stdout, r.stderr)


def test_cache_clear_leaves_an_entry_being_built(tmp_path, monkeypatch):
    """`cache clear` deleted a data-cache entry while another run built it: that run ended
    with "No such file or directory (.../labels.npy)"."""
    from ddcli.io import build_lock
    from ddcli.runtime import clear_cache

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "c"))
    busy, done = tmp_path / "c" / "data" / "busy", tmp_path / "c" / "data" / "done"
    for d in (busy, done):
        d.mkdir(parents=True)
        (d / "images.u8").write_bytes(b"x")
    with build_lock(busy / ".lock"):
        (r,) = clear_cache("data")
        assert r["in_use"] == ["busy"] and busy.exists() and not done.exists()
    assert clear_cache("data")[0]["in_use"] == [] and not busy.parent.exists()


def test_cache_locks_on_a_file_system_without_locks(tmp_path, monkeypatch):
    """Where flock is refused outright (Lustre noflock, an NFS client without its lock
    service), every entry read as "being built" (cache clear cleared nothing), and a prior
    could not be trained at all (OSError): such entries are built unguarded, as before."""
    import errno
    import fcntl

    from ddcli.io import build_lock, lock_held

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    lock = tmp_path / "k.lock"
    lock.write_text("")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert not lock_held(lock)
    with build_lock(tmp_path / "p.lock"):
        ran = True
    assert ran
