"""The CPU quality suite's machinery (benchmarks/quality_cpu.py) on generated data, so the
script cannot rot; its numbers belong in benchmarks/RESULTS.md, not here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, class_images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality_cpu  # noqa: E402
from common import run_main  # noqa: E402


def fake_cifar(root: Path) -> Path:
    d = root / "cifar10"
    d.mkdir(parents=True)
    for i in range(1, 5):
        x, y = class_images(4, size=32, seed=i)
        np.savez_compressed(d / f"train_{i}.npz", images=x, labels=y)
    (d / "classes.json").write_text(json.dumps(CLASSES))
    return root


def test_suite_runs_caches_and_writes_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    root = fake_cifar(tmp_path / "data")
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    argv = ["--data-root", str(root), "--smoke", "--rows", "dm", "--workdir",
            str(tmp_path / "work"), "--out", str(out)]
    quality_cpu.main(argv)
    text = out.read_text()
    assert quality_cpu.HEADING in text and "## Other\n\nkept" in text
    assert "| dm-sample |" in text and "| dm-cifar |" in text
    cached = sorted((tmp_path / "work" / "rows").glob("*.json"))
    assert len(cached) == 2
    row = json.loads(cached[0].read_text())
    assert row["eval"]["models"] == 2 and row["distill"]["peak_rss_mb"] > 0
    # a rerun redoes nothing and replaces the section instead of appending a second one
    stamps = [p.stat().st_mtime_ns for p in cached]
    quality_cpu.main(argv)
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert out.read_text().count(quality_cpu.HEADING) == 1


def test_suite_otgen_rows_compare_guided_with_unguided(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "RESULTS.md"
    quality_cpu.main(["--data-root", str(tmp_path), "--smoke", "--rows", "otgen", "--workdir",
                      str(tmp_path / "work"), "--out", str(out)])
    text = out.read_text()
    guided = next(ln for ln in text.splitlines() if ln.startswith("| otgen |"))
    unguided = next(ln for ln in text.splitlines() if ln.startswith("| otgen-noot |"))
    assert "vs unguided" in guided and "ot_scale default" in guided
    assert "ot_scale 0" in unguided
    rows = {json.loads(p.read_text())["spec"]["ot_scale"]
            for p in (tmp_path / "work" / "rows").glob("*.json")}
    assert rows == {"default", "0"}


def _row(mean: float, baseline: float | None = None, row_s: float = 60.0) -> dict:
    e = {"protocol": "dm", "epochs": 300, "models": 3,
         "acc": {"mean": mean, "std": 0.5, "per_model": [mean] * 3}, "groups": {}}
    if baseline is not None:
        e["baseline"] = {"mean": baseline, "std": 0.4, "per_model": [baseline] * 3}
    return {"spec": {"data": "cifar10"}, "distill": {"wall_s": 1.0, "peak_rss_mb": 10.0},
            "eval": e, "row_s": row_s}


def test_table_takes_shared_baselines_and_reports_the_suite_time(tmp_path):
    """Random real under one judge is evaluated once: the rows without their own baseline take
    it from the row named in BASELINE_OF (a missing link would print a dash and no verdict)."""
    s = quality_cpu.Suite(tmp_path, tmp_path, smoke=False, models=3)
    s.rows = {"dm-cifar": _row(44.0, 32.0), "tgdd": _row(45.0),
              "dm-cifar@tgdd-judge": _row(40.0, 30.0), "tgdd@tgdd-judge": _row(42.0),
              "sfm-ipc1": _row(50.0, 43.0), "lgm-ipc1": _row(47.0),
              "sfm-ipc1+inherit": _row(62.0, 68.0), "lgm-ipc1+inherit": _row(60.0)}
    s.ran = ["tgdd"]
    lines = quality_cpu.table(s, elapsed_s=120.0)
    row = {ln.split("|")[1].strip(): ln.split("|") for ln in lines if ln.startswith("| ")}
    assert row["tgdd"][4].strip() == "32.00 ± 0.40" and row["tgdd"][5].strip() == "+13.00"
    assert row["tgdd@tgdd-judge"][4].strip() == "30.00 ± 0.40"
    # against DM under the same judge, model by model
    assert row["tgdd@tgdd-judge"][7].strip() == "+2.00 (paired ± 0.00, 3/3 ahead)"
    assert row["lgm-ipc1"][4].strip() == "43.00 ± 0.40"
    assert row["lgm-ipc1+inherit"][6].strip() == "NO"
    assert "8 min for all rows" in lines[2]
    assert "2 min, 1 rows run, 7 from the row cache" in lines[2]


def test_default_rows_leave_out_backbone10(tmp_path, monkeypatch):
    """The default run must fit the issue's 90 minutes: IPC 10's backbone group (~58 minutes
    on the 2-core CPU) and the long-tail group at 256 real images a step run only when named,
    every other group runs by default."""
    ran: list[str] = []
    monkeypatch.setattr(quality_cpu, "ROWS", {k: (lambda s, k=k: ran.append(k))
                                              for k in quality_cpu.ROWS})
    monkeypatch.setattr(quality_cpu, "table", lambda s, t: [])
    monkeypatch.setattr(quality_cpu, "write_section", lambda path, lines: None)
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "train_1.npz").touch()
    quality_cpu.main(["--data-root", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert not {"backbone10", "sfm10-it1000", "lt256", "lt200", "lt200-it2000"} & set(ran)
    assert {"dm", "lt", "backbone1", "otgen"} <= set(ran)
    ran.clear()
    quality_cpu.main(["--data-root", str(tmp_path), "--workdir", str(tmp_path / "w"),
                      "--rows", "backbone10"])
    assert ran == ["backbone10"]


def test_versus_pairs_the_models_only_when_both_rows_have_them():
    """The paired spread is that of the per-model differences, not of either row: rows whose
    models move together (the same init) differ with a small spread although each row's own
    std is large; one model behind is counted."""
    a = {"mean": 44.0, "std": 1.0, "per_model": [45.0, 43.0, 44.0]}
    b = {"mean": 43.2, "std": 1.0, "per_model": [44.0, 42.0, 43.6]}
    assert quality_cpu.versus(a, b) == "+0.80 (paired ± 0.28, 3/3 ahead)"
    c = {"mean": 43.5, "std": 1.0, "per_model": [44.5, 43.5, 42.5]}
    assert quality_cpu.versus(a, c) == "+0.50 (paired ± 0.82, 2/3 ahead)"
    assert quality_cpu.versus(a, {"mean": 43.0, "std": 1.0, "per_model": [43.0]}) == "+1.00"


def test_lt_groups_have_their_own_names_specs_and_dm_comparison(tmp_path):
    """The long-tail rows at 256 a step and at imbalance 200 must neither collide with the
    default rows' names (the bundles and table rows would overwrite each other) nor be compared
    with the DM of another batch or imbalance."""
    s = quality_cpu.Suite(tmp_path, tmp_path / "w", smoke=False, models=3)
    seen: dict[str, dict] = {}
    s.row = lambda name, spec, body: seen.setdefault(name, spec)
    for group in ("lt", "lt256", "lt200", "lt200-it2000"):
        quality_cpu.ROWS[group](s)
    ms = ("dm", "csdm", "sdm")
    assert set(seen) == {f"lt{f}-{m}{b}" for m in ms
                         for f, b in (("50", ""), ("50", "-br256"), ("200", ""),
                                      ("200", "-it2000"))}
    for name, batch, imbalance, iterations in (
            ("lt50-{}", 64, 50, 300), ("lt50-{}-br256", 256, 50, 300),
            ("lt200-{}", 64, 200, 300), ("lt200-{}-it2000", 64, 200, 2000)):
        assert {seen[name.format(m)]["batch_real"] for m in ms} == {batch}
        assert {seen[name.format(m)]["imbalance_factor"] for m in ms} == {imbalance}
        assert {seen[name.format(m)]["iterations"] for m in ms} == {iterations}
        for m in ("csdm", "sdm"):
            assert quality_cpu.VERSUS_DM[name.format(m)] == name.format("dm")
            assert quality_cpu.BASELINE_OF[name.format(m)] == name.format("dm")


def test_backbone_rows_at_other_iterations_have_their_own_names_and_comparison(tmp_path,
                                                                                monkeypatch):
    """SFM at IPC 10 and 1,000 iterations must not overwrite the 200-iteration rows (names,
    bundles), must carry its iterations and pyramid in its spec, must bring its own random
    real baseline under each judge and be compared with the 200-iteration row."""
    s = quality_cpu.Suite(tmp_path, tmp_path / "w", smoke=False, models=3)
    seen: dict[str, dict] = {}
    s.row = lambda name, spec, body: seen.setdefault(name, spec)
    s.data = lambda name: ([], [], [], [])
    monkeypatch.setattr(quality_cpu, "probe_test", lambda s, n: tmp_path)
    quality_cpu.ROWS["sfm10-it1000"](s)
    assert set(seen) == {"sfm-ipc10-it1000-distill", "sfm-ipc10-it1000",
                         "sfm-ipc10-it1000+inherit"}
    assert seen["sfm-ipc10-it1000"]["iterations"] == 1000
    assert seen["sfm-ipc10-it1000"]["pyramid_every"] == 150
    seen.clear()
    quality_cpu.ROWS["backbone10"](s)
    assert {"sfm-ipc10", "lgm-ipc10", "centroids-ipc10"} <= set(seen)
    assert seen["sfm-ipc10"]["iterations"] == 200
    for a in ("sfm", "lgm"):
        for m in ("", "+inherit"):
            assert quality_cpu.VERSUS_OTHER[f"{a}-ipc10-it1000{m}"][0] == f"{a}-ipc10{m}"
            assert f"{a}-ipc10-it1000{m}" not in quality_cpu.BASELINE_OF


def test_a_backbone_group_without_sfm_brings_its_own_random_real(tmp_path, monkeypatch):
    """LGM at IPC 10 and 1,000 iterations runs without SFM's rows, whose random real baseline
    the 200-iteration LGM rows borrow (BASELINE_OF): it must evaluate its own, under both
    judges, at LGM's own scale."""
    s = quality_cpu.Suite(tmp_path, tmp_path / "w", smoke=False, models=3)
    calls: list[tuple[str, ...]] = []
    s.row = lambda name, spec, body: body(spec) if not name.endswith("-distill") else {
        "bundle": "b.safetensors", "distill": {}}
    s.data = lambda name: ([], [], ["--random-data", "R"], [])
    monkeypatch.setattr(quality_cpu, "probe_test", lambda s, n: tmp_path)
    monkeypatch.setattr(quality_cpu, "run", lambda *a: calls.append(a) or {})
    monkeypatch.setattr(quality_cpu, "_eval_summary", lambda e: e)
    quality_cpu.ROWS["lgm10-it1000"](s)
    evals = [c for c in calls if c[0] == "evaluate"]
    assert len(evals) == 2 and all("--baseline" in c for c in evals)
    assert {("--inherit" in c) for c in evals} == {True, False}
    assert "lgm10-it1000" in quality_cpu.OPTIONAL_ROWS


