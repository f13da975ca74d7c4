"""``ddcli distill [DATA]``: run a distillation method and write a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ddcli.catalog import (
    ALPHA_SCHEDULES,
    AMPS,
    DTYPES,
    EXTRACTORS,
    FLOW_DENOMINATORS,
    INITS,
    KERNELS,
    METHODS,
    MODELS,
    OPTIMIZERS,
    REDUCTIONS,
    SAMPLERS,
    STEP_MODES,
)
from ddcli.cli.common import (
    ChannelsOpt,
    ConfigOpt,
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

PANEL_METHOD = "Method"
PANEL_DM = "DM family (dm, csdm, sdm, tgdd)"
PANEL_CSDM = "CSDM / SDM"
PANEL_TGDD = "TGDD"
PANEL_SFM = "SFM / LGM"
PANEL_OTGEN = "otgen"
PANEL_SOFT = "Soft labels"
PANEL_RUN = "Run and output"


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
    ipc: Annotated[
        int | None,
        typer.Option("--ipc", help="Images per class (default: 10).", rich_help_panel=PANEL_METHOD),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            "--iterations",
            help="Iterations (default: 20000; sample: 150).",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Learning rate on pixels (default: 1).", rich_help_panel=PANEL_METHOD
        ),
    ] = None,
    batch_real: Annotated[
        int | None,
        typer.Option(
            "--batch-real",
            help="Real images per class per iteration (default: 256; sample: 32).",
            rich_help_panel=PANEL_DM,
        ),
    ] = None,
    init: Annotated[
        Literal[INITS] | None,
        typer.Option(
            "--init",
            help="real | noise (default: real).",
            rich_help_panel=PANEL_DM,
            case_sensitive=False,
        ),
    ] = None,
    model: Annotated[
        Literal[MODELS] | None,
        typer.Option(
            "--model",
            help="Feature-extractor model (default: convnet).",
            rich_help_panel=PANEL_DM,
            case_sensitive=False,
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(
            "--width",
            help="Feature-extractor width (default: 128).",
            rich_help_panel=PANEL_DM,
        ),
    ] = None,
    amp: Annotated[
        Literal[AMPS] | None,
        typer.Option(
            "--amp",
            help="bf16 autocast of the network (default: off).",
            rich_help_panel=PANEL_METHOD,
            case_sensitive=False,
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Channels-last memory format (default: off).",
            rich_help_panel=PANEL_DM,
        ),
    ] = None,
    optimizer: Annotated[
        Literal[OPTIMIZERS] | None,
        typer.Option(
            "--optimizer",
            help="csdm/sdm: adamw | sgd (default: adamw).",
            rich_help_panel=PANEL_CSDM,
            case_sensitive=False,
        ),
    ] = None,
    kernel: Annotated[
        Literal[KERNELS] | None,
        typer.Option(
            "--kernel",
            help="csdm/sdm: gaussian | laplacian | cauchy | matern-0.5 | matern-1.5 | matern-2.5.",
            rich_help_panel=PANEL_CSDM,
            case_sensitive=False,
        ),
    ] = None,
    sigma: Annotated[
        str | None,
        typer.Option(
            "--sigma",
            help="csdm/sdm: kernel bandwidth or 'median' (default: 1.0).",
            rich_help_panel=PANEL_CSDM,
        ),
    ] = None,
    num_freqs: Annotated[
        int | None,
        typer.Option(
            "--num-freqs",
            help="csdm/sdm: frequencies per iteration (default: 4096).",
            rich_help_panel=PANEL_CSDM,
        ),
    ] = None,
    reduction: Annotated[
        Literal[REDUCTIONS] | None,
        typer.Option(
            "--reduction",
            help="csdm/sdm: sqrt-mean | mean.",
            rich_help_panel=PANEL_CSDM,
            case_sensitive=False,
        ),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option(
            "--scale", help="csdm/sdm: loss scale (default: 300).", rich_help_panel=PANEL_CSDM
        ),
    ] = None,
    alpha_schedule: Annotated[
        Literal[ALPHA_SCHEDULES] | None,
        typer.Option(
            "--alpha-schedule",
            help="csdm: log-linear | two-group | constant.",
            rich_help_panel=PANEL_CSDM,
            case_sensitive=False,
        ),
    ] = None,
    alpha_head: Annotated[
        float | None,
        typer.Option(
            "--alpha-head",
            help="csdm: amplitude weight of the largest class (default: 0.7).",
            rich_help_panel=PANEL_CSDM,
        ),
    ] = None,
    alpha_tail: Annotated[
        float | None,
        typer.Option(
            "--alpha-tail",
            help="csdm: amplitude weight of the smallest class (default: 0.3).",
            rich_help_panel=PANEL_CSDM,
        ),
    ] = None,
    extractor: Annotated[
        Literal[EXTRACTORS] | None,
        typer.Option(
            "--extractor",
            help="csdm/sdm: random | pool (networks pre-trained on the data, cached).",
            rich_help_panel=PANEL_CSDM,
            case_sensitive=False,
        ),
    ] = None,
    pool_size: Annotated[
        int | None,
        typer.Option(
            "--pool-size",
            help="csdm/sdm: networks in the pool (20).",
            rich_help_panel=PANEL_CSDM,
        ),
    ] = None,
    pool_epochs: Annotated[
        int | None,
        typer.Option(
            "--pool-epochs", help="csdm/sdm: their epochs (60).", rich_help_panel=PANEL_CSDM
        ),
    ] = None,
    factor: Annotated[
        int | None,
        typer.Option(
            "--factor",
            help="Multi-formation: each stored image holds "
            "f×f sub-images (default: 1; tgdd: by IPC).",
            rich_help_panel=PANEL_DM,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            help="tgdd: weight of the constraint cross-entropy (default: by IPC).",
            rich_help_panel=PANEL_TGDD,
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            "--window", help="tgdd: expert window in epochs (7).", rich_help_panel=PANEL_TGDD
        ),
    ] = None,
    num_experts: Annotated[
        int | None,
        typer.Option(
            "--num-experts", help="tgdd: expert trajectories (5).", rich_help_panel=PANEL_TGDD
        ),
    ] = None,
    expert_epochs: Annotated[
        int | None,
        typer.Option(
            "--expert-epochs", help="tgdd: epochs per trajectory (60).", rich_help_panel=PANEL_TGDD
        ),
    ] = None,
    step_mode: Annotated[
        Literal[STEP_MODES] | None,
        typer.Option(
            "--step-mode",
            help="tgdd: per-class (reference) | joint.",
            rich_help_panel=PANEL_TGDD,
            case_sensitive=False,
        ),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            "--backbone",
            help="sfm/lgm: frozen backbone: "
            "efficientnet-lite0 (default), timm:NAME, "
            "a torchvision name, torchscript.",
            rich_help_panel=PANEL_SFM,
        ),
    ] = None,
    backbone_weights: Annotated[
        str | None,
        typer.Option(
            "--backbone-weights",
            help="sfm/lgm: its weights file (safetensors or state dict).",
            rich_help_panel=PANEL_SFM,
        ),
    ] = None,
    augs: Annotated[
        int | None,
        typer.Option(
            "--augs",
            help="sfm/lgm: augmented views per step (sfm 1, lgm 10).",
            rich_help_panel=PANEL_SFM,
        ),
    ] = None,
    pyramid_every: Annotated[
        int | None,
        typer.Option(
            "--pyramid-every",
            help="sfm/lgm: add a pyramid level every N steps (200).",
            rich_help_panel=PANEL_SFM,
        ),
    ] = None,
    golden_head_epochs: Annotated[
        int | None,
        typer.Option(
            "--golden-head-epochs",
            help="sfm/lgm: epochs of the stored full-data head (10; 0: none).",
            rich_help_panel=PANEL_SFM,
        ),
    ] = None,
    flow_denominator: Annotated[
        Literal[FLOW_DENOMINATORS] | None,
        typer.Option(
            "--flow-denominator",
            help="sfm: images (N − 1, the official code's) | classes.",
            rich_help_panel=PANEL_SFM,
            case_sensitive=False,
        ),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(
            "--prior",
            help="otgen: a local diffusers pipeline folder "
            "(default: train a UNet prior on the data).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    prior_steps: Annotated[
        int | None,
        typer.Option(
            "--prior-steps",
            help="otgen: training steps of that prior.",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    prior_batch: Annotated[
        int | None,
        typer.Option(
            "--prior-batch",
            help="otgen: training batch size of that prior (128).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    prior_channels: Annotated[
        str | None,
        typer.Option(
            "--prior-channels",
            help="otgen: UNet block widths of that prior, e.g. 64,128,128.",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    sampler: Annotated[
        Literal[SAMPLERS] | None,
        typer.Option(
            "--sampler",
            help="otgen: ddpm (ancestral, IGD's) | ddim.",
            rich_help_panel=PANEL_OTGEN,
            case_sensitive=False,
        ),
    ] = None,
    sampling_steps: Annotated[
        int | None,
        typer.Option(
            "--sampling-steps",
            help="otgen: sampling steps per sample (50).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    cfg_scale: Annotated[
        float | None,
        typer.Option(
            "--cfg-scale",
            help="otgen: classifier-free guidance (4 for DiT priors as IGD, 2 for UNets).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    ot_scale: Annotated[
        float | None,
        typer.Option(
            "--ot-scale",
            help="otgen: OT guidance in units of IGD's step (5, IGD's k; 0: off).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    ot_reg: Annotated[
        float | None,
        typer.Option(
            "--ot-reg", help="otgen: Sinkhorn regulariser (0.05).", rich_help_panel=PANEL_OTGEN
        ),
    ] = None,
    dev_scale: Annotated[
        float | None,
        typer.Option(
            "--dev-scale",
            help="otgen: IGD's deviation guidance (0: off; IGD 50-120 for DiT).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
    real_per_class: Annotated[
        int | None,
        typer.Option(
            "--real-per-class",
            help="otgen: real samples per class in the OT cost (256).",
            rich_help_panel=PANEL_OTGEN,
        ),
    ] = None,
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
            help="Save a checkpoint next to the output every N iterations (0: never).",
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
) -> None:
    """Distill a dataset into a few synthetic images per class and write a bundle.

    Example: [bold]ddcli distill data/cifar10 --train-files 'train_[123].npz' --ipc 10
    -o cifar10-dm-ipc10.safetensors[/]
    """
    from ddcli.api import distill as run_distill

    options = dict(
        ipc=ipc,
        iterations=iterations,
        lr=lr,
        batch_real=batch_real,
        init=init,
        model=model,
        width=width,
        amp=amp,
        channels_last=channels_last,
        optimizer=optimizer,
        kernel=kernel,
        sigma=sigma,
        num_freqs=num_freqs,
        reduction=reduction,
        scale=scale,
        alpha_schedule=alpha_schedule,
        alpha_head=alpha_head,
        alpha_tail=alpha_tail,
        extractor=extractor,
        pool_size=pool_size,
        pool_epochs=pool_epochs,
        factor=factor,
        alpha=alpha,
        window=window,
        num_experts=num_experts,
        expert_epochs=expert_epochs,
        step_mode=step_mode,
        backbone=backbone,
        backbone_weights=backbone_weights,
        augs=augs,
        pyramid_every=pyramid_every,
        golden_head_epochs=golden_head_epochs,
        flow_denominator=flow_denominator,
        prior=prior,
        prior_steps=prior_steps,
        prior_batch=prior_batch,
        sampling_steps=sampling_steps,
        sampler=sampler,
        prior_channels=prior_channels,
        cfg_scale=cfg_scale,
        ot_scale=ot_scale,
        ot_reg=ot_reg,
        dev_scale=dev_scale,
        real_per_class=real_per_class,
    )
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
        verbose=Reporter(quiet, json_out),
        command=command_line(),
        **options,
    )
    if json_out and report:  # under torchrun only rank 0 reports
        print_json(report)
