"""``ddcli experts DATA``: build (or find) the cached expert trajectories TGDD uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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


@with_config_options("tgdd", ("num_experts", "expert_epochs", "model", "width"), after="data")
def experts(
    data: Annotated[Path, typer.Argument(help="Dataset folder or shards.", show_default=False)],
    train_files: TrainFilesOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    skip_bad: SkipBadOpt = False,
    max_per_class: MaxPerClassOpt = None,
    imbalance_factor: ImbalanceOpt = None,
    data_cache: DataCacheOpt = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also copy the trajectories into this "
                                                      "folder.")
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    **options: Any,
) -> None:
    """Train and cache expert trajectories for `distill -m tgdd` (CI jobs prepare them once).

    Use the data options and --seed of the later distill: the cache is keyed by both.
    Example: [bold]ddcli experts data/cifar10 --train-files 'train_[123].npz' --num-experts 5[/]
    """
    from ddcli.distributed import single_process

    single_process("experts")  # before any work: every rank would run it whole
    import torch

    from ddcli.configs import TGDDConfig
    from ddcli.experts import build_experts

    num_experts, expert_epochs = options["num_experts"], options["expert_epochs"]
    model, width = options["model"].lower(), options["width"]
    # distill's checks of these options (a width of 0 ended in an internal error here)
    TGDDConfig.build(num_experts=num_experts, expert_epochs=expert_epochs, model=model,
                     width=width)
    if out is not None:  # before hours of training, not after
        check_copy_folder(out, force)
    rep = Reporter(quiet, json_out)
    dev = torch.device(resolve_device(device))
    ds = load_cli_dataset(rep, data, "train", files=train_files, image_size=image_size,
                          channels=channels, skip_bad=skip_bad, max_per_class=max_per_class,
                          imbalance_factor=imbalance_factor, cache=data_cache.lower())
    with rep.progress(f"experts ({num_experts} x {model})", expert_epochs,
                      unit="epochs") as update:
        paths = build_experts(ds, num=num_experts, device=dev, cache=cache_dir(), arch=model,
                              epochs=expert_epochs, width=width, seed=seed, progress=update,
                              info=rep.info)
    folder = paths[0].parent
    rep.info(f"{len(paths)} trajectories in {folder}")
    if out is not None:
        copy_folder(paths, out, force)
        rep.info(f"copied them into {out}")
    if json_out:
        print_json({"folder": str(folder), "trajectories": [str(p) for p in paths],
                    "out": str(out) if out else None, "fingerprint": ds.fingerprint,
                    "model": model, "num_experts": num_experts, "expert_epochs": expert_epochs,
                    "width": width, "seed": seed})
