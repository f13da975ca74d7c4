"""Every command and every error path: exit code, one line on stderr, nothing half-written."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, write_shards

from ddcli import __version__
from ddcli.errors import InputError


def test_version_and_help(cli):
    r = cli()
    assert r.code == 0 and "Usage" in r.stdout and "error" not in r.stderr, r
    r = cli("--version")
    assert r.code == 0 and r.stdout.strip() == f"ddcli {__version__}"
    for cmd in ("distill", "relabel", "evaluate", "inspect", "cache", "experts", "prior",
                "list", "env"):
        r = cli(cmd, "--help")
        assert r.code == 0 and "Example" in r.stdout, (cmd, r)


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ddcli", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"ddcli {__version__}"


def test_usage_errors_are_one_line_exit_2(cli, bundle_file):
    assert_one_line_error(cli("frobnicate"), 2, "No such command")
    assert_one_line_error(cli("inspect"), 2, "Missing argument")
    assert_one_line_error(cli("evaluate", bundle_file, "--models", "x"), 2, "--models")
    assert_one_line_error(cli("inspect", bundle_file, "--nope"), 2, "--nope")


def test_inspect_summary_and_json(cli, bundle_file):
    r = cli("inspect", bundle_file)
    assert r.code == 0, r
    for word in ("dm", "tiny", "IPC 2", "ok", "provenance", "soft labels"):
        assert word in r.stdout
    r = cli("inspect", bundle_file, "--json")
    assert r.code == 0, r
    s = r.json()
    assert s["ipc"] == 2 and s["checksum_ok"] is True and s["method"] == "dm"
    assert s["dataset"]["class_counts"] == [5, 5, 5]
    # where the data came from (the shards chosen by --train-files) was left out
    assert set(s["dataset"]) >= {"source", "num_images"}
    sl = s["soft_labels"]
    assert 0 <= sl["mean_entropy_nats"] <= sl["max_entropy_nats"]
    assert 0 <= sl["top1_agreement_with_labels"] <= 1


def test_inspect_content_checksum_is_the_same_for_the_same_seed(cli, tmp_path):
    # the checksum covers the creation time and command line, so two same-seed bundles never
    # shared it: nothing showed that their content was the same
    data = write_shards(tmp_path / "d")
    sums = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{name}.safetensors"
        assert cli("distill", data, "--ipc", "1", "--iterations", "2", "--seed", seed,
                   "--device", "cpu", "-o", out, "-q").code == 0
        r = cli("inspect", out, "--json")
        assert r.code == 0, r
        sums[name] = (r.json()["checksum"], r.json()["content_checksum"])
    assert sums["a"][1] == sums["b"][1] and sums["a"][0] != sums["b"][0]
    assert sums["c"][1] != sums["a"][1]
    from ddcli.bundle import compute_checksum, load_bundle

    b = load_bundle(tmp_path / "a.safetensors")  # the hash of the tensors, and nothing else
    assert sums["a"][1] == b.content_checksum == compute_checksum(b.tensors())
    assert "content" in cli("inspect", tmp_path / "a.safetensors").stdout


def test_inspect_grid_preview_export(cli, bundle_file, tmp_path):
    from PIL import Image

    grid = tmp_path / "grid.png"
    r = cli("inspect", bundle_file, "--grid", grid, "--preview", "--export", tmp_path / "exp")
    assert r.code == 0, r
    w, h = Image.open(grid).size
    assert (w, h) == (2 + 2 * (8 + 2), 2 + 3 * (8 + 2))  # 2 per row, one row per class
    assert "▀" not in r.stdout  # stdout is no terminal here: one line instead of the picture
    assert "preview: stdout is not a terminal; use --grid FILE.png" in r.stdout
    folders = sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert folders == ["0_a", "1_b", "2_c"]
    assert len(list((tmp_path / "exp" / "0_a").glob("*.png"))) == 2
    r = cli("inspect", bundle_file, "--grid", grid)
    assert_one_line_error(r, 2, "already exists", "--force")
    assert cli("inspect", bundle_file, "--grid", grid, "--force").code == 0


def test_inspect_exported_folder_reads_back_as_a_dataset(cli, bundle_file, tmp_path):
    from ddcli.data import load_dataset

    assert cli("inspect", bundle_file, "--export", tmp_path / "exp").code == 0
    ds = load_dataset(tmp_path / "exp")
    assert ds.class_counts == [2, 2, 2] and ds.images.shape[1:] == (3, 8, 8)


def test_inspect_exports_hugging_face_metadata_and_shards(cli, tmp_path):
    """--export writes metadata.jsonl in the imagefolder convention (file_name, label, soft
    label); --export-format npz writes ddcli's shard format, which reads back as a dataset."""
    import json

    from test_bundle import make_bundle

    from ddcli.bundle import save_bundle
    from ddcli.data import load_dataset

    b = make_bundle()
    b.soft_labels = torch.softmax(torch.randn(b.labels.shape[0], 3), 1)
    path = tmp_path / "soft.safetensors"
    save_bundle(b, path)
    assert cli("inspect", path, "--export", tmp_path / "png").code == 0
    rows = [json.loads(ln) for ln in (tmp_path / "png" / "metadata.jsonl").read_text()
            .splitlines()]
    assert len(rows) == b.labels.shape[0]
    for row in rows:
        assert (tmp_path / "png" / row["file_name"]).is_file()
        assert row["file_name"].split("/")[0].startswith(f"{row['label']}_")
        assert row["class"] == b.classes[row["label"]] and len(row["soft_label"]) == 3
    r = cli("inspect", path, "--export", tmp_path / "npz", "--export-format", "NPZ", "--json")
    assert r.code == 0, r
    ds = load_dataset(tmp_path / "npz")
    assert ds.classes == b.classes and torch.equal(ds.labels, b.labels.long())
    assert ds.images.shape == b.images.shape
    with np.load(tmp_path / "npz" / "train.npz") as z:
        assert np.allclose(z["soft_labels"], b.soft_labels.numpy(), atol=1e-6)
    # the exported folder is ddcli's: --force may replace it
    assert cli("inspect", path, "--export", tmp_path / "npz", "--export-format", "npz",
               "--force").code == 0


