"""``ddcli relabel BUNDLE``: a new bundle with soft labels from teachers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ddcli.catalog import CALIBRATIONS, LIA_SCHEDULE, TEACHER_ARCHS
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
    TrainFilesOpt,
    command_line,
    load_cli_dataset,
    print_json,
    resolve_device,
)
from ddcli.errors import InputError

if TYPE_CHECKING:
    import torch


def get_teachers(rep: Reporter, *, files: list[Path], archs: list[str], data: Path | None,
                 train_files: str | None, bundle, device: torch.device, seed: int,
                 epochs: int | None, data_cache: str = "auto", skip_bad: bool = False,
                 ) -> tuple[list, list[dict]]:
    """Load ``--teacher`` files and train (or fetch cached) ``--train-teacher`` ones."""
    from ddcli.data import sample_dir
    from ddcli.evaluation import as_distilled, check_classes
    from ddcli.teachers import check_distinct_teachers, check_teacher, load_teacher

    teachers = [load_teacher(f).to(device) for f in files]
    for t in teachers:  # before any --train-teacher teacher trains
        check_teacher(t, bundle.classes, int(bundle.images.shape[1]))
    check_distinct_teachers(teachers)
    log = [{"teacher": str(f), "source": "file", "val_accuracy": t.val_accuracy}
           for f, t in zip(files, teachers, strict=True)]
    if archs:
        builtin = bool(bundle.dataset.get("subset", {}).get("builtin_sample"))
        if data is None and not builtin:
            raise InputError("--train-teacher needs --data DATA (the real training data)")
        size = tuple(bundle.dataset.get("image_size") or bundle.images.shape[2:])
        chans = int(bundle.dataset.get("channels") or bundle.images.shape[1])
        ds = load_cli_dataset(rep, data or sample_dir(), "train", files=train_files,
                              image_size=size, conform="the bundle's", channels=chans,
                              cache=data_cache, skip_bad=skip_bad,
                              skip_flag="--skip-bad")
        check_classes(bundle, ds, "--data")
        source = ds.fingerprint
        # the teachers learn the data the bundle was distilled from (its recorded per-class
        # cap or long-tailed subset), as ``distill --relabel``'s do
        ds = as_distilled(ds, bundle, rep.warn, "--data")
        from ddcli.teachers import train_teachers

        # the whole --data's fingerprint, kept with the teachers: evaluate's test-leak check
        trained, trained_log = train_teachers(
            rep, ds, archs, device, seed, epochs,
            source_fingerprint=source if source != ds.fingerprint else None)
        teachers += trained
        log += trained_log
        check_distinct_teachers(teachers)  # a --teacher file that is a trained one's cache
    if not teachers:
        raise InputError("no teacher: pass --teacher FILE or --train-teacher ARCH")
    return teachers, log


def relabel(
    bundle: Annotated[Path, typer.Argument(help="Bundle file.", show_default=False)],
    teacher: Annotated[
        list[Path] | None, typer.Option("--teacher", help="A teacher file (repeatable).")
    ] = None,
    train_teacher_arch: Annotated[
        list[str] | None,
        typer.Option("--train-teacher",
                     help="Train (or reuse a cached) teacher of this architecture "
                          f"(repeatable): {', '.join(TEACHER_ARCHS)}."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Real data to train teachers on (default for "
                                                 "bundles of the built-in sample: the sample).")
    ] = None,
    train_files: TrainFilesOpt = None,
    data_cache: DataCacheOpt = "auto",
    skip_bad: SkipBadOpt = False,
    teacher_epochs: Annotated[
        int | None, typer.Option("--teacher-epochs", help="Override the recipe's epochs.")
    ] = None,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Soft labels are softmax(logits / T).")
    ] = 1.0,
    num_teachers: Annotated[
        int | None, typer.Option("--num-teachers", help="Average this many teachers (the "
                                                        "simplest), overriding the LIA schedule.")
    ] = None,
    lia_schedule: Annotated[
        str, typer.Option("--lia-schedule", help="IPC:teachers pairs: up to IPC a, average b.")
    ] = LIA_SCHEDULE,
    calibrate: Annotated[
        Literal[CALIBRATIONS] | None,
        typer.Option("--calibrate", help="adsa: class-prior calibration for long-tailed data.",
                     case_sensitive=False),
    ] = None,
    views: Annotated[
        int, typer.Option("--views", help="Also store labels for K recorded augmentations per "
                                          "image (replayed exactly by evaluate).")
    ] = 0,
    out: OutOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Write a new bundle whose soft labels come from teachers (the input is never edited).

    Example: [bold]ddcli relabel dm.safetensors --data data/cifar10 --train-files
    'train_[123].npz' --train-teacher convnet -o dm-soft.safetensors[/]
    """
    from ddcli.distributed import single_process

    single_process("relabel")  # before any work: every rank would run it whole
    import torch

    from ddcli.bundle import (
        STORAGE_DTYPES,
        check_bundle_name,
        dtype_name,
        load_bundle,
        save_bundle,
    )
    from ddcli.configs import check_option_value
    from ddcli.data import check_out_not_data
    from ddcli.io import check_writable
    from ddcli.relabel import (
        RelabelSettings,
        check_relabelable,
        parse_schedule,
        relabel_bundle,
        views_storage_bytes,
    )
    from ddcli.teachers import check_distinct_archs

    rep = Reporter(quiet, json_out)
    dev = torch.device(resolve_device(device))
    settings = RelabelSettings(temperature=temperature, calibrate=calibrate, views=views,
                               num_teachers=num_teachers, schedule=parse_schedule(lia_schedule),
                               seed=seed)
    settings.validate()
    given = len(teacher or []) + len(train_teacher_arch or [])
    if num_teachers is not None and given and num_teachers > given:  # before any is trained
        raise InputError(f"--num-teachers {num_teachers} is more than the {given} teacher(s) "
                         "given (--teacher / --train-teacher)")
    if out is None:
        out = bundle.with_name(bundle.stem + "-relabel.safetensors")
    if out.resolve() == bundle.resolve():
        raise InputError("relabel writes a new bundle: choose another --out than the input")
    if any(out.resolve() == Path(t).resolve() for t in teacher or []):
        raise InputError("--out is one of the --teacher files: choose another file")
    check_out_not_data(out, {"--data": data})
    if teacher_epochs is not None:
        check_option_value("--teacher-epochs", teacher_epochs)
        if not train_teacher_arch:  # (it was ignored beside --teacher files)
            raise InputError("--teacher-epochs sets the training of --train-teacher teachers: "
                             "pass --train-teacher too")
    if not train_teacher_arch:  # the real data's options serve --train-teacher alone
        for flag, given_ in (("--data", data is not None),
                             ("--train-files", train_files is not None),
                             ("--skip-bad", skip_bad),
                             ("--data-cache", data_cache.lower() != "auto")):
            if given_:
                raise InputError(f"{flag} is about the real data --train-teacher teachers "
                                 "learn: pass --train-teacher too (--teacher files are already "
                                 "trained)")
    check_distinct_archs(list(train_teacher_arch or []), "--train-teacher")
    check_bundle_name(out)
    check_writable(out, force)
    b = load_bundle(bundle, warn=rep.warn)
    check_relabelable(b)  # before any teacher is trained
    t0 = time.perf_counter()
    teachers, log = get_teachers(rep, files=list(teacher or []),
                                 archs=list(train_teacher_arch or []), data=data,
                                 train_files=train_files, bundle=b, device=dev, seed=seed,
                                 epochs=teacher_epochs, data_cache=data_cache.lower(),
                                 skip_bad=skip_bad)
    n = int(b.images.shape[0])
    if views:
        cost = views_storage_bytes(n, views, b.num_classes)
        rep.info(f"--views {views}: {n * views} labelled views add {cost / 1e6:.2f} MB to the "
                 "bundle")
    t1 = time.perf_counter()
    with rep.progress("labelling", None, unit="images") as update:
        new = relabel_bundle(b, teachers, settings, device=dev, command=command_line(),
                             progress=update)
    relabel_s = time.perf_counter() - t1
    # the parent's storage dtype where ddcli writes it (another tool's bfloat16: float32)
    dtype = dtype_name(b.images.dtype)
    save_bundle(new, out, force=force, dtype=dtype if dtype in STORAGE_DTYPES else "float32")
    step = new.provenance[-1]
    size = out.stat().st_size
    rep.info(f"wrote {out}: soft labels from {len(step['teachers'])} of {len(teachers)} "
             f"teacher(s) at T={temperature}"
             + (f", ADSA tau={step['calibrate']['tau']}" if step["calibrate"] else "")
             + f"; {size / 1e6:.2f} MB; relabel {relabel_s:.2f} s")
    if json_out:
        print_json({"bundle": str(out), "checksum": new.checksum,
                    "content_checksum": new.content_checksum, "parent": str(bundle),
                    "parent_checksum": b.checksum, "teachers": log, "relabel": step,
                    "relabel_time_s": round(relabel_s, 3),
                    "total_time_s": round(time.perf_counter() - t0, 3), "bundle_bytes": size})
