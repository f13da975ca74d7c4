import json

import pytest
import torch
from conftest import assert_one_line_error, write_shards

from ddcli.data import load_dataset
from ddcli.evaluation import model_seeds
from ddcli.models import create_model
from ddcli.protocols import get_protocol
from ddcli.training import Ensemble, accuracy_report, build_ensemble, train_ensemble


@pytest.mark.parametrize("serial", [True, False])
@pytest.mark.parametrize("name", ["convnet", "convnet-bn"])
def test_ensemble_models_are_independent(name, serial):
    """Stacked (vmap) or looped, each model computes exactly what it would alone."""
    models = []
    for s in range(3):
        m = create_model(name, 4, 3, 8, width=8)
        m.reset_parameters(torch.Generator().manual_seed(s))
        models.append(m)
    alone = [create_model(name, 4, 3, 8, width=8) for _ in range(3)]
    for a, m in zip(alone, models, strict=True):
        a.load_state_dict(m.state_dict())
    ens = Ensemble(models, torch.device("cpu"), serial=serial)
    assert ens.vmapped == (name == "convnet")
    ens.train(True)
    x = torch.randn(3, 5, 3, 8, 8)
    out = ens.forward(x)
    out.sum().backward()
    for i, a in enumerate(alone):
        a.train(True)
        ref = a(x[i])
        assert torch.allclose(out[i], ref, atol=1e-5)
        ref.sum().backward()
    grads = ens.parameters()
    if ens.vmapped:
        first = grads[0].grad  # stacked: (3, ...)
        for i, a in enumerate(alone):
            assert torch.allclose(first[i], next(a.parameters()).grad, atol=1e-5)


def test_serial_and_vmap_execution_train_the_same_models():
    """The CPU path (stacked models run one after another) and the vmap path share parameters,
    optimiser and every random draw: the same trained weights, up to float rounding."""
    data_x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    data_y = torch.arange(3).repeat_interleave(4)
    proto = get_protocol("dm", epochs=4)
    trained = []
    for serial in (True, False):
        ms = []
        for s in (5, 6):
            m = create_model("convnet", 3, 3, 8, width=8)
            m.reset_parameters(torch.Generator().manual_seed(s))
            ms.append(m)
        ens = Ensemble(ms, torch.device("cpu"), serial=serial)
        train_ensemble(ens, data_x, data_y, proto, torch.Generator().manual_seed(1))
        trained.append(ens)
    for k, v in trained[0].params.items():
        assert torch.allclose(v, trained[1].params[k], atol=1e-5), k
    x = torch.randn(7, 3, 8, 8)
    assert torch.allclose(trained[0].predict(x), trained[1].predict(x), atol=1e-5)


def test_training_learns_a_separable_toy_problem():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(6)
    x = torch.randn(18, 3, 8, 8, generator=g) * 0.3
    x[torch.arange(18), y] += 2.0  # class = which channel is bright
    proto = get_protocol("dm", epochs=30)
    ens = build_ensemble(proto, 3, 3, (8, 8), [0, 1], torch.device("cpu"))
    train_ensemble(ens, x, y, proto, torch.Generator().manual_seed(0))
    xt = torch.randn(30, 3, 8, 8, generator=g) * 0.3
    yt = torch.arange(3).repeat_interleave(10)
    xt[torch.arange(30), yt] += 2.0
    preds = torch.stack([ens.predict(xt).argmax(-1)])[0]
    assert (preds == yt).float().mean() > 0.9


def test_accuracy_report_on_a_toy_case():
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1]])  # 75 %, 75 %
    r = accuracy_report(preds, labels, 2)
    assert r["accuracy_per_model"] == [75.0, 75.0] and r["accuracy_std"] == 0.0
    assert r["per_class_accuracy"] == [75.0, 75.0]
    r = accuracy_report(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), labels, 2)
    assert r["accuracy_mean"] == 75.0 and r["accuracy_std"] == 25.0  # population std


def distill(cli, shards, out, *extra):
    r = cli("distill", shards, "--ipc", "2", "--batch-real", "8", "--width", "8",
            "--device", "cpu", "-o", out, "--quiet", *extra)
    assert r.code == 0, r
    return out