def test_inspect_verify_and_tampering(cli, bundle_file):
    assert cli("inspect", bundle_file, "--verify").code == 0
    raw = bytearray(bundle_file.read_bytes())
    raw[-3] ^= 0xFF
    bundle_file.write_bytes(bytes(raw))
    r = cli("inspect", bundle_file, "--verify")
    assert_one_line_error(r, 1, "checksum mismatch")
    assert "warning" not in r.stderr and r.stdout == ""
    r = cli("inspect", bundle_file)  # shows it, with the warning
    assert r.code == 0 and "MISMATCH" in r.stdout and "warning" in r.stderr
    r = cli("evaluate", bundle_file, "--test", bundle_file.parent)
    assert_one_line_error(r, 2, "checksum mismatch")


@pytest.mark.parametrize("content, fragment", [
    (b"", "not a ddcli bundle"),
    (b"garbage" * 20, "not a ddcli bundle"),
])
def test_inspect_bad_files(cli, tmp_path, content, fragment):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    assert_one_line_error(cli("inspect", p), 2, fragment)
    assert_one_line_error(cli("inspect", tmp_path / "missing.safetensors"), 2, "not found")


def test_bad_device_is_one_line(cli, shards, tmp_path):
    r = cli("distill", shards, "--device", "tpu", "-o", tmp_path / "x.safetensors")
    assert_one_line_error(r, 2, "bad device")
    if not torch.cuda.is_available():
        r = cli("distill", shards, "--device", "cuda:0", "-o", tmp_path / "x.safetensors")
        assert_one_line_error(r, 2, "not available")
    assert not (tmp_path / "x.safetensors").exists()


