"""benchmarks/scale_data.py's machinery on two tiny generated sets, so the script cannot rot;
its numbers belong in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import scale_data  # noqa: E402


def test_scale_benchmark_reports_memory_and_speed_per_set_size(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    scale_data.main(["--sizes", "100", "300", "--size", "8", "--iterations", "1"])
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(ln) for ln in out if ln.startswith("{")]
    assert [r["images"] for r in rows] == [100, 300]
    assert all(r["peak_rss_mb"] > 0 and r["it_per_s"] for r in rows)
    assert out[-1].startswith("100 -> 300 images: peak RSS ")


def test_scale_benchmark_through_the_data_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))
    scale_data.main(["--sizes", "100", "--size", "8", "--iterations", "1", "--data-cache", "on"])
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert rows[0]["data_cache"] and "build_s" in rows[0] and rows[0]["build_run_peak_rss_mb"]
