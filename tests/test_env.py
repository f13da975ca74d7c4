"""``ddcli env`` and ``ddcli cache list|clear``."""

import os
from pathlib import Path

from conftest import assert_one_line_error

from ddcli import __version__


def _fill(cache: Path) -> None:
    (cache / "teachers").mkdir(parents=True)
    (cache / "teachers" / "convnet-abc.safetensors").write_bytes(b"x" * 100)
    (cache / "priors" / "p1").mkdir(parents=True)
    (cache / "priors" / "p1" / "unet.bin").write_bytes(b"y" * 50)
    (cache / "notes.txt").write_text("mine")  # not a cache: never touched


def test_env_json_has_versions_devices_and_caches(cli):
    r = cli("env", "--json")
    assert r.code == 0, r
    e = r.json()
    assert e["ddcli"] == __version__ and e["packages"]["torch"]
    assert e["devices"][0]["device"] == "cpu"
    assert e["cache_dir"] == os.environ["DDCLI_CACHE"] and e["cache_problem"] is None
    assert [c["name"] for c in e["caches"]] == ["teachers", "experts", "priors", "features",
                                               "data"]
    r = cli("env")
    assert r.code == 0 and "torch" in r.stdout and "cache" in r.stdout, r


def test_cache_list_and_clear(cli):
    cache = Path(os.environ["DDCLI_CACHE"])
    _fill(cache)
    r = cli("cache", "list", "--json")
    assert r.code == 0, r
    sizes = {c["name"]: (c["entries"], c["bytes"]) for c in r.json()["caches"]}
    assert sizes["teachers"] == (1, 100) and sizes["priors"] == (1, 50)
    assert sizes["experts"] == (0, 0)
    r = cli("cache", "clear", "teachers")
    assert r.code == 0 and "cleared teachers: 1 entries, 100 B" in r.stdout, r
    assert not (cache / "teachers").exists() and (cache / "priors").exists()
    r = cli("cache", "clear", "--json")
    assert r.code == 0 and {x["name"] for x in r.json()["removed"]} >= {"priors"}, r
    assert not (cache / "priors").exists() and (cache / "notes.txt").exists()
    assert_one_line_error(cli("cache", "clear", "models"), 2, "unknown cache 'models'")


def test_shell_completion_is_offered(cli):
    r = cli("--help")
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout


def test_env_reports_a_cache_it_cannot_use(cli, tmp_path, monkeypatch):
    """`env` is the bug-report command: with $DDCLI_CACHE a file it failed (exit 2) instead of
    reporting that, with the rest of the environment."""
    bad = tmp_path / "cachefile"
    bad.write_text("x")
    monkeypatch.setenv("DDCLI_CACHE", str(bad))
    r = cli("env", "--json")
    assert r.code == 0, r
    e = r.json()
    assert e["caches"] == [] and "is not a folder" in e["cache_problem"] and e["packages"]
    r = cli("env")
    assert r.code == 0 and "is not a folder" in r.stdout, r