def test_distill_data_errors_leave_no_output(cli, tmp_path, image_folder):
    out = tmp_path / "o.safetensors"
    assert_one_line_error(cli("distill", tmp_path / "nowhere", "-o", out), 2, "not found")
    (image_folder / "cat" / "bad.png").write_bytes(b"nope")
    assert_one_line_error(cli("distill", image_folder, "-o", out), 2, "bad.png")
    assert_one_line_error(cli("distill", image_folder, "--ipc", "0", "-o", out), 2, "--ipc")
    assert_one_line_error(cli("distill", image_folder, "--method", "magic", "-o", out), 2,
                          "--method", "'magic' is not one of", "'dm'")
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_config_file_supplies_options_and_flags_win(cli, shards, tmp_path):
    cfg = tmp_path / "recipe.toml"
    cfg.write_text('ipc = 3\n[distill]\niterations = 2\nbatch-real = 4\nwidth = 8\n'
                   'checkpoint_every = 0\n')
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--config", cfg, "--ipc", "2", "-o", out, "--json",
            "--device", "cpu")
    assert r.code == 0, r
    conf = r.json()["config"]
    assert conf["ipc"] == 2 and conf["iterations"] == 2 and conf["batch_real"] == 4
    cfg.write_text("[distill]\ncolour = 'red'\n")
    assert_one_line_error(cli("distill", shards, "--config", cfg), 2, "unknown option 'colour'",
                          "[distill]", str(cfg))
    assert_one_line_error(cli("distill", shards, "--config", tmp_path / "none.toml"), 2,
                          "not found")
    cfg.write_text("ipc = [\n")
    assert_one_line_error(cli("distill", shards, "--config", cfg), 2, "cannot read")


def test_config_rules_shared_keys_sections_and_types(cli, shards, tmp_path, bundle_file):
    cfg = tmp_path / "recipe.toml"
    # the README's recipe: a top-level key a command does not take is ignored for it
    cfg.write_text("seed = 1\nipc = 2\n[distill]\nmethod = 'dm'\n[experts]\nnum-experts = 0\n")
    r = cli("experts", shards, "--config", cfg, "--device", "cpu")
    assert_one_line_error(r, 2, "--num-experts must be >= 1")  # [experts] applied
    r = cli("inspect", bundle_file, "--config", cfg, "--json")  # inspect takes --config too
    assert r.code == 0, r
    cfg.write_text("seed = 1\n[distil]\nipc = 2\n")
    assert_one_line_error(cli("distill", shards, "--config", cfg), 2, str(cfg),
                          "unknown section [distil]", "distill")
    cfg.write_text("[distill]\nipc = 'ten'\n")
    assert_one_line_error(cli("distill", shards, "--config", cfg), 2, str(cfg), 'ipc = "ten"')
    # a TOML value of another type was converted: "2" ran a whole distillation at IPC 2, true
    # and [0] became 1 and 0 (as the Python API refuses them)
    for value, wants in (("'2'", "an integer"), ("true", "an integer"), ("[0]", "an integer"),
                         ("2.0", "an integer")):
        cfg.write_text(f"[distill]\nipc = {value}\n")
        assert_one_line_error(cli("distill", shards, "--config", cfg), 2, str(cfg), wants)
    for text, wants in (("lr = '0.1'", "a number"), ("json = 'yes'", "true or false"),
                        ("lr = false", "a number")):
        cfg.write_text(f"[distill]\n{text}\n")
        assert_one_line_error(cli("distill", shards, "--config", cfg), 2, str(cfg), wants)
    cfg.write_text("[evaluate]\nmodels = '3'\n")
    assert_one_line_error(cli("evaluate", bundle_file, "--config", cfg), 2, "an integer")
    # numbers where a number is taken, a list for a text option that is a list
    cfg.write_text("[distill]\nlr = 1\nipc = 1\niterations = 1\nbatch-real = 2\n"
                   "width = 8\n")
    assert cli("distill", shards, "--config", cfg, "-o", tmp_path / "c.safetensors",
               "--device", "cpu", "-q").code == 0
    # the sections named are those of commands that take --config
    cfg.write_text("[distil]\nipc = 2\n")
    named = cli("distill", shards, "--config", cfg).stderr.split("command names:")[1].split(",")
    assert {n.strip() for n in named} == {"distill", "evaluate", "experts", "inspect", "prior",
                                          "relabel"}
    cfg.write_text("[distill]\nipc = 1979-05-27\n")  # a TOML date: an internal error
    assert_one_line_error(cli("distill", shards, "--config", cfg), 2, "ipc = \"1979-05-27\"")
    cfg.write_text("ipc = 'ten'\n")  # top-level: checked where it applies
    assert_one_line_error(cli("distill", shards, "--config", cfg), 2, str(cfg), "ipc")
    assert cli("inspect", bundle_file, "--config", cfg).code == 0


