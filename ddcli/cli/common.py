"""What every command shares: option aliases, consoles, progress, config files, devices, errors."""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors its own click
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer uses click itself
    import click

from ddcli.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, DDCliError, InputError
from ddcli.io import regular_file, to_json  # noqa: F401  (to_json re-exported)
from ddcli.runtime import cache_dir  # noqa: F401  (re-exported for commands)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """Print one error line on stderr (no markup interpretation, no wrapping)."""
    msg = " ".join(str(message).split())
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


class DDCliGroup(TyperGroup):
    """The root group: turns every failure into one line on stderr and a documented exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or "ddcli",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            code = rv if isinstance(rv, int) else 0
            if code == EXIT_INTERRUPTED:  # typer returns a KeyboardInterrupt as the code 130
                error_line("interrupted")
        except typer.Exit as e:
            code = e.exit_code
            if code == EXIT_INTERRUPTED:  # a KeyboardInterrupt, as typer reports it
                error_line("interrupted")
        except click.exceptions.NoArgsIsHelpError:  # plain `ddcli`: the help, printed already
            code = 0
        except typer.Abort:
            error_line("interrupted")
            code = EXIT_INTERRUPTED
        except click.exceptions.ClickException as e:
            hint = ""
            if isinstance(e, click.exceptions.UsageError) and e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            error_line(e.format_message() + hint)
            code = e.exit_code if not isinstance(e, click.exceptions.UsageError) else EXIT_BAD_INPUT
        except DDCliError as e:
            error_line(str(e))
            code = e.exit_code
        except KeyboardInterrupt:
            error_line("interrupted")
            code = EXIT_INTERRUPTED
        except Exception as e:  # a bug: still one line, traceback on request
            if os.environ.get("DDCLI_DEBUG"):
                traceback.print_exc()
            error_line(
                f"internal error: {type(e).__name__}: {e} (set DDCLI_DEBUG=1 for a traceback)"
            )
            code = EXIT_FAILED
        sys.exit(code)


# --------------------------------------------------------------------------------------------
# --config FILE.toml


def _config_callback(ctx: click.Context, param: click.Parameter, value: Path | None):
    """Load a TOML file into the command's defaults: command-line flags still win.

    Keys are option names (``batch-real`` or ``batch_real``) at the top level, shared by every
    command (a key a command does not take is ignored for it), or under a table named after the
    command (``[distill]``), which wins over the top level and whose keys must all be options of
    that command. A table named after no command is an error (a misspelling), and so is a value
    of the wrong type, named with the file and the key.
    """
    if value is None:
        return None
    path = Path(value)
    try:
        regular_file(path, "config file")
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except InputError as e:
        raise click.exceptions.BadParameter(str(e)) from None
    except UnicodeDecodeError:
        raise click.exceptions.BadParameter(f"{path} is not UTF-8 text (a TOML file)") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.exceptions.BadParameter(f"cannot read {path}: {e}") from None
    commands = _command_names(ctx)
    for key, v in data.items():
        if isinstance(v, dict) and key not in commands:
            raise InputError(f"{path}: unknown section [{key}]; sections are command names: "
                             f"{', '.join(sorted(commands))}")
    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    merged = {k.replace("-", "_"): (k, v) for k, v in data.items() if not isinstance(v, dict)}
    merged = {k: kv for k, kv in merged.items() if k in params}  # shared keys: where they apply
    section = data.get(ctx.info_name)
    if isinstance(section, dict):
        for key, v in section.items():
            name = key.replace("-", "_")
            if name not in params:
                raise InputError(f"{path}: unknown option {key!r} in [{ctx.info_name}] (see "
                                 f"'ddcli {ctx.info_name} --help')")
            merged[name] = (key, v)
    defaults: dict[str, Any] = {}
    for name, (key, v) in merged.items():
        p = params[name]
        if p.multiple and not isinstance(v, list):
            v = [v]
        try:
            _coerce(p, ctx, v)
        except click.exceptions.BadParameter as e:
            raise InputError(f"{path}: {key} = {v!r}: {e.message}") from None
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _coerce(param: click.Parameter, ctx: click.Context, value: Any) -> Any:
    """Convert a config value as the option's command-line value would be."""
    if hasattr(param, "get_runtime_param"):  # typer >= 0.20: typer's own coercion
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    return param.type_cast_value(ctx, value)  # pragma: no cover - click's


