"""Progress on stderr: every iteration, plain lines for CI logs, silence with --quiet, the
estimated total time and the slow-CPU warning, stdout one JSON document with --json."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_dataset, write_shards

from ddcli import reporting
from ddcli.methods import create_method
from ddcli.methods.base import run_method
from ddcli.reporting import Reporter, format_duration


@pytest.fixture
def fast_progress(monkeypatch):
    """A plain line at every update and the estimate at once (CliRunner's stderr is no tty)."""
    monkeypatch.setenv("DDCLI_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv("DDCLI_ESTIMATE_AFTER", "0")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(reporting.time, "monotonic", c)
    return c


def test_run_method_reports_every_iteration_and_the_loss_at_log_points():
    calls = []
    m = create_method("dm", ipc=1, iterations=7, batch_real=4, width=8)
    run_method(m, tiny_dataset(), seed=0, log_every=3,
               progress=lambda it, **kw: calls.append((it, kw)))
    assert [it for it, _ in calls] == list(range(1, 8))
    assert all(kw["total"] == 7 for _, kw in calls)
    with_loss = [it for it, kw in calls if "status" in kw]
    assert with_loss == [3, 6, 7]
    assert calls[2][1]["status"].startswith("loss ")


def test_plain_lines_every_interval_with_rate_eta_and_a_last_line(clock, capsys, monkeypatch):
    monkeypatch.setenv("DDCLI_PROGRESS_INTERVAL", "10")
    monkeypatch.setenv("DDCLI_ESTIMATE_AFTER", "5")
    rep = Reporter(terminal=False)
    with rep.progress("distill (dm)", 100, unit="iterations", estimate=True) as update:
        for i in range(1, 101):
            clock.t += 0.5  # 2 it/s
            update(i, total=100, status="loss 1.5" if i % 50 == 0 else None)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\x1b" not in err and "\r" not in err  # no bars, no colours: a log
    # the estimate once (after 5 s), then a line every 10 s (20 iterations), then "done"
    estimates = [ln for ln in lines if "in all" in ln]
    assert estimates == ["distill (dm): about 50s in all (45s left at 2.0 it/s)"]
    progress = [ln for ln in lines if "/100 iterations (" in ln]
    assert len(progress) == 5, lines
    assert progress[0].startswith("distill (dm): 20/100 iterations (20%), 2.0 it/s, ETA 40s")
    assert "loss 1.5" in progress[-1]  # the status persists until replaced
    assert lines[-1] == "distill (dm): done, 100/100 iterations in 50s"


def test_a_phase_stopped_by_an_error_or_ctrl_c_does_not_say_done(clock, capsys, monkeypatch):
    # `ddcli prior` interrupted at step 12 of 400 printed "diffusion prior: done, 12/400"
    monkeypatch.setenv("DDCLI_PROGRESS_INTERVAL", "10")
    rep = Reporter(terminal=False)
    with pytest.raises(KeyboardInterrupt):
        with rep.progress("diffusion prior", 400, unit="steps") as update:
            for i in range(1, 13):
                clock.t += 1.0
                update(i, total=400)
            raise KeyboardInterrupt
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "diffusion prior: stopped at 12/400 steps after 12s", lines
    assert not any("done" in ln for ln in lines)
    # part-way through an epoch: "stopped at 0.45454545454545453/2 epochs"
    with pytest.raises(KeyboardInterrupt):
        with rep.progress("teacher convnet", 2, unit="epochs") as update:
            clock.t += 11.0
            update(5 / 11, total=2)
            raise KeyboardInterrupt
    assert capsys.readouterr().err.splitlines()[-1] == \
        "teacher convnet: stopped at 0.5/2 epochs after 11s"


def test_log_messages_are_not_wrapped_off_a_terminal(capsys):
    # rich wrapped them at 80 columns in a CI log ("... preset \nsample-cpu")
    rep = Reporter(terminal=False)
    msg = "dm on fashion_mnist: 3000 images, 10 classes, 1x28x28, device cpu, preset " + "x" * 60
    rep.info(msg)
    assert capsys.readouterr().err == msg + "\n"


def test_a_short_phase_prints_nothing_in_a_log(capsys):
    rep = Reporter(terminal=False)
    with rep.progress("distill (dm)", 10, unit="iterations", estimate=True) as update:
        for i in range(1, 11):
            update(i)
    assert capsys.readouterr().err == ""


def test_a_cpu_run_of_hours_is_warned_once_even_when_quiet(clock, capsys, monkeypatch):
    monkeypatch.setenv("DDCLI_ESTIMATE_AFTER", "5")
    for quiet in (False, True):
        rep = Reporter(quiet=quiet, terminal=False)
        with rep.progress("distill (dm)", 20000, unit="iterations", estimate=True,
                          cpu_hint="a GPU is faster") as update:
            for i in range(1, 20):
                clock.t += 1.0  # 1 it/s: 20000 iterations take 5.5 hours
                update(i)
        err = capsys.readouterr().err
        warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
        assert warnings == ["warning: distill (dm) will take about 5h 33m on the CPU; "
                            "a GPU is faster"], err
        assert ("in all" in err) is not quiet


def test_no_warning_without_a_cpu_hint_or_for_a_short_run(clock, capsys, monkeypatch):
    monkeypatch.setenv("DDCLI_ESTIMATE_AFTER", "5")
    rep = Reporter(terminal=False)
    for total, hint in ((20000, None), (100, "hint")):
        with rep.progress("p", total, unit="iterations", cpu_hint=hint) as update:
            for i in range(1, 20):
                clock.t += 1.0
                update(i)
    assert "warning" not in capsys.readouterr().err


def test_a_new_phase_in_the_same_display_has_its_own_count_and_unit(clock, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("DDCLI_PROGRESS_INTERVAL", "0")
    rep = Reporter(terminal=False)
    with rep.progress("training 2 models", 3, unit="epochs") as update:
        for e in (1, 2, 3):
            clock.t += 1
            update(e)
        update(0, total=2, description="testing 2 models on 2000 images", unit="batches")
        clock.t += 1
        update(1, total=2, description="testing 2 models on 2000 images", unit="batches")
    lines = capsys.readouterr().err.splitlines()
    assert "training 2 models: done, 3/3 epochs in 3s" in lines
    assert lines[-2].startswith("testing 2 models on 2000 images: 1/2 batches (50%)")
    assert lines[-1].startswith("testing 2 models on 2000 images: done, 1/2 batches")


def test_a_terminal_gets_a_bar_that_keeps_the_last_status(capsys):
    rep = Reporter(terminal=True)
    with rep.progress("distill (dm)", 4, unit="iterations") as update:
        update(1, total=4, status="loss 2")
        update(2, total=4)
        update(0, total=2, description="testing", unit="batches")
        update(2, total=2)
    assert "testing" in capsys.readouterr().err


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 20000)] == [
        "0s", "59s", "1m 01s", "59m 59s", "1h 00m", "5h 33m"]


def test_distill_json_keeps_stdout_one_document_and_progress_on_stderr(cli, fast_progress,
                                                                       tmp_path):
    shards = write_shards(tmp_path / "d")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--ipc", "1", "--iterations", "5", "--batch-real", "4",
            "--width", "8", "-o", out, "--json", "--device", "cpu")
    assert r.code == 0, r
    assert json.loads(r.stdout)["stats"]["iterations"] == 5  # exactly one JSON document
    lines = r.stderr.splitlines()
    for i in range(1, 6):  # every iteration advances the count
        assert any(ln.startswith(f"distill (dm): {i}/5 iterations") for ln in lines), r
    assert any("in all" in ln for ln in lines), r
    assert "\x1b" not in r.stderr and "\r" not in r.stderr