def test_config_keys_are_the_option_names_as_typed(cli, bundle_file, tmp_path):
    # keys matched the Python parameter names only: "json" was unknown in [inspect] (its
    # parameter is json_out, which was accepted), a top-level "json" silently ignored
    cfg = tmp_path / "recipe.toml"
    for text in ("[inspect]\njson = true\n", "json = true\n", "[inspect]\njson_out = true\n"):
        cfg.write_text(text)
        r = cli("inspect", bundle_file, "--config", cfg)
        assert r.code == 0 and r.json()["checksum_ok"], (text, r)
    cfg.write_text("[relabel]\ntrain-teacher = ['convnet']\nnum-teachers = 0\n")
    assert_one_line_error(cli("relabel", bundle_file, "--config", cfg), 2, "--num-teachers")


def test_choices_are_validated_listed_and_case_insensitive(cli, shards, tmp_path, bundle_file):
    help_text = cli("distill", "--help").stdout
    for panel in ("Method", "DM family", "CSDM / SDM", "TGDD", "SFM / LGM", "otgen", "Data"):
        assert f"─ {panel}" in help_text, panel
    assert "real|noise" in help_text and "gaussian|laplacian" in help_text
    for args, flag in ((["--init", "zeros"], "--init"), (["--kernel", "box"], "--kernel"),
                       (["--amp", "fp8"], "--amp"), (["--dtype", "int8"], "--dtype")):
        assert_one_line_error(cli("distill", shards, *args, "-o", tmp_path / "x.st"), 2, flag,
                              "is not one of")
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "-m", "DM", "--init", "Noise", "--ipc", "1", "--iterations", "1",
            "--batch-real", "2", "--width", "8", "-o", out, "--device", "cpu", "--json")
    assert r.code == 0 and r.json()["method"] == "dm" and r.json()["config"]["init"] == "noise"
    assert_one_line_error(cli("evaluate", bundle_file, "-p", "nope"), 2, "--protocol")
    assert_one_line_error(cli("evaluate", bundle_file, "--baseline", "best"), 2, "--baseline")
    assert_one_line_error(cli("relabel", bundle_file, "--calibrate", "x"), 2, "--calibrate")


def test_one_spelling_per_option_across_commands(cli):
    def options(cmd):
        return set(cli(cmd, "--help").stdout.replace("│", " ").split())

    distill, experts, prior = options("distill"), options("experts"), options("prior")
    for opt in ("--num-experts", "--expert-epochs", "--model", "--width"):
        assert opt in distill and opt in experts, opt
    for opt in ("--prior-steps", "--prior-batch", "--prior-channels", "--prior-ema",
                "--no-prior-ema"):
        assert opt in distill and opt in prior, opt
    data_opts = ("--train-files", "--image-size", "--channels", "--skip-bad", "--max-per-class",
                 "--imbalance-factor", "--out", "--force", "--device", "--config")
    for opt in data_opts:
        assert opt in distill and opt in experts and opt in prior, opt
    assert "--num" not in experts and "--epochs" not in experts and "--steps" not in prior


def test_json_goes_to_stdout_and_messages_to_stderr(cli, shards, tmp_path):
    out = tmp_path / "o.safetensors"
    r = cli("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "4",
            "--width", "8", "-o", out, "--json", "--device", "cpu")
    assert r.code == 0, r
    data = json.loads(r.stdout)
    assert data["bundle"] == str(out) and data["stats"]["iterations"] == 2
    r = cli("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "4",
            "--width", "8", "-o", out, "--device", "cpu")
    assert_one_line_error(r, 2, "already exists")
    r = cli("distill", shards, "--ipc", "1", "--iterations", "2", "--batch-real", "4",
            "--width", "8", "-o", out, "--device", "cpu", "--force", "--quiet")
    assert r.code == 0 and r.stdout == "" and r.stderr == "", r


def test_preview_fits_the_terminal_width():
    from ddcli.viz import terminal_preview

    labels = torch.arange(3).repeat_interleave(8)
    text = terminal_preview(torch.rand(24, 3, 16, 16), labels, ["a", "bb", "c"], width=60)
    assert max(len(line) for line in text.plain.splitlines()) <= 60


