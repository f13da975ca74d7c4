"""What every command shares: option aliases, consoles, progress, config files, devices, errors."""

from __future__ import annotations

import json
import os
import shlex
import sys
import tomllib
import traceback
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors its own click
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer uses click itself
    import click

from ddcli.catalog import CACHE_MODES, MAX_SEED
from ddcli.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    DDCliError,
    InputError,
    Interrupted,
)
from ddcli.io import output_path, regular_file, to_json  # noqa: F401  (to_json re-exported)
from ddcli.reporting import (  # noqa: F401  (re-exported for the commands)
    ESTIMATE_AFTER_S,
    PROGRESS_INTERVAL_S,
    SLOW_CPU_S,
    Reporter,
    device_label,
    format_duration,
    format_rate,
    printable,
    resolve_device,
    stderr_console,
)
from ddcli.reporting import load_dataset_reported as load_cli_dataset  # noqa: F401
from ddcli.runtime import cache_dir  # noqa: F401  (re-exported for commands)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


#: called when the outcome is decided (before the error line): the program's entry point
#: (``ddcli.__main__``) makes Ctrl-C change nothing from there on (arriving while the command
#: wound down after its error, it printed a second line, "interrupted", and exit 130)
on_outcome: Callable[[], None] | None = None


def error_line(message: str) -> None:
    """Print one error line on stderr (no markup interpretation, no wrapping)."""
    if on_outcome is not None:
        on_outcome()
    msg = " ".join(printable(str(message)).split())
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def _interrupted_message(e: BaseException | None) -> str:
    """What an interrupt says: an :class:`Interrupted`'s message (where the work was saved),
    else "interrupted"."""
    return str(e) if isinstance(e, Interrupted) and str(e) else "interrupted"


class UnexpectedEOF(Exception):
    """An ``EOFError`` out of a command, which click would report as a Ctrl-C."""


