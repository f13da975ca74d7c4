"""``ddcli experts DATA``: build (or find) the cached expert trajectories TGDD uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddcli.catalog import EXPERT_EPOCHS
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


def experts(
    data: Annotated[Path, typer.Argument(help="Dataset folder or shards.", show_default=False)],
    num: Annotated[int, typer.Option("--num", help="Trajectories.")] = 5,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Epochs per trajectory (a snapshot after each).")
    ] = EXPERT_EPOCHS,
    model: Annotated[str, typer.Option("--model", help="Architecture.")] = "convnet",
    width: Annotated[int, typer.Option("--width", help="Network width.")] = 128,
    train_files: TrainFilesOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Train and cache expert trajectories for `distill -m tgdd` (CI jobs prepare them once).

    Example: [bold]ddcli experts data/cifar10 --train-files 'train_[123].npz' --num 5[/]
    """
    import torch

    from ddcli.experts import build_experts

    rep = Reporter(quiet or json_out)
    dev = torch.device(resolve_device(device))
    ds = load_cli_dataset(rep, data, "train", files=train_files)
    with rep.progress(f"experts ({num} x {model})", epochs) as update:
        paths = build_experts(ds, num=num, device=dev, cache=cache_dir(), arch=model,
                              epochs=epochs, width=width, progress=update,
                              info=rep.info)
    rep.info(f"{len(paths)} trajectories in {paths[0].parent}")
    if json_out:
        print_json({"folder": str(paths[0].parent), "trajectories": [str(p) for p in paths],
                    "fingerprint": ds.fingerprint, "model": model, "epochs": epochs,
                    "width": width})
