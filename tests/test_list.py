"""``ddcli list``: what exists, from the registries, with defaults and presets."""

from conftest import assert_one_line_error

from ddcli.methods import get_method, list_methods
from ddcli.models import list_models
from ddcli.protocols import list_protocols


def test_list_json_matches_the_registries(cli):
    r = cli("list", "--json")
    assert r.code == 0, r
    data = r.json()
    assert set(data) == {"methods", "models", "protocols", "backbones"}
    assert [m["name"] for m in data["methods"]] == list_methods()
    assert [m["name"] for m in data["models"]] == list_models()
    assert [p["name"] for p in data["protocols"]] == list_protocols()
    dm = next(m for m in data["methods"] if m["name"] == "dm")
    assert dm["defaults"]["ipc"] == get_method("dm").Config().ipc == 10
    assert dm["presets"]["sample-cpu"]["iterations"] == 150
    assert "synthetic images per class" in dm["help"]["ipc"]
    tgdd = next(p for p in data["protocols"] if p["name"] == "tgdd")
    assert tgdd["defaults"]["epochs"] == 1500 and "1500 epochs" in tgdd["summary"]
    assert "efficientnet-lite0" in [b["name"] for b in data["backbones"]]


def test_list_one_kind_human_and_errors(cli):
    r = cli("list", "methods")
    assert r.code == 0, r
    assert "sfm" in r.stdout and "preset sample-cpu" in r.stdout and "protocols" not in r.stdout
    r = cli("list", "Protocols", "--json")
    assert r.code == 0 and list(r.json()) == ["protocols"], r
    assert_one_line_error(cli("list", "colours"), 2, "cannot list 'colours'")