def test_distill_options_are_generated_from_the_method_configs(cli, shards, tmp_path):
    """Every command-line field of every method config is a distill option, in the panel of the
    methods that take it, with each method's default (and sample preset) in its help: the
    config is the one place where a name, default and help are written."""
    import dataclasses

    import typer.main

    from ddcli.cli import app
    from ddcli.cli.method_options import method_options, parameters
    from ddcli.configs import CONFIGS, TGDDConfig

    command = typer.main.get_command(app).commands["distill"]
    flags = {o for p in command.params for o in p.opts}
    fields = {f.name for cfg in CONFIGS.values() for f in dataclasses.fields(cfg)
              if f.name not in cfg.internal}
    assert {"--" + n.replace("_", "-") for n in fields} <= flags
    assert "--dsa-strategy" not in flags  # recorded, not offered
    opts = {o.name: o for o in method_options()}
    assert opts["iterations"].panel == "Method" and opts["kernel"].panel == "CSDM / SDM"
    assert opts["window"].panel == "TGDD" and opts["ot_scale"].panel == "otgen"
    assert opts["flow_denominator"].help.startswith("sfm: ")
    assert f"tgdd {TGDDConfig.iterations}" in opts["iterations"].help
    assert "built-in sample: dm/csdm/sdm 150, tgdd 50" in opts["iterations"].help
    assert "Default: dm/csdm/sdm 256, tgdd 128" in opts["batch_real"].help
    assert opts["kernel"].choices == CONFIGS["csdm"].choices["kernel"]
    with pytest.raises(TypeError, match="clashes"):
        parameters({"ipc"})
    # an option that had no flag before the configs generated them reaches the bundle
    out = tmp_path / "m.safetensors"
    r = cli("distill", shards, "--momentum", "0.25", "--ipc", "1", "--iterations", "1",
            "--batch-real", "2", "--width", "8", "-o", out, "--device", "cpu", "--json")
    assert r.code == 0, r
    assert r.json()["config"]["momentum"] == 0.25
    assert_one_line_error(cli("distill", shards, "--momentum", "1.5", "-o", tmp_path / "y.st"),
                          2, "--momentum")
    assert_one_line_error(cli("distill", shards, "--window-end", "0.5", "-o",
                              tmp_path / "z.st"), 2, "--window-end", "does not apply")


def test_readme_lists_the_generated_distill_options():
    """The README's method-option table is markdown_table() verbatim (regenerate it when a
    config changes: the command is in the function's docstring)."""
    from pathlib import Path

    from ddcli.cli.method_options import markdown_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("<!-- method-options:")
    body = readme[readme.index("\n", start) + 1:readme.index("<!-- /method-options -->")]
    assert body.rstrip("\n") == markdown_table()


def test_method_option_edge_cases_found_by_an_exploration(cli, shards, tmp_path, monkeypatch):
    # each was an internal error (exit 1), a late failure, or accepted silently
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "o.safetensors"
    common = (shards, "--ipc", "1", "-o", out, "--device", "cpu", "--force")
    base = (*common, "--iterations", "1", "--batch-real", "2")
    for args, msg in (((*base, "-m", "tgdd", "--factor", "0"), "--factor must be >= 1"),
                      ((*common, "-m", "otgen", "--sampling-steps", "1001"), "at most 1000"),
                      ((*base, "-m", "csdm", "--sigma", "inf"), "--sigma must be a finite"),
                      ((*common, "-m", "sfm", "--backward-chunk", "\u00b2"), "--backward-chunk"),
                      ((*common, "-m", "otgen", "--surrogate-epochs", "-5"), "--surrogate-epochs"),
                      ((*base, "--relabel", "--relabel-teacher", "foo"), "--relabel-teacher 'foo'"),
                      ((*base, "--relabel", "--factor", "2"), "multi-formation")):
        assert_one_line_error(cli("distill", *args), 2, msg)
    for m in ("dm", "tgdd"):  # ResNet-18 took the ConvNets' --width: a TypeError
        r = cli("distill", *base, "-m", m, "--model", "resnet18", "--num-experts", "1",
                "--expert-epochs", "1") if m == "tgdd" else \
            cli("distill", *base, "-m", m, "--model", "resnet18")
        assert r.code == 0, (m, r)
    assert_one_line_error(cli("cache", "clear", ""), 2, "argument 3 (after 'clear') is empty")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "file"))
    r = cli("distill", *base, "-m", "tgdd", "--num-experts", "1", "--expert-epochs", "1")
    assert_one_line_error(r, 2, "is not a folder")
    cfg = tmp_path / "c.toml"  # a TOML array for a tuple option
    cfg.write_text("[distill]\nprior-channels = [8, 16]\n")
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    r = cli("distill", *common, "-m", "otgen", "--config", cfg, "--prior-steps", "1",
            "--sampling-steps", "2", "--real-per-class", "2", "--json")
    assert r.code == 0 and r.json()["config"]["prior_channels"] == [8, 16], r