def test_held_out_subset_skips_the_distilled_images_and_keeps_the_first_per_class(tmp_path):
    from common import held_out_subset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    np.savez(tmp_path / "shard.npz", images=images, labels=labels)
    (tmp_path / "classes.json").write_text('["a", "b"]')
    exclude = images[[0, 3]]  # the first image of class 1 and the second of class 0
    out = held_out_subset(tmp_path, "shard.npz", exclude, tmp_path / "val", per_class=2)
    z = np.load(out / "test.npz")
    assert z["labels"].tolist() == [0, 1, 1, 0]  # the shard's order: indices 1, 2, 4, 5
    assert np.array_equal(z["images"], images[[1, 2, 4, 5]])
    out = held_out_subset(tmp_path, "shard.npz", exclude, tmp_path / "val", per_class=2,
                          name="v.npz", by_class=True)
    z = np.load(out / "v.npz")
    assert z["labels"].tolist() == [0, 0, 1, 1]
    assert np.array_equal(z["images"], images[[1, 5, 2, 4]])
    assert (out / "classes.json").read_text() == '["a", "b"]'


def test_section_is_replaced_where_it_stands(tmp_path):
    out = tmp_path / "RESULTS.md"
    h = quality_cpu.HEADING
    out.write_text(f"# Benchmark results\n\n## Before\n\nb\n\n{h}\n\nold table\n\n"
                   f"{h}: notes on the run\n\nkept\n\n## After\n\na\n")
    quality_cpu.write_section(out, [h, "", "new table"])
    assert out.read_text() == (f"# Benchmark results\n\n## Before\n\nb\n\n{h}\n\nnew table\n\n"
                               f"{h}: notes on the run\n\nkept\n\n## After\n\na\n")
    fresh = tmp_path / "fresh.md"
    quality_cpu.write_section(fresh, [h, "", "t"])
    assert fresh.read_text() == f"# Benchmark results\n\n{h}\n\nt\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "fresh.md"]  # no .tmp


