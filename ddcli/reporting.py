"""Messages and progress on stderr, devices, and data loading with progress: what the
commands and the Python API (:mod:`ddcli.api`) share. Library code: the CLI layer
(:mod:`ddcli.cli`) builds on it, never the other way round."""

from __future__ import annotations

import os
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

from ddcli.errors import InputError


def printable(obj: Any) -> Any:
    """``obj`` (strings, and those in lists and dicts) with control characters but newlines
    and tabs shown escaped (``\\x1b``): a class name, path or command from a bundle or a folder
    never drives the terminal (an escape sequence in a bundle's class names cleared the
    screen or recoloured what followed in ``inspect``)."""
    if isinstance(obj, str):
        return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc"
                       else c.encode("unicode_escape").decode() for c in obj)
    if isinstance(obj, dict):
        return {k: printable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(printable(v) for v in obj)
    return obj


def stderr_console() -> Console:
    # force_jupyter=False: in a notebook rich drew messages and warnings as display outputs
    # (saved into the notebook, with terminal colour codes) instead of writing to stderr
    return Console(stderr=True, highlight=False, force_jupyter=False)


def resolve_device(spec: str) -> str:
    import torch

    spec = ("auto" if spec is None else spec).strip().lower()  # ('' was taken for auto)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec in ("cpu", "cpu:0"):  # (torch.device("cpu", 0) reads "cpu:0")
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        idx = 0 if spec == "cuda" else spec.split(":", 1)[1]
        try:
            idx = int(idx)
        except ValueError:
            raise InputError(f"bad device {spec!r}: use cpu, cuda or cuda:N") from None
        if idx < 0:  # (torch's own error on it was an internal error)
            raise InputError(f"bad device {spec!r}: N of cuda:N counts from 0")
        if idx >= n:
            raise InputError(f"device {spec} is not available (this machine has {n} CUDA devices)")
        return spec
    raise InputError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N")


def device_label(device: str) -> str:
    """The device as recorded in bundles and reports, with the GPU's name."""
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return "cpu"


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

    def _done(self) -> str:
        # a fraction (an epoch part-way through its batches) shows one decimal
        c = self.completed
        return str(int(c)) if float(c).is_integer() else f"{c:.1f}"

    def line(self, now: float) -> str:
        parts = [f"{self.description}: {self._done()}"]
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

    def finish(self, stopped: bool = False) -> None:
        """A last plain line for a phase that printed any (so a log shows it ended, or
        where it ``stopped``: an error or Ctrl-C, not "done")."""
        if self.write is not None and self.printed:
            state, took = ("stopped at", "after") if stopped else ("done,", "in")
            count = self._done() + (f"/{self.total}" if self.total else "")
            elapsed = format_duration(time.monotonic() - self.t0)
            self.write(f"{self.description}: {state} {count} {self.unit} {took} {elapsed}")
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
                 terminal: bool | None = None, warnings: bool = True):
        self.quiet = quiet
        #: off on the ranks other than 0 under torchrun: they read the same data (checked),
        #: so their warnings are rank 0's, printed once per process
        self.warnings = warnings
        self.messages = not (quiet or json_out)
        self.console = stderr_console()
        self.terminal = self.console.is_terminal if terminal is None else terminal

    def info(self, msg: str) -> None:
        if self.messages:  # soft wrap: a log line stays one line off a terminal (80 columns);
            # the message taken literally (a path or a class name may hold [brackets])
            self.console.print(escape(printable(msg)), soft_wrap=True)

    def warn(self, msg: str) -> None:
        # warnings show even with --quiet: they change how a result should be read; one line
        # each, the message taken literally (a path may hold [brackets])
        if not self.warnings:
            return
        self.console.print(f"[yellow]warning:[/] {escape(printable(msg))}", soft_wrap=True)

    def _plain(self, line: str) -> None:
        self.console.print(escape(printable(line)), soft_wrap=True, highlight=False)

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
            except BaseException:
                tracker.finish(stopped=True)
                raise
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


def load_dataset_reported(rep: Reporter, path: Path, split: str, **kw):
    """Load a dataset with a progress bar for image folders; errors become one line."""
    from ddcli.data import check_subset_options, load_dataset, parse_image_size

    if "image_size" in kw:
        kw["image_size"] = parse_image_size(kw["image_size"])
    check_subset_options(kw.get("max_per_class"), kw.get("imbalance_factor"))
    with rep.progress(f"reading {path.name or path}", None, transient=True,
                      unit="images") as update:
        return load_dataset(
            path, split, progress=lambda done, total: update(done, total=total), warn=rep.warn,
            **kw
        )