class DDCliGroup(TyperGroup):
    """The root group: turns every failure into one line on stderr and a documented exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _usable_streams()
        _config_flags.clear()  # a second command in the same process (tests) starts afresh
        self._interrupt = None
        empty = _empty_argument(list(sys.argv[1:] if args is None else args))
        if empty:
            error_line(empty)
            sys.exit(EXIT_BAD_INPUT)
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
                error_line(_interrupted_message(self._interrupt))
        except typer.Exit as e:
            code = e.exit_code
            if code == EXIT_INTERRUPTED:  # a KeyboardInterrupt, as typer reports it
                error_line(_interrupted_message(self._interrupt))
        except click.exceptions.NoArgsIsHelpError:  # plain `ddcli`: the help, printed already
            code = 0
        except typer.Abort as e:  # click's for a KeyboardInterrupt (an Interrupted: its cause)
            error_line(_interrupted_message(e.__cause__))
            code = EXIT_INTERRUPTED
        except click.exceptions.ClickException as e:
            hint = ""
            if isinstance(e, click.exceptions.UsageError) and e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            error_line(_from_config_file(e) + e.format_message() + hint)
            code = e.exit_code if not isinstance(e, click.exceptions.UsageError) else EXIT_BAD_INPUT
        except DDCliError as e:
            error_line(_name_config_file(str(e), sys.argv[1:] if args is None else args))
            code = e.exit_code
        except OSError as e:  # the system's refusal (a full disk, a file that cannot be
            # written, stdout gone): not a bug of ddcli's; click already ends a closed pipe
            if os.environ.get("DDCLI_DEBUG"):
                traceback.print_exc()
            where = f" ({e.filename})" if e.filename else ""
            error_line(f"{e.strerror or e}{where}")
            code = EXIT_FAILED
        except KeyboardInterrupt as e:
            error_line(_interrupted_message(e))
            code = EXIT_INTERRUPTED
        except Exception as e:  # a bug: still one line, traceback on request
            if os.environ.get("DDCLI_DEBUG"):
                traceback.print_exc()
            if _out_of_memory(e):
                sizes = self._size_options(sys.argv[1:] if args is None else args)
                error_line(f"out of memory{_requested(e)}: lower the run's sizes ({sizes}the "
                           "image size) or use a device with more memory")
            else:
                hint = "" if os.environ.get("DDCLI_DEBUG") else \
                    " (set DDCLI_DEBUG=1 for a traceback)"
                error_line(f"internal error: {type(e).__name__}: {e}{hint}")
            code = EXIT_FAILED
        sys.exit(code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Interrupted as e:  # typer turns it into the code 130 and drops it: its
            self._interrupt = e  # message says where the work was saved
            raise
        except EOFError as e:  # click turns an EOFError into its Abort, which read as
            # "interrupted" (exit 130): a file that ended early is an error, not a Ctrl-C
            raise UnexpectedEOF(str(e) or "a file ended early") from e

    #: the options that set how much memory a run takes, named in an out-of-memory error
    #: where the command has them
    SIZE_OPTIONS = ("--ipc", "--batch-real", "--width", "--models", "--views", "--augs",
                    "--real-per-class", "--prior-batch", "--prior-channels", "--syn-res")

    def _size_options(self, argv: list[str]) -> str:
        cmd = self.commands.get(next((a for a in argv if not a.startswith("-")), ""))
        opts = {o for p in getattr(cmd, "params", []) for o in p.opts}
        return "".join(f"{o}, " for o in self.SIZE_OPTIONS if o in opts or cmd is None)


#: the long flags whose values came from a ``--config`` file: that file and all the option's
#: names (set by the config callback; one command a process)
_config_flags: dict[str, tuple[Path, tuple[str, ...]]] = {}


def _name_config_file(message: str, argv: list[str]) -> str:
    """``message`` prefixed with its config file where it starts with a flag whose value came
    from one (``--iterations must be >= 0`` named a flag that the command line did not give)."""
    path, opts = _config_flags.get(message.split(" ", 1)[0].rstrip(":,"), (None, ()))
    given = any(a == o or a.startswith(o + "=" if o.startswith("--") else o)
                for a in argv for o in opts)
    return f"{path}: {message}" if path is not None and not given else message


def _from_config_file(e: click.exceptions.ClickException) -> str:
    """'FILE: ' when ``e`` refuses a value that came from a ``--config`` file (``seed = -1``:
    the message named the flag ``--seed``, which the command line did not give)."""
    param, ctx = getattr(e, "param", None), getattr(e, "ctx", None)
    if param is None or ctx is None or param.name is None:
        return ""
    if ctx.get_parameter_source(param.name) != click.core.ParameterSource.DEFAULT_MAP:
        return ""
    path = next((_config_flags[o][0] for o in param.opts if o in _config_flags), None)
    return f"{path}: " if path is not None else ""


def _usable_streams() -> None:
    """A closed stdout / stderr (``>&-``: Python's is then None, and the first print was an
    internal error) writes nowhere, as ``> /dev/null``; a stream whose encoding cannot show a
    character (``PYTHONIOENCODING=ascii``: the ± of a report, a class name) shows it escaped
    (it was an internal error, after the whole evaluation)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (the process's own)
        elif hasattr(stream, "reconfigure") and getattr(stream, "errors", "") == "strict":
            stream.reconfigure(errors="backslashreplace")


def _empty_argument(argv: list[str]) -> str | None:
    """The message for an empty argument, which no option of ddcli takes: a path '' was read
    as the current folder, a glob or a device '' as the default (a CI script's unset
    ``"$DATA"``)."""
    for i, arg in enumerate(argv):
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            after = argv[i - 1] if arg == "" and i else arg.rstrip("=")
            where = f"the value of {after}" if after.startswith("-") else \
                f"argument {i + 1}" + (f" (after {after!r})" if i else "")
            return f"{where} is empty (an unset shell variable?); give a value"
    return None


_OOM_SIGNS = ("DefaultCPUAllocator", "out of memory", "not enough memory")


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed (CPU or GPU), not a bug: torch raises it as
    ``OutOfMemoryError`` on a GPU and as a RuntimeError of its CPU allocator."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in _OOM_SIGNS))


def _requested(e: BaseException) -> str:
    """' (N GiB asked for)' when the message says how much was asked for."""
    import re

    text = str(e)
    m = re.search(r"allocate (\d+) bytes", text)
    if m:
        return f" ({int(m.group(1)) / 2**30:.1f} GiB asked for at once)"
    m = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]i?B)", text)
    return f" ({m.group(1)} asked for at once)" if m else ""


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
        regular_file(path, "config")
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
    # a key is an option's name as typed (``json``, ``train-teacher``) or its parameter's
    # (``json_out``), with - or _
    names = {n.replace("-", "_"): p.name for p in params.values()
             for n in [p.name, *(o.lstrip("-") for o in p.opts if o.startswith("--"))]}
    # top-level keys: shared, each where it applies
    merged = {names[k.replace("-", "_")]: (k, v) for k, v in data.items()
              if not isinstance(v, dict) and k.replace("-", "_") in names}
    section = data.get(ctx.info_name)
    if isinstance(section, dict):
        for key, v in section.items():
            name = names.get(key.replace("-", "_"))
            if name is None:
                raise InputError(f"{path}: unknown option {key!r} in [{ctx.info_name}] (see "
                                 f"'ddcli {ctx.info_name} --help')")
            merged[name] = (key, v)
    defaults: dict[str, Any] = {}
    for name, (key, v) in merged.items():
        p = params[name]
        kind = _scalar_kind(p)
        if kind is not None:  # TOML has numbers and booleans: "2", true or [2] is no --ipc
            wrong = [x for x in (v if p.multiple and isinstance(v, list) else [v])
                     if not _TOML_KINDS[kind][0](x)]
            if wrong:
                raise InputError(f"{path}: {key} = {json.dumps(wrong[0], default=str)}: expected "
                                 f"{_TOML_KINDS[kind][1]}")
        if p.multiple and not isinstance(v, list):
            v = [v]
        elif isinstance(v, list) and not p.multiple:  # a tuple option: [8, 16] is "8,16"
            v = ",".join(str(x) for x in v)
        try:
            _coerce(p, ctx, v)
        except click.exceptions.BadParameter as e:
            raise InputError(f"{path}: {key} = {v!r}: {e.message}") from None
        defaults[name] = v
        _config_flags.update({o: (path, tuple(p.opts)) for o in p.opts if o.startswith("--")})
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