def _command_names(ctx: click.Context) -> set[str]:
    """The command names of the root group: the config file's section names."""
    return set(getattr(ctx.find_root().command, "commands", {}) or {ctx.info_name})


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file supplying any option of this command (flags given here win).",
        is_eager=True,
        callback=_config_callback,
        show_default=False,
    ),
]
#: seeds are 63-bit: torch generators and :func:`ddcli.seeding.derive_seed` take them
MAX_SEED = 2**63 - 1


def _seed_callback(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise click.exceptions.BadParameter(f"--seed must lie in 0..{MAX_SEED}, got {value}")
    return value


SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in the output).",
                                      callback=_seed_callback)]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto: cuda when available).")
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]


# --------------------------------------------------------------------------------------------
# devices, caches, output


def resolve_device(spec: str) -> str:
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        idx = 0 if spec == "cuda" else spec.split(":", 1)[1]
        try:
            idx = int(idx)
        except ValueError:
            raise InputError(f"bad device {spec!r}: use cpu, cuda or cuda:N") from None
        if idx >= n:
            raise InputError(f"device {spec} is not available (this machine has {n} CUDA devices)")
        return spec
    raise InputError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N")


def command_line() -> str:
    """The command as typed, recorded in provenance."""
    return "ddcli " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def device_label(device: str) -> str:
    """The device as recorded in bundles and reports, with the GPU's name."""
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return "cpu"


def print_json(obj: Any) -> None:
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


class Reporter:
    """Messages and progress on stderr, silenced by --quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = stderr_console()

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        # warnings show even with --quiet: they change how a result should be read; one line
        # each, the message taken literally (a path may hold [brackets])
        self.console.print(f"[yellow]warning:[/] {escape(msg)}", soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None,
                 transient: bool = False) -> Iterator[Any]:
        """Yield ``update(completed, **fields)``; draws a rich bar unless quiet."""
        if self.quiet:
            yield lambda *a, **k: None
            return
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=transient,
        )
        with bar:
            task = bar.add_task(description, total=total, status="")

            def update(completed: int, total: int | None = None, status: str = "") -> None:
                kw = {"total": total} if total is not None else {}
                bar.update(task, completed=completed, status=status, **kw)

            yield update


# --------------------------------------------------------------------------------------------
# data options shared by distill and evaluate

TrainFilesOpt = Annotated[
    str | None, typer.Option("--train-files", help="Glob choosing the training shards.",
                             rich_help_panel="Data")
]
ImageSizeOpt = Annotated[
    str | None, typer.Option("--image-size", help="Resize images to N or HxW (default: the "
                                                  "most common size).", rich_help_panel="Data")
]
ChannelsOpt = Annotated[
    int | None, typer.Option("--channels", help="1 or 3 (default: the majority mode).",
                             rich_help_panel="Data")
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Skip unreadable images with a warning count.",
                       rich_help_panel="Data")
]
MaxPerClassOpt = Annotated[
    int | None, typer.Option("--max-per-class", help="Keep at most N images per class (seeded).",
                             rich_help_panel="Data")
]
ImbalanceOpt = Annotated[
    float | None,
    typer.Option("--imbalance-factor", help="Build the long-tailed subset with this factor: "
                                            "n_c = floor(n_min * IF^(-c/(C-1))).",
                 rich_help_panel="Data")
]


def load_cli_dataset(rep: Reporter, path: Path, split: str, **kw):
    """Load a dataset with a progress bar for image folders; errors become one line."""
    from ddcli.data import check_subset_options, load_dataset, parse_image_size

    if "image_size" in kw and not isinstance(kw["image_size"], tuple):
        kw["image_size"] = parse_image_size(kw["image_size"])
    check_subset_options(kw.get("max_per_class"), kw.get("imbalance_factor"))
    with rep.progress(f"reading {path.name or path}", None, transient=True) as update:
        return load_dataset(
            path, split, progress=lambda done, total: update(done, total=total), warn=rep.warn,
            **kw
        )


def copy_folder(items: list[Path], out: Path, force: bool) -> None:
    """Copy files or folders into the folder ``out`` (built aside, then moved into place)."""
    import shutil

    from ddcli.io import atomic_dir

    with atomic_dir(Path(out), force) as tmp:
        for item in items:
            if item.is_dir():
                shutil.copytree(item, tmp, dirs_exist_ok=True)
            else:
                shutil.copy2(item, tmp / item.name)
