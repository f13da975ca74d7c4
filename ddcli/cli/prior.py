"""``ddcli prior DATA``: train (or find) the cached diffusion prior that otgen uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddcli.catalog import PRIOR_BATCH, PRIOR_STEPS
from ddcli.cli.common import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    TrainFilesOpt,
    cache_dir,
    load_cli_dataset,
    print_json,
    resolve_device,
)


def prior(
    data: Annotated[Path, typer.Argument(help="Dataset folder or shards.", show_default=False)],
    steps: Annotated[int, typer.Option("--steps", help="Training steps.")] = PRIOR_STEPS,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size.")] = PRIOR_BATCH,
    train_files: TrainFilesOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Fit a small class-conditional UNet diffusion prior (diffusers) on the data, cached; a
    killed run resumes from its last checkpoint.

    Example: [bold]ddcli prior data/cifar10 --train-files 'train_[123].npz'[/]
    """
    import torch

    from ddcli.priors import PriorRecipe, train_prior

    rep = Reporter(quiet or json_out)
    dev = torch.device(resolve_device(device))
    ds = load_cli_dataset(rep, data, "train", files=train_files)
    recipe = PriorRecipe(steps=steps, batch_size=batch_size)
    with rep.progress("diffusion prior", steps) as update:
        folder, cached = train_prior(ds, device=dev, cache=cache_dir(), recipe=recipe,
                                     progress=update)
    rep.info(f"prior {'found' if cached else 'trained'}: {folder} (use --prior {folder})")
    if json_out:
        print_json({"prior": str(folder), "cached": cached, "fingerprint": ds.fingerprint,
                    "recipe": recipe.key()})