def test_quiet_prints_nothing_on_stderr(cli, fast_progress, tmp_path):
    shards = write_shards(tmp_path / "d")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--ipc", "1", "--iterations", "5", "--batch-real", "4",
            "--width", "8", "-o", out, "--device", "cpu", "--quiet")
    assert r.code == 0 and r.stdout == "" and r.stderr == "", r
    r = cli("evaluate", out, "--test", shards, "--epochs", "2", "--models", "1",
            "--device", "cpu", "--quiet", "--json")
    assert r.code == 0 and r.stderr == "", r
    json.loads(r.stdout)


def test_evaluate_reports_training_and_test_prediction(cli, fast_progress, tmp_path):
    shards = write_shards(tmp_path / "d")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "4",
            "--width", "8", "-o", out, "--device", "cpu", "--quiet")
    assert r.code == 0, r
    r = cli("evaluate", out, "--test", shards, "--epochs", "3", "--models", "2",
            "--device", "cpu", "--json")
    assert r.code == 0, r
    json.loads(r.stdout)
    lines = r.stderr.splitlines()
    assert any(ln.startswith("training 2 models (bundle): 1/") for ln in lines), r
    assert any(ln.startswith("training 2 models (bundle): done") for ln in lines), r
    assert any(ln.startswith("testing 2 models on 18 images (bundle): 1/1 batches")
               for ln in lines), r


def test_training_reports_part_way_through_an_epoch_of_several_batches(clock, capsys,
                                                                       monkeypatch):
    """An epoch of many batches (an expert or teacher epoch on a real set takes minutes on a
    CPU) advances the progress after every batch, not only at its end."""
    import torch

    from ddcli.protocols import get_protocol
    from ddcli.training import build_ensemble, train_ensemble

    proto = get_protocol("dm", epochs=1, batch_size=4)
    ens = build_ensemble(proto, 3, 3, (8, 8), [0], torch.device("cpu"))
    x, y = torch.randn(10, 3, 8, 8), torch.arange(10) % 3
    calls = []
    train_ensemble(ens, x, y, proto, torch.Generator().manual_seed(0), calls.append)
    epochs = proto.train_epochs()
    assert calls == [e + f for e in range(epochs) for f in (1 / 3, 2 / 3, 1)]
    monkeypatch.setenv("DDCLI_PROGRESS_INTERVAL", "0")
    with Reporter(terminal=False).progress("experts", 60, unit="epochs") as update:
        clock.t += 1
        update(1.5)
    assert "experts: 1.5/60 epochs (2%)" in capsys.readouterr().err


def test_relabel_reports_its_labelling_step(cli, fast_progress, tmp_path):
    """The teachers' pass over the images (and over every recorded view) shows progress: with
    --views K it is (1 + K) passes per teacher, minutes on a CPU for a large bundle."""
    shards = write_shards(tmp_path / "d")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--ipc", "2", "--iterations", "1", "--batch-real", "4",
            "--width", "8", "-o", out, "--device", "cpu", "--quiet")
    assert r.code == 0, r
    r = cli("relabel", out, "--data", shards, "--train-teacher", "convnet", "--teacher-epochs",
            "1", "--views", "3", "--device", "cpu", "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r
    n = 2 * 3  # IPC 2, 3 classes
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("labelling: ")]
    assert f"labelling: {n * 4}/{n * 4} images (100%)" in " ".join(lines), r.stderr
    assert lines[-1].startswith(f"labelling: done, {n * 4}/{n * 4} images"), lines
