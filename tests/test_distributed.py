"""Several processes through torchrun (gloo, CPU): the classes split among the ranks.

The 2-process bundle holds the same tensors as the 1-process one, bit for bit. Its checksum
differs, as the checksum covers the provenance: the command line and ``"world_size": 2``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, write_image_folder, write_shards

from ddcli.bundle import load_bundle
from ddcli.distributed import class_block

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--ipc", "2", "--iterations", "8", "--batch-real", "4", "--width", "8", "--seed", "3",
        "--quiet"]
CLASSES5 = ["a", "b", "c", "d", "e"]  # 5 classes: 3 on rank 0, 2 on rank 1

# a launcher that SIGKILLs rank $KILL_RANK in DM's iteration $KILL_AT, then runs the CLI
KILLER = """
import os, signal
from ddcli.methods.dm import DM
_step = DM.step
def step(self, it):
    if os.environ["RANK"] == os.environ["KILL_RANK"] and it == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, it)
DM.step = step
from ddcli.__main__ import main
main()
"""


# a launcher whose rank $KILL_RANK receives a Ctrl-C (SIGINT) in DM's iteration $KILL_AT
INTERRUPTER = KILLER.replace("signal.SIGKILL", "signal.SIGINT")


@pytest.fixture(autouse=True)
def _own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun leaves a torchelastic_* folder in $TMPDIR per launch: keep them in the test's
    own folder, not the machine's /tmp."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _torchrun(n: int, target: list[str], args: list, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={n}", *target, "distill", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=240)


def _single(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddcli", "distill", *map(str, args)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=240)


@pytest.fixture
def data5(tmp_path: Path) -> Path:
    return write_shards(tmp_path / "data5", n_train=12, classes=CLASSES5)


def test_class_blocks_cover_the_classes_once():
    for classes in (1, 2, 5, 10, 11):
        for world in range(1, classes + 1):
            blocks = [class_block(classes, r, world) for r in range(world)]
            assert blocks[0][0] == 0 and blocks[-1][1] == classes
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
            sizes = [hi - lo for lo, hi in blocks]
            assert max(sizes) - min(sizes) <= 1


def test_two_processes_give_the_one_process_images(data5: Path, tmp_path: Path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    r = _single([data5, *ARGS, "--factor", "2", "-o", one])
    assert r.returncode == 0, r.stderr
    r = _torchrun(2, ["-m", "ddcli"], [data5, *ARGS, "--factor", "2", "--json", "-o", two])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"checksum"') == 1  # rank 0 alone reports
    a, b = load_bundle(one), load_bundle(two)
    assert torch.equal(a.images, b.images)  # bit-identical on the CPU
    assert torch.equal(a.labels, b.labels)
    assert b.provenance[0]["world_size"] == 2
    assert "world_size" not in a.provenance[0]
    assert not Path(str(two) + ".ckpt.safetensors").exists()


@pytest.mark.parametrize("extra", [
    # CSDM: AdamW with weight decay, one step per class, the plateau scheduler reading the
    # gathered class losses back at iteration 10
    ["-m", "csdm", "--iterations", "12", "--plateau-patience", "1", "--factor", "2"],
    ["-m", "sdm", "--iterations", "12", "--step-mode", "joint"],
    # TGDD: expert trajectories (built by each rank, the same files), per-class closed-form
    # momentum steps
    ["-m", "tgdd", "--num-experts", "1", "--expert-epochs", "1", "--factor", "1"],
], ids=["csdm", "sdm", "tgdd"])
def test_the_dm_family_splits_its_classes_too(data5: Path, tmp_path: Path, extra: list[str]):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    cache = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "ddcli", "distill", str(data5), *ARGS, *extra,
                        "-o", str(one)], cwd=REPO, env=_env(DDCLI_CACHE=cache),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    r = _torchrun(2, ["-m", "ddcli"], [data5, *ARGS, *extra, "-o", two],
                  DDCLI_CACHE=str(tmp_path / "cache2"))
    assert r.returncode == 0, r.stderr
    a, b = load_bundle(one), load_bundle(two)
    assert torch.equal(a.images, b.images)  # bit-identical on the CPU
    assert b.provenance[0]["world_size"] == 2
    assert a.provenance[0]["stats"]["final_loss"] == pytest.approx(
        b.provenance[0]["stats"]["final_loss"], rel=1e-5)  # the loss summed over the ranks


def test_killed_rank_fails_the_run_and_resume_continues(data5: Path, tmp_path: Path):
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out, full = tmp_path / "k.safetensors", tmp_path / "full.safetensors"
    ckpt = Path(str(out) + ".ckpt.safetensors")
    args = [data5, *ARGS, "--checkpoint-every", "2", "-o", out]
    r = _torchrun(2, [str(killer)], args, KILL_RANK="1", KILL_AT="5")
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "its output was not written" in errors[0]
    assert not out.exists()
    assert ckpt.exists()  # rank 0's, from iteration 4

    r = _torchrun(2, ["-m", "ddcli"], [*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert not ckpt.exists()
    r = _single([data5, *ARGS, "-o", full])
    assert r.returncode == 0, r.stderr
    b = load_bundle(out)
    assert b.provenance[0]["stats"]["resumed_from"] == 4
    assert torch.equal(load_bundle(full).images, b.images)


def test_ranks_agree_to_stop_after_the_interrupted_iteration_on_a_cpu(data5: Path,
                                                                      tmp_path: Path):
    # they agreed at log points only (every 50 iterations): where 50 took over 30 s, torchrun
    # killed its workers, 30 s after passing a Ctrl-C on, before any checkpoint
    script = tmp_path / "interrupter.py"
    script.write_text(INTERRUPTER)
    out, full = tmp_path / "i.safetensors", tmp_path / "full.safetensors"
    args = [data5, *ARGS, "-o", out]
    r = _torchrun(2, [str(script)], args, KILL_RANK="1", KILL_AT="2")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors and "interrupted at iteration 3/8; checkpoint saved" in errors[0], r.stderr
    r = _torchrun(2, ["-m", "ddcli"], [*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert _single([data5, *ARGS, "-o", full]).returncode == 0
    assert torch.equal(load_bundle(full).images, load_bundle(out).images)


def test_a_bad_option_is_said_once_not_by_every_rank(data5: Path, tmp_path: Path):
    # each rank printed its own error line for the same bad option ("error: ..." and
    # "error: rank 1: ..."), where the README promises one
    r = _torchrun(2, ["-m", "ddcli"], [data5, *ARGS, "--width", "0", "-o",
                                       tmp_path / "x.safetensors"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "--width" in errors[0], r.stderr


@pytest.mark.parametrize("extra, fragment", [
    (["-m", "sfm"], "method sfm cannot split"),
    (["-m", "lgm"], "method lgm cannot split"),
    (["--model", "convnet-bn"], "batch norm"),
    (["--relabel"], "--relabel does not run under torchrun"),
])
def test_unsplittable_runs_are_refused(cli, shards: Path, tmp_path: Path, monkeypatch,
                                       extra: list[str], fragment: str):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "x.safetensors"
    run = cli("distill", shards, "--ipc", "1", "--iterations", "2", *extra, "-o", out)
    assert_one_line_error(run, 2, fragment, "WORLD_SIZE=2")
    assert not out.exists()


def test_bad_world_size_is_refused(cli, shards: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    run = cli("distill", shards, "--ipc", "1", "--iterations", "2", "-o", tmp_path / "x")
    assert_one_line_error(run, 2, "WORLD_SIZE")


@pytest.mark.parametrize("protocol", ["dm", "tgdd"])  # tgdd: CutMix draws as well as DSA
def test_evaluate_spreads_its_models_over_the_processes(data5: Path, tmp_path: Path, protocol):
    """Each process trains its block of the models with a single process's random draws, so
    every model's accuracy is the one-process figure; rank 0 alone prints the report."""
    import json

    bundle = tmp_path / "b.safetensors"
    assert _single([data5, *ARGS, "-o", bundle]).returncode == 0
    ev = ["evaluate", bundle, "--test", data5, "-p", protocol, "--models", "3", "--epochs",
          "12", "--seed", "1", "--json", "--quiet", "--compile", "off"]
    one = subprocess.run([sys.executable, "-m", "ddcli", *map(str, ev)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", "-m", "ddcli", *map(str, ev)], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # one JSON document: rank 0's
    assert b["result"]["world_size"] == 2 and "world_size" not in a["result"]
    assert b["result"]["accuracy_per_model"] == a["result"]["accuracy_per_model"]
    assert b["result"]["per_class_accuracy"] == a["result"]["per_class_accuracy"]
    # the models differ (a real check): in accuracy, or per class (6 test images a class: the
    # mean of 3 equal models would be a multiple of 100/6)
    per_class = [p * 6 / 100 for p in a["result"]["per_class_accuracy"]]
    assert (len(set(a["result"]["accuracy_per_model"])) > 1
            or any(abs(p - round(p)) > 1e-3 for p in per_class))
    assert b["result"]["model_seeds"] == a["result"]["model_seeds"]


def test_a_process_of_a_group_leaves_through_os_exit(monkeypatch):
    """A torchrun process aborted now and then after its work (gloo's threads torn down at
    the interpreter's and C++'s exit: 'terminate called without an active exception', exit
    -6, a red CI): once it has joined a group it leaves through os._exit with its code, its
    output flushed; a process that joined none exits as before."""
    import ddcli.__main__ as entry
    import ddcli.distributed

    exits: list[int] = []

    class Left(Exception):
        pass

    def os_exit(code):
        exits.append(code)
        raise Left

    monkeypatch.setattr(entry.os, "_exit", os_exit)
    monkeypatch.setattr(ddcli.distributed, "joined_a_group", True)
    for code, expected in ((0, 0), (2, 2), (None, 0)):
        with pytest.raises(Left):
            entry._finish(code)
        assert exits[-1] == expected
    monkeypatch.setattr(ddcli.distributed, "joined_a_group", False)
    with pytest.raises(SystemExit):
        entry._finish(0)
    assert len(exits) == 3


# a launcher whose rank 0 starts $SLOW0 seconds late (a loaded node), then runs the CLI
SLOW0 = """
import os, sys, time
if os.environ["RANK"] == "0":
    time.sleep(float(os.environ["SLOW0"]))
from ddcli.__main__ import main
main()
"""


def _errors(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def test_a_refusal_is_said_once_even_when_rank_0_is_late(data5: Path, tmp_path: Path):
    """Rank 1 refused at once and exited: torchrun then stopped rank 0 (SIGTERM) before it
    printed the refusal, and the run ended with no error line at all. Refusals that every rank
    meets (a bad option, a missing data set, an existing output, more processes than classes)
    printed one line per rank."""
    slow = tmp_path / "slow0.py"
    slow.write_text(SLOW0)
    r = _torchrun(2, [str(slow)], [data5, *ARGS, "--width", "0", "-o", tmp_path / "x.st"],
                  SLOW0="3")
    assert r.returncode != 0 and len(_errors(r)) == 1 and "--width" in _errors(r)[0], r.stderr
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"")
    for args, fragment in (([tmp_path / "nowhere", *ARGS, "-o", tmp_path / "y.st"], "not found"),
                           ([data5, *ARGS, "-o", out], "already exists")):
        r = _torchrun(2, ["-m", "ddcli"], args)
        assert r.returncode != 0 and len(_errors(r)) == 1, r.stderr
        assert fragment in _errors(r)[0], r.stderr


def test_commands_that_do_not_split_are_refused_under_torchrun(data5: Path, tmp_path: Path):
    """relabel (and experts, prior, inspect) ran whole on every rank: both trained the
    teacher, one wrote the output and the other failed on it, so a run that wrote its bundle
    reported failure."""
    b = tmp_path / "b.safetensors"
    assert _single([data5, *ARGS, "-o", b]).returncode == 0
    out = tmp_path / "r.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "ddcli", "relabel", str(b), "--data", str(data5), "--train-teacher",
           "convnet", "--teacher-epochs", "1", "-o", str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode != 0 and len(_errors(r)) == 1, r.stderr
    assert "ddcli relabel does not run under torchrun" in _errors(r)[0]
    assert not out.exists()


@pytest.mark.parametrize("command", [["relabel", "b.safetensors", "--teacher", "t"],
                                     ["experts", "data"], ["prior", "data"],
                                     ["inspect", "b.safetensors"]])
def test_single_process_commands_refuse_a_torchrun_environment(cli, monkeypatch, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert_one_line_error(cli(*command), 2, f"ddcli {command[0]} does not run under torchrun")


@pytest.mark.parametrize("rank, fragment", [("5", "RANK 5 is outside 0..1"),
                                            ("-1", "RANK -1 is outside 0..1"),
                                            ("x", "bad RANK 'x'")])
def test_a_rank_outside_the_world_is_refused(cli, shards: Path, tmp_path: Path, monkeypatch,
                                             rank: str, fragment: str):
    """RANK 5 of WORLD_SIZE 2 waited for its peers forever; RANK x was taken for a rank other
    than 0, whose refusals are silent, so a bad option ended with no message."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29533")
    for extra in ([], ["--ipc", "0"]):
        run = cli("distill", shards, "--iterations", "1", *extra, "-o", tmp_path / "x.st")
        assert_one_line_error(run, 2, fragment)


def test_rank_errors_leave_refusals_to_rank_0_and_end_interrupts_quietly(monkeypatch):
    from ddcli import distributed
    from ddcli.errors import DataError, InputError, RunError

    monkeypatch.setattr(distributed, "RANK_0_WAIT_S", 0.0)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    with pytest.raises(SystemExit) as e, distributed.rank_errors(1):
        raise KeyboardInterrupt  # evaluate's Ctrl-C: a second "interrupted" line before
    assert e.value.code == 130
    # a refusal rank 0 did not make (past the wait): this rank says it, named once
    with pytest.raises(DataError, match=r"^rank 1: no data$"), distributed.rank_errors(1):
        with distributed.rank_errors(1):  # an inner refusal: waited for once
            raise DataError("no data")
    with pytest.raises(RunError, match="^rank 1: boom$"), distributed.rank_errors(1):
        raise RunError("boom")
    with pytest.raises(InputError, match="^bad$"), distributed.rank_errors(0):
        raise InputError("bad")
    # another launcher (RANK and WORLD_SIZE set by hand, a pod) stops no one: no wait
    monkeypatch.setattr(distributed, "RANK_0_WAIT_S", 3600.0)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(InputError, match="^rank 1: bad$"), distributed.rank_errors(1):
        raise InputError("bad")


# a launcher whose rank 1 alone fails with a refusal in DM's iteration 2 (a file only its node
# lacks), rank 0 being blocked in a collective meanwhile
RANK1_ERROR = """
import ddcli.distributed
ddcli.distributed.RANK_0_WAIT_S = 2.0
import os
from ddcli.errors import DataError
from ddcli.methods.dm import DM
_step = DM.step
def step(self, it):
    if os.environ["RANK"] == "1" and it == 2:
        raise DataError("only rank 1 cannot read shard X")
    return _step(self, it)
DM.step = step
from ddcli.__main__ import main
main()
"""


def test_an_error_of_rank_1_alone_is_said_by_rank_1(data5: Path, tmp_path: Path):
    """Rank 1 left the group before its wait for rank 0: rank 0, blocked in a collective,
    reported a failed peer, torchrun named rank 0 the culprit and rank 1's error was lost."""
    script = tmp_path / "rank1err.py"
    script.write_text(RANK1_ERROR)
    r = _torchrun(2, [str(script)], [data5, *ARGS, "--checkpoint-every", "0", "-o",
                                      tmp_path / "o.st"])
    assert r.returncode != 0
    assert "error: rank 1: only rank 1 cannot read shard X" in r.stderr, r.stderr


# a launcher whose rank 1 reads $ALT where the command line says $MAIN (a second machine whose
# copy at the same path differs)
SWAPPER = """
import os, sys
if os.environ["RANK"] == "1":
    sys.argv = [os.environ["ALT"] if a == os.environ["MAIN"] else a for a in sys.argv]
from ddcli.__main__ import main
main()
"""


def test_ranks_must_read_the_same_data_and_only_rank_0_checks_the_output(data5: Path,
                                                                        tmp_path: Path):
    # a rank with other data (other images, or a class fewer) gave exit 0 and a bundle of
    # zero-padded or mixed classes recorded under rank 0's fingerprint; a rank whose machine
    # lacked the output folder refused the run, though rank 0 alone writes
    from PIL import Image

    script = tmp_path / "swap.py"
    script.write_text(SWAPPER)
    other = write_shards(tmp_path / "other", n_train=13, classes=CLASSES5)
    out = tmp_path / "o.safetensors"
    r = _torchrun(2, [str(script)], [data5, *ARGS, "-o", out], MAIN=str(data5), ALT=str(other))
    assert r.returncode != 0 and not out.exists()
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the data differs between processes: rank 1" in errors[0], \
        r.stderr
    r = _torchrun(2, [str(script)], [data5, *ARGS, "-o", out], MAIN=str(out),
                  ALT=str(tmp_path / "nowhere" / "o.safetensors"))
    assert r.returncode == 0 and out.exists(), r.stderr
    # a warning is said once, not once per process
    imgs = write_image_folder(tmp_path / "imgs", n=6, classes=CLASSES5[:3])
    Image.new("RGB", (12, 10)).save(imgs / "a" / "odd.png")
    r = _torchrun(2, ["-m", "ddcli"], [imgs, *ARGS, "--json", "-o", tmp_path / "i.st"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning:") == 1 and "resized" in r.stderr, r.stderr
    assert '"world_size": 2' in r.stdout
