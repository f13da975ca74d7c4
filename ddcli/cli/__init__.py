"""The ``ddcli`` command line: thin Typer commands over the library."""

from __future__ import annotations

from typing import Annotated

import typer

from ddcli import __version__
from ddcli.cli.common import DDCliGroup
from ddcli.cli.distill import distill
from ddcli.cli.env import cache_app, env
from ddcli.cli.evaluate import evaluate
from ddcli.cli.experts import experts
from ddcli.cli.inspect import inspect
from ddcli.cli.list import list_
from ddcli.cli.prior import prior
from ddcli.cli.relabel import relabel
from ddcli.runtime import tune_cpu_allocator

app = typer.Typer(
    cls=DDCliGroup,
    name="ddcli",
    help="Dataset distillation: turn a labelled image dataset into a tiny synthetic one.\n\n"
    "Example: [bold]ddcli distill --ipc 10 -o fmnist.safetensors[/] (built-in sample), then "
    "[bold]ddcli evaluate fmnist.safetensors[/].",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ddcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True,
                     callback=_version),
    ] = False,
) -> None:
    """Dataset distillation from the command line."""


app.command("distill")(distill)
app.command("relabel")(relabel)
app.command("evaluate")(evaluate)
app.command("inspect")(inspect)
app.command("experts")(experts)
app.command("prior")(prior)
app.command("list")(list_)
app.command("env")(env)
app.add_typer(cache_app, name="cache")


def main() -> None:
    tune_cpu_allocator()
    app()
