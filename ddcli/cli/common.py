"""What every command shares: option aliases, consoles, progress, config files, devices, errors."""

from __future__ import annotations

import os
import shlex
import sys
import time
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


#: seconds between plain progress lines when stderr is not a terminal (CI logs)
PROGRESS_INTERVAL_S = 10.0
#: seconds of a phase after which its estimated total time is printed (once)
ESTIMATE_AFTER_S = 5.0
#: a CPU phase estimated to take longer than this gets a warning
SLOW_CPU_S = 3600.0


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def format_duration(seconds: float) -> str:
    """``42s``, ``7m 05s``, ``3h 20m``: a duration for people."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def format_rate(rate: float, unit: str) -> str:
    """``12.3 it/s``, or ``4.2 s/epoch`` below one per second."""
    short = {"iterations": "it", "steps": "steps", "epochs": "epochs", "images": "images",
             "batches": "batches"}.get(unit, unit)
    if rate >= 1 or rate <= 0:
        return f"{rate:.1f} {short}/s"
    singular = {"iterations": "it", "steps": "step", "epochs": "epoch", "images": "image",
                "batches": "batch"}.get(unit, unit)
    return f"{1 / rate:.1f} s/{singular}"


class _Tracker:
    """One phase's rate and ETA; plain progress lines (``every`` seconds apart) when ``write``
    is given, the estimated total time once after ``estimate_after`` seconds, and a warning
    when a CPU phase will take more than :data:`SLOW_CPU_S`."""

    def __init__(self, description: str, total: int | None, unit: str, *,
                 write: Any = None, info: Any = None, warn: Any = None,
                 every: float = PROGRESS_INTERVAL_S, estimate_after: float = ESTIMATE_AFTER_S,
                 cpu_hint: str | None = None, estimate: bool = False):
        self.unit = unit
        self.write, self.info, self.warn = write, info, warn
        self.every, self.estimate_after = every, estimate_after
        self.cpu_hint, self.estimate = cpu_hint, estimate
        self.status = ""
        self.printed = False
        self._start(description, total)

    def _start(self, description: str, total: int | None) -> None:
        self.description, self.total = description, total
        self.t0 = self.last = time.monotonic()
        self.c0: int | None = None  # the count at the first update: a resumed run's start
        self.t_first = self.t0
        self.completed = 0
        self.estimated = False

    def rate(self, now: float) -> float | None:
        if self.c0 is None or now <= self.t_first or self.completed <= self.c0:
            return None
        return (self.completed - self.c0) / (now - self.t_first)

    def line(self, now: float) -> str:
        # a fraction (an epoch part-way through its batches) shows one decimal
        c = self.completed
        done = str(int(c)) if float(c).is_integer() else f"{c:.1f}"
        parts = [f"{self.description}: {done}"]
        if self.total:
            pct = 100 * self.completed / self.total
            parts = [f"{parts[0]}/{self.total} {self.unit} ({pct:.0f}%)"]
        else:
            parts[0] += f" {self.unit}"
        rate = self.rate(now)
        if rate:
            parts.append(format_rate(rate, self.unit))
            if self.total and self.completed < self.total:
                parts.append(f"ETA {format_duration((self.total - self.completed) / rate)}")
        parts.append(f"elapsed {format_duration(now - self.t0)}")
        if self.status:
            parts.append(self.status)
        return ", ".join(parts)

    def update(self, completed: float, total: int | None = None, status: str | None = None,
               description: str | None = None, unit: str | None = None) -> None:
        now = time.monotonic()
        if description is not None and description != self.description:
            self.finish()
            self._start(description, total if total is not None else self.total)
            self.status = ""
            self.unit = unit or self.unit
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        if self.c0 is None:  # the first update: the rate counts from here (warm-up excluded)
            self.c0, self.t_first = completed, now
        self.completed = completed
        if not self.estimated and now - self.t0 >= self.estimate_after:
            self._estimate(now)
        if self.write is not None and now - self.last >= self.every:
            self.last = now
            self.printed = True
            self.write(self.line(now))

    def _estimate(self, now: float) -> None:
        rate = self.rate(now)
        if rate is None or not self.total:
            return
        self.estimated = True
        left = (self.total - self.completed) / rate
        whole = (now - self.t0) + left
        if self.estimate and self.info is not None and self.completed < self.total:
            self.info(f"{self.description}: about {format_duration(whole)} in all "
                      f"({format_duration(left)} left at {format_rate(rate, self.unit)})")
        if self.cpu_hint is not None and self.warn is not None and whole > SLOW_CPU_S:
            self.warn(f"{self.description} will take about {format_duration(whole)} on the "
                      f"CPU; {self.cpu_hint}")

    def finish(self) -> None:
        """A last plain line for a phase that printed any (so a log shows it ended)."""
        if self.write is not None and self.printed:
            now = time.monotonic()
            self.write(f"{self.description}: done, {self.completed}"
                       + (f"/{self.total}" if self.total else "")
                       + f" {self.unit} in {format_duration(now - self.t0)}")
        self.printed = False


class Reporter:
    """Messages and progress on stderr.

    ``quiet`` silences messages and progress (warnings still show); ``json_out`` silences
    messages only (stdout holds the JSON document; progress stays on stderr). Progress is a
    rich bar when stderr is a terminal, otherwise a plain line every
    ``DDCLI_PROGRESS_INTERVAL`` seconds (10 by default), for CI logs. ``terminal`` overrides
    the detection (tests).
    """

    def __init__(self, quiet: bool = False, json_out: bool = False,
                 terminal: bool | None = None):
        self.quiet = quiet
        self.messages = not (quiet or json_out)
        self.console = stderr_console()
        self.terminal = self.console.is_terminal if terminal is None else terminal

    def info(self, msg: str) -> None:
        if self.messages:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        # warnings show even with --quiet: they change how a result should be read; one line
        # each, the message taken literally (a path may hold [brackets])
        self.console.print(f"[yellow]warning:[/] {escape(msg)}", soft_wrap=True)

    def _plain(self, line: str) -> None:
        self.console.print(escape(line), soft_wrap=True, highlight=False)

    @contextmanager
    def progress(self, description: str, total: int | None, transient: bool = False, *,
                 unit: str = "steps", estimate: bool = False,
                 cpu_hint: str | None = None) -> Iterator[Any]:
        """Yield ``update(completed, total=None, status=None, description=None, unit=None)``.

        A rich bar on a terminal, plain lines otherwise, nothing with ``quiet`` (but the
        CPU warning). ``status`` persists until replaced (a loss shown at log points);
        ``description`` (and ``unit``) start a new phase in the same display. ``estimate``
        prints the estimated total time once, after the first seconds; ``cpu_hint`` (given
        for a CPU run) warns when that estimate exceeds an hour, the hint saying what helps.
        """
        tracker = _Tracker(
            description, total, unit,
            write=self._plain if not (self.quiet or self.terminal) else None,
            info=self._plain if not self.quiet else None, warn=self.warn,
            every=_env_seconds("DDCLI_PROGRESS_INTERVAL", PROGRESS_INTERVAL_S),
            estimate_after=_env_seconds("DDCLI_ESTIMATE_AFTER", ESTIMATE_AFTER_S),
            cpu_hint=cpu_hint, estimate=estimate,
        )
        if self.quiet or not self.terminal:
            try:
                yield tracker.update
            finally:
                tracker.finish()
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
            task = bar.add_task(escape(description), total=total, status="")

            def update(completed: int, total: int | None = None, status: str | None = None,
                       description: str | None = None, unit: str | None = None) -> None:
                new_phase = description is not None and description != tracker.description
                tracker.update(completed, total, status, description, unit)
                if new_phase:  # a new phase: its own timer and rate
                    bar.reset(task, total=tracker.total, completed=completed,
                              description=escape(tracker.description), status="")
                    return
                kw: dict[str, Any] = {"total": total} if total is not None else {}
                if status is not None:
                    kw["status"] = escape(status)
                bar.update(task, completed=completed, **kw)

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
    with rep.progress(f"reading {path.name or path}", None, transient=True,
                      unit="images") as update:
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
