"""``inspect --preview`` draws only on a terminal, with gaps and a count; the summary never
wraps mid-word (a terminal's width) and keeps each row on one line in a log."""

from __future__ import annotations

import re

import pytest
import torch
from rich.console import Console
from test_bundle import make_bundle

from ddcli.bundle import save_bundle
from ddcli.viz import terminal_preview

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def long_bundle(tmp_path):
    folder = tmp_path / ("a-folder-with-a-rather-long-name-" * 3)
    folder.mkdir()
    path = folder / "bundle-with-a-long-name.safetensors"
    save_bundle(make_bundle(), path)
    return path


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setenv("COLUMNS", "70")


def test_preview_off_a_terminal_is_one_line_and_rows_stay_whole(cli, long_bundle):
    r = cli("inspect", long_bundle, "--preview")
    assert r.code == 0, r
    assert "▀" not in r.stdout
    assert r.stdout.count("preview: stdout is not a terminal; use --grid FILE.png") == 1
    lines = r.stdout.splitlines()
    assert any(ln.startswith("bundle") and ln.endswith(str(long_bundle)) for ln in lines), r
    created = [ln for ln in lines if ln.startswith("created")]
    assert len(created) == 1 and "with ddcli" in created[0] and " on " in created[0]


def test_preview_on_a_terminal_draws_tiles_with_gaps_and_says_how_many(cli, long_bundle,
                                                                        terminal):
    r = cli("inspect", long_bundle, "--preview")
    assert r.code == 0, r
    out = ANSI.sub("", r.stdout)
    assert "▀" in out and "not a terminal" not in out
    assert "preview: 2 of 2 images per class (3 classes)" in out
    assert any(re.search("▀ +▀", ln) for ln in out.splitlines())  # a gap between tiles
    assert max(len(ln) for ln in out.splitlines()) <= 70
    # the summary wraps at spaces: every word of a value is whole on some line
    words = set(out.split())
    for w in ("with", "ddcli", "torch"):
        assert w in words, out
    # the long path folds (it is one word longer than the line) but loses nothing
    assert str(long_bundle) in "".join(ln.strip() for ln in out.splitlines()), out


def test_terminal_preview_shows_a_count_and_fits_a_narrow_terminal():
    labels = torch.tensor([0] * 10 + [1] * 12)
    text = terminal_preview(torch.rand(22, 3, 16, 16), labels, ["a", "b"], width=20)
    lines = text.plain.splitlines()
    assert lines[0] == "preview: 6 of 10-12 images per class (2 classes)"
    assert max(len(ln) for ln in lines[1:]) <= 20
    assert "" in lines[1:]  # a blank line between the classes
    assert all(t == "▀▀" for t in lines[1].split()[1:])  # tiles of 2 cells, 1 apart