def test_end_to_end_distill_beats_its_own_noise_init(cli, tmp_path):
    shards = write_shards(tmp_path / "d", n_train=20, n_test=20)
    init = distill(cli, shards, tmp_path / "init.safetensors", "--init", "noise",
                   "--iterations", "0")
    dist = distill(cli, shards, tmp_path / "dm.safetensors", "--init", "noise",
                   "--iterations", "150")
    accs = []
    for b in (init, dist):
        r = cli("evaluate", b, "--test", shards, "--epochs", "40", "--models", "2",
                "--device", "cpu", "--json")
        assert r.code == 0, r
        accs.append(r.json()["result"]["accuracy_mean"])
    assert accs[1] > accs[0] + 20, accs


def test_evaluate_report_holds_every_knob_and_the_baseline(cli, tmp_path):
    shards = write_shards(tmp_path / "d")
    b = distill(cli, shards, tmp_path / "b.safetensors", "--iterations", "3")
    report = tmp_path / "report.json"
    r = cli("evaluate", b, "--test", shards, "--epochs", "3", "--models", "2", "--seed", "4",
            "--device", "cpu", "--json", "--baseline", "random", "--real", shards,
            "--out", report)
    assert r.code == 0, r
    rep = r.json()
    assert json.loads(report.read_text()) == rep
    p = rep["protocol"]
    for key, value in dict(name="dm", model="convnet", epochs=3, batch_size=256, lr=0.01,
                           momentum=0.9, weight_decay=5e-4, lr_milestones=[],
                           schedule="evaluate_synset", lr_gamma=0.1, labels="hard").items():
        assert p[key] == value, key
    assert p["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"
    assert rep["num_models"] == 2 and len(rep["result"]["accuracy_per_model"]) == 2
    assert rep["result"]["model_seeds"] == model_seeds(4, 2)
    assert len(rep["result"]["per_class_accuracy"]) == 3
    assert rep["baseline"]["ipc"] == 2 and rep["test"]["num_images"] == 18
    # the real set the baseline drew from is identified as the test set is (its path alone)
    assert rep["baseline"]["fingerprint"] and rep["baseline"]["fingerprint"] != rep["test"][
        "fingerprint"]
    assert rep["improvement_points"] == pytest.approx(
        rep["result"]["accuracy_mean"] - rep["baseline"]["accuracy_mean"], abs=0.011)
    r = cli("evaluate", b, "--test", shards, "--epochs", "2", "--models", "1", "--device", "cpu")
    assert r.code == 0 and "protocol" in r.stdout and "test accuracy" in r.stdout, r
    # the protocol once, one readable line, only the knobs it uses
    out = r.stdout + r.stderr
    assert out.count("protocol dm") == 1 and "{" not in out, r
    assert "2 epochs" in out and "sgd lr 0.01 momentum 0.9" in out
    assert "cutmix" not in out and "w_ce" not in out and "methods.md" not in out


def test_protocol_summary_lists_only_the_knobs_used():
    from ddcli.protocols import get_protocol, protocol_knobs, protocol_summary

    otm = get_protocol("otm").to_dict()
    assert "momentum" not in protocol_knobs(otm) and "w_ot" in protocol_knobs(otm)
    assert "dsa_strategy" not in protocol_knobs(otm)
    # otm matches softmax(s) at T 1: a temperature there would be a knob that changes nothing
    assert "temperature" not in protocol_knobs(otm)
    assert "temperature" in protocol_knobs(get_protocol("kd").to_dict())
    assert "OT" in protocol_summary(otm) and "momentum" not in protocol_summary(otm)
    tgdd = protocol_summary(get_protocol("tgdd").to_dict())
    assert "cutmix p 0.5" in tgdd and "always color_flip" in tgdd


def test_evaluate_refuses_mismatched_classes(cli, tmp_path):
    shards = write_shards(tmp_path / "d")
    b = distill(cli, shards, tmp_path / "b.safetensors", "--iterations", "1")
    other = write_shards(tmp_path / "o", classes=["cat", "frog", "dog"])
    assert_one_line_error(cli("evaluate", b, "--test", other), 2, "another order")
    other = write_shards(tmp_path / "x", classes=["cat", "dog", "emu"])
    assert_one_line_error(cli("evaluate", b, "--test", other), 2, "do not match")
    assert_one_line_error(cli("evaluate", b), 2, "--test is required")
    from ddcli.data import sample_dir
    shard = sample_dir() / "test.npz"  # the default --test's shard: it was overwritten
    before = shard.read_bytes()
    assert_one_line_error(cli("evaluate", b, "-o", shard, "--force"), 2, "--test data")
    assert shard.read_bytes() == before
    big = write_shards(tmp_path / "big", size=12)  # judged at the bundle's 8 px: said
    r = cli("evaluate", b, "--test", big, "--epochs", "1", "--models", "1", "--device", "cpu")
    assert r.code == 0 and "18 of 18 images" in r.stderr and "(12x12)" in r.stderr, r
    assert_one_line_error(cli("evaluate", b, "--test", shards, "--protocol", "zz"), 2,
                          "--protocol", "'zz' is not one of")
    assert_one_line_error(cli("evaluate", b, "--test", shards, "--baseline", "random"), 2,
                          "--real")


def test_random_baseline_needs_the_same_ipc_in_every_class(cli, tmp_path):
    from test_bundle import make_bundle

    from ddcli.bundle import save_bundle

    data = write_shards(tmp_path / "d")
    b = make_bundle(soft=False)
    b.labels = torch.tensor([0, 0, 0, 1, 1, 2])
    b.dataset["classes"] = ["cat", "dog", "frog"]
    save_bundle(b, tmp_path / "u.safetensors")
    r = cli("evaluate", tmp_path / "u.safetensors", "--test", data, "--epochs", "1",
            "--models", "1", "--device", "cpu", "--baseline", "random", "--real", data)
    assert_one_line_error(r, 2, "same IPC in every class")


def _tiny_ensemble(serial: bool = True) -> Ensemble:
    ms = []
    for s in (5, 6):
        m = create_model("convnet", 3, 3, 8, width=8)
        m.reset_parameters(torch.Generator().manual_seed(s))
        ms.append(m)
    return Ensemble(ms, torch.device("cpu"), serial=serial)


def test_compiled_cpu_step_trains_the_same_models_as_eager():
    """``evaluate --compile``: the inductor-compiled serial step is the same arithmetic."""
    data_x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    data_y = torch.arange(3).repeat_interleave(4)
    proto = get_protocol("dm", epochs=3)
    eager, compiled = _tiny_ensemble(), _tiny_ensemble()
    assert compiled.compile() and compiled.compiled and not eager.compiled
    for ens in (eager, compiled):
        train_ensemble(ens, data_x, data_y, proto, torch.Generator().manual_seed(1))
    assert compiled.compiled, compiled.compile_error  # it did not fall back
    for k, v in eager.params.items():
        assert torch.allclose(v, compiled.params[k], atol=1e-5), k


def test_compile_falls_back_to_eager_when_inductor_cannot_build(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(fn, **kw):
        def run(*a):
            raise BackendCompilerFailed.__new__(BackendCompilerFailed)
        return run

    monkeypatch.setattr(torch, "compile", broken)
    data_x = torch.randn(6, 3, 8, 8)
    data_y = torch.arange(3).repeat_interleave(2)
    ens, ref = _tiny_ensemble(), _tiny_ensemble()
    ens.compile()
    proto = get_protocol("dm", epochs=1)
    train_ensemble(ens, data_x, data_y, proto, torch.Generator().manual_seed(1))
    train_ensemble(ref, data_x, data_y, proto, torch.Generator().manual_seed(1))
    assert not ens.compiled and ens.compile_error.startswith("BackendCompilerFailed")
    for k, v in ref.params.items():
        assert torch.equal(v, ens.params[k]), k


def test_auto_compile_only_for_long_serial_cpu_runs():
    from ddcli.training import AUTO_COMPILE_MIN_IMAGES, should_compile

    proto = get_protocol("dm", epochs=300)  # 301 epochs
    ens = _tiny_ensemble()
    assert should_compile("auto", ens, proto, 100)  # the sample's evaluation: 2 x 301 x 100
    assert not should_compile("auto", ens, get_protocol("dm", epochs=2), 100)
    assert not should_compile("off", ens, proto, 10**6)
    assert should_compile("on", ens, get_protocol("dm", epochs=1), 1)
    assert not should_compile("on", _tiny_ensemble(serial=False), proto, 100)  # vmap path
    assert not should_compile("auto", ens, proto, 100, amp="bf16")  # no gain under bf16
    assert should_compile("on", ens, proto, 100, amp="bf16")
    bn = Ensemble([create_model("convnet-bn", 3, 3, 8, width=8)], torch.device("cpu"))
    assert not bn.compile() and not bn.compiled and bn.compile_error is None  # separate modules
    assert 2 * 301 * 50 >= AUTO_COMPILE_MIN_IMAGES
    with pytest.raises(ValueError):
        should_compile("sometimes", ens, proto, 1)


def test_amp_bf16_is_a_recorded_opt_in(cli, tmp_path):
    data_x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    data_y = torch.arange(3).repeat_interleave(4)
    proto = get_protocol("dm", epochs=2)
    fp32, bf16 = _tiny_ensemble(), _tiny_ensemble()
    train_ensemble(fp32, data_x, data_y, proto, torch.Generator().manual_seed(1))
    train_ensemble(bf16, data_x, data_y, proto, torch.Generator().manual_seed(1), amp="bf16")
    k = next(iter(fp32.params))
    assert not torch.equal(fp32.params[k], bf16.params[k])  # autocast was on
    assert torch.allclose(fp32.params[k], bf16.params[k], atol=0.05)  # and near fp32
    assert all(v.dtype == torch.float32 for v in bf16.params.values())
    shards = write_shards(tmp_path / "shards")
    out = tmp_path / "d.safetensors"
    assert cli("distill", shards, "--ipc", "1", "--iterations", "1", "--batch-real", "4",
               "--width", "8", "-o", out, "--device", "cpu").code == 0
    r = cli("evaluate", out, "--test", shards, "--models", "1", "--epochs", "1", "--device",
            "cpu", "--amp", "BF16", "--json")
    assert r.code == 0, r
    assert r.json()["result"]["amp"] == "bf16"
    assert_one_line_error(cli("evaluate", out, "--test", shards, "--amp", "fp8"), 2, "--amp")


def test_a_class_without_test_images_has_no_accuracy():
    # it was counted as 0 correct of 1: 0.0 in per_class_accuracy and in its group's mean
    from ddcli.training import accuracy_report

    preds = torch.tensor([[0, 1, 1, 0]])
    labels = torch.tensor([0, 1, 1, 0])  # classes 2 and 3 have no test image
    rep = accuracy_report(preds, labels, 4, class_counts=[100, 50, 20, 5])
    assert rep["per_class_accuracy"] == [100.0, 100.0, None, None]
    assert rep["group_accuracy"]["many"] == 100.0 and "few" not in rep["group_accuracy"]


def test_a_training_loss_that_goes_non_finite_is_an_error_not_an_accuracy(shards, tmp_path):
    # kd on soft labels at an extreme temperature: KL x T^2 = 0 x inf trained the models into
    # NaN, which then predicted one class, reported as an accuracy with exit 0
    from ddcli.errors import RunError
    from ddcli.evaluation import evaluate_images
    from ddcli.protocols import get_protocol

    ds = load_dataset(shards, "test")
    pixels = torch.rand(6, 3, 8, 8)
    labels = torch.arange(3).repeat_interleave(2)
    soft = torch.full((6, 3), float("nan"))
    with pytest.raises(RunError, match="loss became non-finite"):
        evaluate_images(pixels, labels, mean=[0.5] * 3, std=[0.2] * 3, test=ds,
                        protocol=get_protocol("kd", epochs=1), num_models=1, seed=0,
                        device=torch.device("cpu"), soft=soft, temperature=1.0)


def test_evaluate_counts_in_range_and_never_over_its_bundle(cli, tmp_path, bundle_file):
    # --models 10^12 allocated until it hung; --out BUNDLE --force replaced the bundle by JSON
    for args, msg in ((("--models", "1000000000000"), "--models must be an integer from 1"),
                      (("--epochs", "1000000000000"), "--epochs is out of range"),
                      (("--out", bundle_file, "--force"), "--out is the bundle")):
        assert_one_line_error(cli("evaluate", bundle_file, "--test", tmp_path, *args), 2, msg)
    assert bundle_file.read_bytes()[:8] != b"{"  # still a bundle


def test_options_that_would_change_nothing_are_refused(cli, shards, tmp_path):
    # a --teacher file, --backbone, --real without --baseline, --amp on linear-probe: exit 0,
    # ignored (a typo'd path went unnoticed)
    b = tmp_path / "b.safetensors"
    assert cli("distill", shards, "--ipc", "1", "--iterations", "1", "--batch-real", "2",
               "--width", "8", "--device", "cpu", "-o", b).code == 0
    for args, msg in ((("--teacher", "nofile.st"), "--teacher changes nothing under the dm"),
                      (("--backbone", "x"), "go with --protocol linear-probe"),
                      (("--real", "nonexist"), "--real is the real data of a baseline"),
                      (("--real-files", "z*"), "--real-files chooses shards"),
                      (("-p", "linear-probe", "--amp", "bf16"), "not to linear-probe")):
        r = cli("evaluate", b, "--test", shards, "--epochs", "1", "--models", "1", *args)
        assert_one_line_error(r, 2, msg)
