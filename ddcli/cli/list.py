"""``ddcli list [KIND]``: the methods, models, protocols and backbones this ddcli has."""

from __future__ import annotations

from typing import Annotated

import typer

from ddcli.cli.common import JsonOpt, print_json, stdout_console
from ddcli.errors import InputError

KINDS = ("methods", "models", "protocols", "backbones")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(_value(x) for x in v)
    return "-" if v is None else str(v)


def _render(data: dict[str, list[dict]]) -> None:
    from rich.markup import escape

    con = stdout_console()
    for kind, items in data.items():
        con.print(f"[bold]{kind}[/]")
        for it in items:
            con.print(f"  [bold cyan]{escape(it['name'])}[/]  {escape(it.get('summary', ''))}")
            if "defaults" in it and kind == "methods":
                con.print("    defaults: " + escape(", ".join(
                    f"{k.replace('_', '-')} {_value(v)}" for k, v in it["defaults"].items())))
                for preset, values in it.get("presets", {}).items():
                    con.print(f"    preset {escape(preset)}: " + escape(", ".join(
                        f"{k.replace('_', '-')} {_value(v)}" for k, v in values.items())))
            elif kind == "protocols":
                con.print(f"    [dim]{escape(it['reference'])}[/]")
            elif kind == "backbones":
                size = it["input_size"]
                con.print(f"    weights: {escape(it['weights'])}"
                          + (f"; input {size[0]}x{size[1]}" if size else ""))
        con.print()


def list_(
    kind: Annotated[
        str | None,
        typer.Argument(help=f"What to list: {' | '.join(KINDS)} (default: all).",
                       show_default=False),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the methods, models, protocols and backbones, with their defaults and presets.

    Example: [bold]ddcli list methods[/]
    """
    from ddcli.listing import listing

    if kind is not None:
        kind = kind.lower()
        if kind not in KINDS:
            raise InputError(f"cannot list {kind!r}; choose from {', '.join(KINDS)}")
    data = listing(kind)
    if json_out:
        print_json(data)
    else:
        _render(data)