#: a config value's TOML type for the options of these Python types: (check, what it wants)
_TOML_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda x: isinstance(x, bool), "true or false"),
    int: (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer"),
    float: (lambda x: isinstance(x, int | float) and not isinstance(x, bool), "a number"),
}


def _scalar_kind(param: click.Parameter) -> type | None:
    """bool, int or float where the option takes that type (its items, for a repeatable
    option), None for text, paths and choices (a TOML number there is read as its text)."""
    if hasattr(param, "get_runtime_param"):  # typer >= 0.20: the parameter's annotation
        ann = param.get_runtime_param().annotation
        while typing.get_origin(ann) in (list, tuple, typing.Union, types.UnionType):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        return ann if ann in _TOML_KINDS else None
    t = getattr(param, "type", None)  # pragma: no cover - click's types
    return next((k for k, c in ((bool, click.types.BoolParamType),
                                (int, click.types.IntParamType),
                                (float, click.types.FloatParamType)) if isinstance(t, c)), None)


def _coerce(param: click.Parameter, ctx: click.Context, value: Any) -> Any:
    """Convert a config value as the option's command-line value would be (its range checks,
    such as ``--seed``'s, run where click uses the value: a flag given on the command line
    wins over the file's value, checked or not)."""
    if hasattr(param, "get_runtime_param"):  # typer >= 0.20: typer's own coercion
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    return param.type_cast_value(ctx, value)  # pragma: no cover - click's


def _command_names(ctx: click.Context) -> set[str]:
    """The names of the root group's commands that take --config: the config file's section
    names."""
    commands = getattr(ctx.find_root().command, "commands", {}) or {}
    return {n for n, c in commands.items()
            if any(p.name == "config" for p in getattr(c, "params", []))} | {ctx.info_name}


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

def _seed_callback(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise click.exceptions.BadParameter(f"must lie in 0..{MAX_SEED}, got {value}")
    return value


SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in the output).",
                                      callback=_seed_callback)]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto: cuda when available).")
]


def _out_file(value: Any) -> Path:
    """``--out``: :func:`ddcli.io.output_path`'s check, as the option's own error."""
    try:
        return output_path(value)
    except InputError as e:
        raise click.exceptions.BadParameter(str(e)) from None


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output file.",
                                             parser=_out_file)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]


# --------------------------------------------------------------------------------------------
# devices, caches, output


def command_line() -> str:
    """The command as typed, recorded in provenance."""
    return "ddcli " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def print_json(obj: Any) -> None:
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


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


DataCacheOpt = Annotated[
    Literal[CACHE_MODES],
    typer.Option(
        "--data-cache",
        help="Read the real images through a memory-mapped uint8 cache under "
             "$DDCLI_CACHE/data, built once (resumable): on | off | auto (sets of 1 GiB "
             "of pixels or more; $DDCLI_DATA_CACHE_MIN_BYTES). Resident memory then stays "
             "flat however large the set.",
        rich_help_panel="Data",
        case_sensitive=False,
    ),
]


def check_copy_folder(out: Path, force: bool) -> None:
    """Before the work: may :func:`copy_folder` write ``out``?"""
    from ddcli.io import COPY_MARKER, check_dir_replaceable

    check_dir_replaceable(out, force, COPY_MARKER)


def copy_folder(items: list[Path], out: Path, force: bool) -> None:
    """Copy files or folders into the folder ``out`` (built aside, then moved into place);
    ``--force`` replaces only a folder this wrote (marked :data:`ddcli.io.COPY_MARKER`)."""
    import shutil

    from ddcli.io import COPY_MARKER, atomic_dir

    with atomic_dir(Path(out), force, marker=COPY_MARKER) as tmp:
        for item in items:
            if item.is_dir():
                shutil.copytree(item, tmp, dirs_exist_ok=True)
            else:
                shutil.copy2(item, tmp / item.name)
