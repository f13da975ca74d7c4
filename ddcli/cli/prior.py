"""``ddcli prior DATA``: train (or find) the cached diffusion prior that otgen uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddcli.cli.common import (
    ChannelsOpt,
    ConfigOpt,
    DeviceOpt,
    ForceOpt,
    ImageSizeOpt,
    ImbalanceOpt,
    JsonOpt,
    MaxPerClassOpt,
    QuietOpt,
    Reporter,
    SeedOpt,
    SkipBadOpt,
    TrainFilesOpt,
    cache_dir,
    check_copy_folder,
    copy_folder,
    load_cli_dataset,
    print_json,
    resolve_device,
)
from ddcli.cli.method_options import with_config_options


@with_config_options("otgen", ("prior_steps", "prior_batch", "prior_channels", "prior_ema"),
                     after="data")
def prior(
    data: Annotated[Path, typer.Argument(help="Dataset folder or shards.", show_default=False)],
    train_files: TrainFilesOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    skip_bad: SkipBadOpt = False,
    max_per_class: MaxPerClassOpt = None,
    imbalance_factor: ImbalanceOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also copy the pipeline into this folder "
                                                      "(for distill --prior OUT).")
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    **options: Any,
) -> None:
    """Fit a small class-conditional UNet diffusion prior (diffusers) on the data, cached; a killed run resumes from its last checkpoint.

    With the data options, prior options and --seed of a later [bold]distill -m otgen[/],
    that run finds it in the cache. Example: [bold]ddcli prior data/cifar10 --train-files
    'train_[123].npz'[/]
    """  # noqa: E501  (rich help shows the first paragraph's line breaks)
    from ddcli.distributed import single_process

    single_process("prior")  # before any work: every rank would run it whole
    import torch

    from ddcli.api import _int_tuple
    from ddcli.configs import OTGenConfig
    from ddcli.priors import PriorRecipe, train_prior

    # distill's checks of these options (a batch of 0 ended in an internal error here)
    recipe = PriorRecipe.of(OTGenConfig.build(
        prior_steps=options["prior_steps"], prior_batch=options["prior_batch"],
        prior_channels=_int_tuple(options["prior_channels"], "--prior-channels"),
        prior_ema=options["prior_ema"]))
    if out is not None:  # before the training, not after
        check_copy_folder(out, force)
    rep = Reporter(quiet, json_out)
    dev = torch.device(resolve_device(device))
    ds = load_cli_dataset(rep, data, "train", files=train_files, image_size=image_size,
                          channels=channels, skip_bad=skip_bad, max_per_class=max_per_class,
                          imbalance_factor=imbalance_factor)
    with rep.progress("diffusion prior", recipe.steps, unit="steps") as update:
        folder, cached = train_prior(ds, device=dev, cache=cache_dir(), recipe=recipe,
                                     seed=seed, progress=update)
    rep.info(f"prior {'found' if cached else 'trained'}: {folder}")
    if out is not None:
        copy_folder([folder], out, force)
        rep.info(f"copied it into {out} (use --prior {out})")
    if json_out:
        print_json({"prior": str(folder), "cached": cached, "out": str(out) if out else None,
                    "fingerprint": ds.fingerprint, "recipe": recipe.key(), "seed": seed})
