"""``ddcli inspect BUNDLE``: what a bundle holds, whether it is intact, and what it looks like."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ddcli.cli.common import (
    ConfigOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    print_json,
    printable,
    stdout_console,
)
from ddcli.errors import InputError, RunError

if TYPE_CHECKING:
    from ddcli.bundle import Bundle


def soft_label_stats(b: Bundle) -> dict | None:
    if b.soft_labels is None:
        return None
    p = b.soft_labels.float().clamp_min(1e-12)
    entropy = -(p * p.log()).sum(1)
    agree = (b.soft_labels.argmax(1) == b.labels).float().mean()
    return {
        "mean_entropy_nats": round(float(entropy.mean()), 4),
        "max_entropy_nats": round(math.log(b.num_classes), 4),
        "top1_agreement_with_labels": round(float(agree), 4),
    }


def summary(b: Bundle, path: Path) -> dict:
    from ddcli.bundle import dtype_name

    d = b.dataset
    return {
        "path": str(path),
        "format_version": b.file_format_version,
        "ddcli_version": b.ddcli_version,
        "method": b.method,
        "config": b.config,
        "seed": b.seed,
        "created": b.created,
        "torch": b.torch_version,
        "device": b.device,
        "num_images": int(b.images.shape[0]),
        "ipc": b.ipc,
        "factor": b.factor,
        "images_per_class": b.images_per_class,
        "image_shape": list(b.images.shape[1:]),
        "dtype": dtype_name(b.images.dtype),
        "pixel_range": [round(float(b.images.min()), 4), round(float(b.images.max()), 4)],
        "dataset": {
            "name": d.get("name"),
            "source": d.get("source"),
            "num_images": d.get("num_images"),
            "fingerprint": d.get("fingerprint"),
            "classes": d.get("classes"),
            "class_counts": d.get("class_counts"),
            "image_size": d.get("image_size"),
            "channels": d.get("channels"),
            "mean": d.get("mean"),
            "std": d.get("std"),
            "subset": d.get("subset", {}),
        },
        "soft_labels": soft_label_stats(b),
        "extras": {k: list(v.shape) for k, v in b.extras.items()},
        "provenance": b.provenance,
        "checksum": b.checksum,
        "checksum_ok": b.checksum_ok,
        "content_checksum": b.content_checksum,  # the tensors alone (ddcli.bundle)
    }


#: the width the summary is laid out at when stdout is not a terminal (a log, a pipe, a file):
#: wide enough that no row wraps (rich would use 80 columns and wrap paths mid-word)
LOG_WIDTH = 10_000


def summary_console() -> Console:
    """stdout's console: a terminal's width, or :data:`LOG_WIDTH` for a log or a pipe."""
    con = stdout_console()
    if not con.is_terminal:
        con = Console(highlight=False, soft_wrap=True, width=LOG_WIDTH)
    return con


def _render(s: dict, con: Console | None = None) -> None:
    """The summary: on a terminal, values wrap at spaces (a word longer than the line, such
    as a path, folds); elsewhere each row is one line."""
    con = con or summary_console()
    wrap = not con.is_terminal  # soft_wrap: long lines stay whole in a log
    ok = Text("ok", style="green") if s["checksum_ok"] else Text("MISMATCH", style="bold red")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    ds = s["dataset"]
    rows = [
        ("bundle", s["path"]),
        ("method", s["method"] or "-"),
        ("images", f"{s['num_images']} × {tuple(s['image_shape'])} {s['dtype']}, "
                   f"IPC {s['ipc'] if s['ipc'] is not None else 'varies'}"
                   + (f", multi-formation factor {s['factor']} ({s['factor'] ** 2} images "
                      "each)" if s["factor"] > 1 else "")),
        ("pixel range", f"{s['pixel_range'][0]} .. {s['pixel_range'][1]}"),
        ("dataset", f"{ds['name']}  fingerprint {str(ds['fingerprint'])[:16]}…"),
        ("normalisation", f"mean {ds['mean']} std {ds['std']}"),
        ("seed", str(s["seed"])),
        ("created", f"{s['created']} with ddcli {s['ddcli_version']}, torch {s['torch']} "
                    f"on {s['device'] or '?'}"),
        ("format", f"ddcli.bundle v{s['format_version']}"
                   + ("" if s["format_version"] >= 2 else " (checksum covers the tensors only)")),
        ("checksum", Text.assemble(f"{s['checksum'][:16]}… ", ok)),
        ("content", f"{s['content_checksum'][:16]}… (the tensors alone: same seed, same "
                    "content)"),
    ]
    if s.get("problem"):
        rows.append(("problem", Text(s["problem"], style="bold red")))
    if ds.get("subset"):
        rows.append(("subset", json.dumps(ds["subset"])))
    if s["soft_labels"]:
        sl = s["soft_labels"]
        rows.append(("soft labels", f"mean entropy {sl['mean_entropy_nats']} nats "
                                    f"(max {sl['max_entropy_nats']}), top-1 agreement "
                                    f"{sl['top1_agreement_with_labels']:.1%}"))
    else:
        rows.append(("soft labels", "none"))
    if s["extras"]:
        rows.append(("extras", ", ".join(f"{k} {v}" for k, v in s["extras"].items())))
    for label, value in rows:  # values taken literally: names and paths may hold [brackets]
        t.add_row(label, value if isinstance(value, Text) else Text(value))
    con.print(t)
    if s["config"]:
        con.print("[bold]config[/]  " + escape(json.dumps(s["config"], sort_keys=True)),
                  soft_wrap=wrap)
    ct = Table(title="classes", title_justify="left")
    ct.add_column("#", justify="right", no_wrap=True)
    ct.add_column("class", overflow="fold")
    ct.add_column("real images", justify="right")
    ct.add_column("synthetic", justify="right")
    counts = ds.get("class_counts") or [None] * len(ds["classes"] or [])
    for k, name in enumerate(ds["classes"] or []):
        ct.add_row(str(k), Text(str(name)), str(counts[k] if counts[k] is not None else "-"),
                   str(s["images_per_class"][k]))
    con.print(ct)
    if s["provenance"]:
        con.print("[bold]provenance[/]")
        for i, step in enumerate(s["provenance"]):
            con.print(f"  {i + 1}. {escape(str(step.get('command', '?')))}"
                      + (f"  (parent {str(step['parent_checksum'])[:12]}…)"
                         if step.get("parent_checksum") else ""), soft_wrap=wrap)


def _check_outputs(grid: Path | None, export: Path | None, force: bool) -> None:
    """Refuse bad ``--grid`` / ``--export`` targets before anything is written (a grid was
    written, then the export refused; or written inside the folder the export replaced)."""
    from ddcli.data import EXPORT_MARKER
    from ddcli.io import check_dir_replaceable
    from ddcli.viz import check_grid

    if grid is not None:
        check_grid(grid, force)
    if export is not None:
        check_dir_replaceable(export, force, EXPORT_MARKER)
    if grid is not None and export is not None and \
            Path(export).resolve() in Path(grid).resolve().parents:
        raise InputError(f"--grid {grid} lies in --export {export}, a folder the export "
                         "writes whole; put the grid elsewhere")


def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle file (.safetensors).", show_default=False)],
    grid: Annotated[
        Path | None, typer.Option("--grid", help="Write an image grid, one row per class "
                                                 "(PNG, or JPEG for a .jpg name).")
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Draw a small grid in the terminal (true colour; "
                                             "only when stdout is a terminal).")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Write the images into DIR: an ImageFolder of PNGs with a "
                                       "Hugging Face metadata.jsonl, or shards (--export-format)."),
    ] = None,
    export_format: Annotated[
        Literal["png", "npz"],
        typer.Option("--export-format", help="png: class folders of PNGs + metadata.jsonl; "
                                             "npz: ddcli's shard format (train.npz + "
                                             "classes.json).", case_sensitive=False),
    ] = "png",
    decode: Annotated[
        bool, typer.Option("--decode", help="Show / export multi-formation images decoded.")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Exit 1 if the checksum does not match or the "
                                            "values are wrong (NaN images, soft labels that "
                                            "are not probabilities).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --grid / --export.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show what a bundle holds, check it, and export pictures of it.

    Example: [bold]ddcli inspect fmnist-dm.safetensors --preview --grid grid.png[/]
    """
    from ddcli.distributed import single_process

    single_process("inspect")  # before any work: every rank would run it whole
    from ddcli.bundle import load_bundle, value_problem
    from ddcli.viz import export_image_folder, export_shards, save_grid, terminal_preview

    rep = Reporter(quiet, json_out)
    b = load_bundle(bundle, verify=False, warn=rep.warn, values=False)  # wrong values: shown
    s = summary(b, bundle)
    # values that evaluate / relabel / load_bundle refuse (NaN images, soft labels that are
    # not probabilities): --verify's failure too, and a field for scripts (they saw exit 0)
    s["problem"] = problem = value_problem(b)
    mismatch = None if b.checksum_ok else \
        f"{bundle}: checksum mismatch (the file was modified or damaged)"
    if verify and (mismatch or problem):  # the one line, before anything is written; with
        if json_out:  # --json the summary first (checksum_ok, problem), as CI reads it
            print_json(s)
        raise RunError(mismatch or f"{bundle}: {problem}")
    if mismatch:
        rep.warn(mismatch)
    if problem and b.checksum_ok:
        rep.warn(f"{bundle}: {problem}")
    _check_outputs(grid, export, force)  # all of them before writing any
    images, labels, soft = b.images, b.labels, b.soft_labels
    if decode:
        images, labels, soft = b.decoded()
    if grid is not None:
        save_grid(images, labels, b.num_classes, grid, force=force)
        rep.info(f"wrote grid {grid}")
        s["grid"] = str(grid)
    if export is not None and export_format.lower() == "npz":
        shard = export_shards(images, labels, b.classes, export, force=force, soft=soft)
        rep.info(f"exported {images.shape[0]} images into {shard}")
        s["export"] = str(export)
    elif export is not None:
        names = export_image_folder(images, labels, b.classes, export, force=force, soft=soft)
        rep.info(f"exported {images.shape[0]} PNGs into {export} ({len(names)} class folders, "
                 "metadata.jsonl)")
        s["export"] = str(export)
    if json_out:
        print_json(s)
    else:
        con = summary_console()
        _render(printable(s), con)
        if preview and con.is_terminal:
            con.print(terminal_preview(images.float(), labels, printable(b.classes),
                                       width=con.width),
                      soft_wrap=True)
        elif preview:
            con.print("preview: stdout is not a terminal; use --grid FILE.png", soft_wrap=True)

