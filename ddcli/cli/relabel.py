"""``ddcli relabel BUNDLE``: soft labels from teachers (the roadmap's next step)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddcli.cli.common import NOT_IMPLEMENTED
from ddcli.errors import InputError


def relabel(
    bundle: Annotated[Path, typer.Argument(help="Bundle file.", show_default=False)],
) -> None:
    """Add or replace soft labels from teacher models (not implemented yet).

    Example: [bold]ddcli relabel dm.safetensors --teacher t.safetensors -o dm-soft.safetensors[/]
    """
    raise InputError(NOT_IMPLEMENTED)
