"""``ddcli distill [DATA]``: run a distillation method and write a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ddcli.catalog import DTYPES, METHODS
from ddcli.cli.common import (
    ChannelsOpt,
    ConfigOpt,
    DataCacheOpt,
    DeviceOpt,
    ForceOpt,
    ImageSizeOpt,
    ImbalanceOpt,
    JsonOpt,
    MaxPerClassOpt,
    OutOpt,
    QuietOpt,
    Reporter,
    SeedOpt,
    SkipBadOpt,
    TrainFilesOpt,
    command_line,
    print_json,
)
from ddcli.cli.method_options import PANEL_METHOD, with_method_options

PANEL_SOFT = "Soft labels"
PANEL_RUN = "Run and output"


@with_method_options(after="method")
def distill(
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Dataset folder or .npz shard; omit it for the built-in "
            "Fashion-MNIST sample (with a CPU preset).",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        Literal[METHODS],
        typer.Option(
            "--method",
            "-m",
            help=f"One of: {', '.join(METHODS)}.",
            rich_help_panel=PANEL_METHOD,
            case_sensitive=False,
        ),
    ] = "dm",
    relabel_after: Annotated[
        bool,
        typer.Option(
            "--relabel",
            help="Then relabel with the LIA teacher set of "
            "--relabel-teacher (trained on DATA, cached).",
            rich_help_panel=PANEL_SOFT,
        ),
    ] = False,
    relabel_teacher: Annotated[
        list[str] | None,
        typer.Option(
            "--relabel-teacher",
            help="Teacher architectures for --relabel (default convnet).",
            rich_help_panel=PANEL_SOFT,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            help="Save a checkpoint next to the output every N iterations (0: only on Ctrl-C / "
                 "SIGTERM, and after the last one with --relabel); deleted once the bundle is "
                 "written.",
            rich_help_panel=PANEL_RUN,
        ),
    ] = 1000,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the checkpoint next to the output.",
            rich_help_panel=PANEL_RUN,
        ),
    ] = False,
    data_cache: DataCacheOpt = "auto",
    dtype: Annotated[
        Literal[DTYPES],
        typer.Option(
            "--dtype",
            help="Storage dtype of the images: float32 | float16.",
            rich_help_panel=PANEL_RUN,
            case_sensitive=False,
        ),
    ] = "float32",
    train_files: TrainFilesOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    skip_bad: SkipBadOpt = False,
    max_per_class: MaxPerClassOpt = None,
    imbalance_factor: ImbalanceOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    **options: Any,
) -> None:
    """Distill a dataset into a few synthetic images per class and write a bundle.

    Example: [bold]ddcli distill data/cifar10 --train-files 'train_[123].npz' --ipc 10
    -o cifar10-dm-ipc10.safetensors[/]
    """
    from ddcli.api import distill as run_distill

    report = run_distill(
        data,
        method=method,
        out=out,
        seed=seed,
        device=device,
        force=force,
        train_files=train_files,
        image_size=image_size,
        channels=channels,
        skip_bad=skip_bad,
        max_per_class=max_per_class,
        imbalance_factor=imbalance_factor,
        relabel=relabel_after,
        relabel_teacher=relabel_teacher,
        checkpoint_every=checkpoint_every,
        resume=resume,
        dtype=dtype,
        data_cache=data_cache.lower(),
        verbose=Reporter(quiet, json_out),
        command=command_line(),
        **options,
    )
    if json_out and report:  # under torchrun only rank 0 reports
        print_json(report)
