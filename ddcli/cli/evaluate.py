"""``ddcli evaluate BUNDLE``: train fresh models on a bundle under a named protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from ddcli.catalog import AMPS, BASELINES, COMPILE_MODES
from ddcli.cli.common import (
    ConfigOpt,
    DataCacheOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    Reporter,
    SeedOpt,
    SkipBadOpt,
    print_json,
    printable,
    stdout_console,
)
from ddcli.protocols import list_protocols, protocol_summary

PROTOCOLS = tuple(list_protocols())


def _render(report: dict) -> None:
    from rich.table import Table

    con = stdout_console()
    p = dict(report["protocol"])
    res = report.get("result") or {}
    # what ran where the record holds a rule: the soft labels' temperature (kd with T None),
    # the linear probe's batch-scaled lr and its batch
    if p.get("temperature") is None and report.get("temperature_used") is not None:
        p["temperature"] = report["temperature_used"]
    p.update({k: res[k] for k in ("lr", "batch_size") if k in res})
    con.print(f"[bold]protocol[/] {p['name']}: {protocol_summary(p)}")
    if report.get("mode"):
        con.print(f"[bold]mode[/] {report['mode']}")
    if report.get("golden_head_test_accuracy") is not None:
        con.print(f"golden head (full-data linear probe, the ceiling): "
                  f"{report['golden_head_test_accuracy']:.2f} %")
    t = Table(title=f"test accuracy (%) on {report['test']['num_images']} test images, "
                    f"{report['num_models']} models", title_justify="left")
    t.add_column("set", no_wrap=True)
    t.add_column("images", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("per model", justify="left")
    t.add_column("train s/model", justify="right")
    base = report.get("baseline")
    # the baseline's kind: random real images, or the real images nearest each class mean
    kind = {"centroids": "class centroids"}.get((base or {}).get("kind"), "random real")
    rows = [("bundle", report["result"])]
    if base:
        rows.append((f"{kind} (IPC {base['ipc']})", base))
    for name, r in rows:
        t.add_row(name, str(r["num_train_images"]),
                  f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}",
                  " ".join(f"{a:.2f}" for a in r["accuracy_per_model"]),
                  f"{r['train_time_per_model_s']:.2f}")
    con.print(t)
    if report.get("improvement_points") is not None:
        d = report["improvement_points"]
        con.print(f"improvement over {kind}: [bold]{d:+.2f}[/] points")
    ga = report["result"].get("group_accuracy")
    if ga:
        con.print("long-tailed groups (by real image count): " + ", ".join(
            f"{g} {ga[g]:.2f}" for g in ("many", "medium", "few") if g in ga)
            + (f"; {kind}: " + ", ".join(
                f"{g} {report['baseline']['group_accuracy'][g]:.2f}"
                for g in ("many", "medium", "few") if g in ga) if report.get("baseline") else ""))
    classes = report["classes"]
    pc = report["result"]["per_class_accuracy"]
    con.print("per class: " + escape(", ".join(
        f"{c} {a:.1f}" if a is not None else f"{c} - (no test image)"
        for c, a in zip(classes, pc, strict=True))))


def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle file.", show_default=False)],
    test: Annotated[
        Path | None,
        typer.Option("--test", help="Test data (folder or shards); default for bundles of the "
                                    "built-in sample: its test split."),
    ] = None,
    test_files: Annotated[
        str | None, typer.Option("--test-files", help="Glob choosing the test shards.")
    ] = None,
    protocol: Annotated[
        Literal[PROTOCOLS],
        typer.Option("--protocol", "-p", help="The protocol (ddcli list protocols).",
                     case_sensitive=False),
    ] = "dm",
    models: Annotated[int, typer.Option("--models", help="Fresh models to train.")] = 5,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override the protocol's epochs (recorded).")
    ] = None,
    baseline: Annotated[
        Literal[BASELINES] | None,
        typer.Option("--baseline", help="random: also evaluate random real images of the same "
                                        "IPC from --real; centroids (linear-probe): the real "
                                        "images nearest the class means.",
                     case_sensitive=False),
    ] = None,
    real: Annotated[
        Path | None, typer.Option("--real", help="Real data for --baseline (random or centroids).")
    ] = None,
    real_files: Annotated[
        str | None, typer.Option("--real-files", help="Glob choosing the real shards.")
    ] = None,
    data_cache: DataCacheOpt = "auto",
    skip_bad: SkipBadOpt = False,  # (--test and --real)
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="linear-probe: evaluation backbone "
                                                    "(default: the bundle's), e.g. timm:NAME.")
    ] = None,
    backbone_weights: Annotated[
        str | None, typer.Option("--backbone-weights", help="Weights file of --backbone.")
    ] = None,
    inherit: Annotated[
        bool, typer.Option("--inherit", help="linear-probe: classifier inheritance (the "
                                             "bundle's golden head + a learnt projector).")
    ] = False,
    teacher: Annotated[
        list[Path] | None,
        typer.Option("--teacher", help="Teacher file(s) for kd-online and for relabelling the "
                                       "random baseline (default: the bundle's recorded ones)."),
    ] = None,
    out: OutOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    compile_mode: Annotated[
        Literal[COMPILE_MODES],
        typer.Option("--compile", case_sensitive=False,
                     help="CPU: train through torch.compile (inductor), about 1.4x per step; "
                          "auto: when the run is long enough to repay the build."),
    ] = "auto",
    amp: Annotated[
        Literal[AMPS],
        typer.Option("--amp", case_sensitive=False,
                     help="bf16: train the models' forward passes under bfloat16 autocast "
                          "(faster on CPUs with AVX512-BF16 and on GPUs; not the same "
                          "arithmetic as the published judges, recorded in the report)."),
    ] = "off",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Train fresh models on a bundle under a named protocol and report test accuracy.

    Example: [bold]ddcli evaluate cifar10-dm-ipc10.safetensors --test data/cifar10
    --test-files train_4.npz --baseline random --real data/cifar10 --real-files 'train_[123].npz'[/]
    """
    from ddcli.api import evaluate as run_evaluate

    report = run_evaluate(
        bundle, test=test, test_files=test_files, protocol=protocol, models=models,
        epochs=epochs, baseline=baseline, real=real, real_files=real_files, backbone=backbone,
        backbone_weights=backbone_weights, inherit=inherit, teacher=teacher, out=out, seed=seed,
        device=device, force=force, verbose=Reporter(quiet, json_out),
        compile=compile_mode.lower(), amp=amp.lower(), data_cache=data_cache.lower(),
        skip_bad=skip_bad)
    if not report:  # under torchrun only rank 0 reports
        return
    if json_out:
        print_json(report)
    else:
        _render(printable(report))