def test_output_folder_names_zero_scale_and_failed_allocations(cli, shards, tmp_path, monkeypatch):
    # `-o runs/` wrote a file named `runs`; `-m csdm --scale 0` froze the images and a
    # negative scale pushed them away from the real set; an allocation that failed was an
    # "internal error" asking for a traceback
    import ddcli.methods.dm as dm_module

    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    base = (shards, "--ipc", "1", "--device", "cpu", "--iterations", "1", "--batch-real", "2")
    for cmd, args in (("distill", base), ("evaluate", (tmp_path / "b.safetensors",)),
                      ("relabel", (tmp_path / "b.safetensors",))):
        r = cli(cmd, *args, "-o", f"{tmp_path}/runs/")
        assert_one_line_error(r, 2, "runs/ names a folder; give a file name")
        assert not (tmp_path / "runs").exists()
        with monkeypatch.context() as m:  # `-o -` wrote a file named "-"
            m.chdir(tmp_path)
            assert_one_line_error(cli(cmd, *args, "-o", "-"), 2, "- is not a file")
            assert not (tmp_path / "-").exists()
    out = tmp_path / "o.safetensors"
    r = cli("distill", *base, "--model", "resnet18", "--width", "8", "-o", out)
    assert_one_line_error(r, 2, "--width does not apply to --model resnet18")
    r = cli("distill", *base, "--model", "resnet18", "-o", tmp_path / "r.safetensors", "--json")
    assert r.code == 0 and r.json()["config"]["width"] is None, r
    for scale in ("0", "-1"):
        assert_one_line_error(cli("distill", *base, "-m", "csdm", "--scale", scale, "-o", out),
                              2, "--scale must be > 0")

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 1440000000000 bytes.")

    monkeypatch.setattr(dm_module.DM, "step", no_memory)
    r = cli("distill", *base, "-o", out)
    assert_one_line_error(r, 1, "out of memory (1341.1 GiB asked for at once): lower the run's")
    assert "internal error" not in r.stderr and not out.exists()
    # the sizes named are the command's own (relabel's --views was never named)
    assert "--batch-real" in r.stderr and "--views" not in r.stderr
    import typer

    from ddcli.cli import app
    group = typer.main.get_command(app)
    sizes = group._size_options(["relabel", "b.safetensors", "--views", "9"])
    assert sizes == "--views, " and "--views" in group._size_options(["--version"])
    assert "--models" in group._size_options(["evaluate", "b"])


def test_api_refuses_an_output_that_names_a_folder(shards, tmp_path):
    import ddcli

    with pytest.raises(InputError, match="names a folder"):
        ddcli.distill(shards, out=f"{tmp_path}/runs/", ipc=1, iterations=1, device="cpu")
    assert not (tmp_path / "runs").exists()


def test_skip_bad_reaches_evaluates_real_and_test_data_and_relabels_data(cli, tmp_path):
    """After `distill --skip-bad`, the same folder could not serve as `evaluate --real` or
    `relabel --data` (no --skip-bad there: every run ended on the bad file)."""
    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "d", n=6)
    (data / "cat" / "broken.png").write_bytes(b"not a png")
    test = write_image_folder(tmp_path / "t", n=2)
    b = tmp_path / "b.safetensors"
    assert cli("distill", data, "--skip-bad", "--ipc", "1", "--iterations", "1",
               "--batch-real", "2", "--width", "8", "-o", b, "--device", "cpu").code == 0
    args = ("evaluate", b, "--test", test, "--baseline", "random", "--real", data,
            "--epochs", "1", "--models", "1", "--device", "cpu")
    assert_one_line_error(cli(*args), 2, "broken.png", "--skip-bad")
    r = cli(*args, "--skip-bad")
    assert r.code == 0 and "skipped 1" in r.stderr, r.stderr
    args = ("relabel", b, "--train-teacher", "convnet", "--data", data, "--teacher-epochs",
            "1", "-o", tmp_path / "r.safetensors", "--device", "cpu")
    assert_one_line_error(cli(*args), 2, "broken.png", "--skip-bad")
    r = cli(*args, "--skip-bad")
    assert r.code == 0 and "skipped 1" in r.stderr, r.stderr