def test_suite_without_cifar10_stops_at_once_in_one_line(tmp_path, capsys):
    # the dm rows' first row needs only the built-in sample: without this check the suite ran
    # it (minutes) before failing on cifar10-30k
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as e:
        run_main(quality_cpu.main, ["--data-root", str(tmp_path / "nowhere"), "--rows", "dm",
                                    "--workdir", str(work), "--out", str(tmp_path / "R.md")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no CIFAR-10 shards under") and "\n" not in err
    assert not work.exists() and not (tmp_path / "R.md").exists()


def test_benchmark_scripts_end_a_ddcli_error_in_one_line(tmp_path, capsys):
    from ddcli import api

    with pytest.raises(SystemExit) as e:
        run_main(api.evaluate, tmp_path / "missing.safetensors")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: bundle not found: {tmp_path / 'missing.safetensors'}\n"


def test_evaluate_speed_script_passes_ddcli_error_line_on(tmp_path, capsys):
    """The speed script runs ddcli in a subprocess: a bad bundle ends it as the CLI ends,
    one ``error:`` line and exit 2 (it printed the command and ddcli's stderr, exit 1)."""
    import evaluate_speed_cpu

    root = Path(__file__).resolve().parent.parent
    with pytest.raises(SystemExit) as e:
        evaluate_speed_cpu.evaluate(root, str(tmp_path / "missing.safetensors"), 1, 1, 0)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bundle not found: ") and err.count("\n") == 1, err
