"""``ddcli evaluate BUNDLE``: train fresh models on a bundle under a named protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from ddcli import __version__
from ddcli.backbones import create_backbone
from ddcli.bundle import load_bundle
from ddcli.cli.common import (
    ConfigOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    Reporter,
    SeedOpt,
    device_label,
    load_cli_dataset,
    print_json,
    resolve_device,
    stdout_console,
    to_json,
)
from ddcli.data import imbalance_ratio, is_long_tailed, sample_dir
from ddcli.errors import InputError
from ddcli.evaluation import (
    bundle_views,
    check_classes,
    check_no_test_leak,
    evaluate_images,
    random_real_subset,
    same_subset,
    teachers_for,
    views_from,
)
from ddcli.io import atomic_write_bytes, check_writable
from ddcli.probe import centroid_indices, golden_head_accuracy, linear_probe
from ddcli.protocols import get_protocol, list_protocols
from ddcli.relabel import RelabelSettings, last_relabel_step, relabel_images


def _render(report: dict) -> None:
    con = stdout_console()
    p = report["protocol"]
    con.print(f"[bold]protocol[/] {p['name']}: {p['reference'] or ''}")
    if report.get("mode"):
        con.print(f"[bold]mode[/] {report['mode']}")
    if report.get("golden_head_test_accuracy") is not None:
        con.print(f"golden head (full-data linear probe, the ceiling): "
                  f"{report['golden_head_test_accuracy']:.2f} %")
    con.print("  " + json.dumps({k: v for k, v in p.items() if k not in ("name", "reference")}))
    t = Table(title=f"test accuracy (%) on {report['test']['num_images']} test images, "
                    f"{report['num_models']} models", title_justify="left")
    t.add_column("set")
    t.add_column("images", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("per model", justify="left")
    t.add_column("train s/model", justify="right")
    rows = [("bundle", report["result"])]
    if report.get("baseline"):
        rows.append((f"random real (IPC {report['baseline']['ipc']})", report["baseline"]))
    for name, r in rows:
        t.add_row(name, str(r["num_train_images"]),
                  f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}",
                  " ".join(f"{a:.2f}" for a in r["accuracy_per_model"]),
                  f"{r['train_time_per_model_s']:.2f}")
    con.print(t)
    if report.get("improvement_points") is not None:
        d = report["improvement_points"]
        con.print(f"improvement over random real: [bold]{d:+.2f}[/] points")
    ga = report["result"].get("group_accuracy")
    if ga:
        con.print("long-tailed groups (by real image count): " + ", ".join(
            f"{g} {ga[g]:.2f}" for g in ("many", "medium", "few") if g in ga)
            + ("; random real: " + ", ".join(
                f"{g} {report['baseline']['group_accuracy'][g]:.2f}"
                for g in ("many", "medium", "few") if g in ga) if report.get("baseline") else ""))
    classes = report["classes"]
    pc = report["result"]["per_class_accuracy"]
    con.print("per class: " + ", ".join(f"{c} {a:.1f}" for c, a in zip(classes, pc, strict=True)))


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
        str, typer.Option("--protocol", "-p", help=f"One of: {', '.join(list_protocols())}.")
    ] = "dm",
    models: Annotated[int, typer.Option("--models", help="Fresh models to train.")] = 5,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override the protocol's epochs (recorded).")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="random: also evaluate random real images "
                                                    "of the same IPC from --real.")
    ] = None,
    real: Annotated[
        Path | None, typer.Option("--real", help="Real data for --baseline random.")
    ] = None,
    real_files: Annotated[
        str | None, typer.Option("--real-files", help="Glob choosing the real shards.")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="linear-probe: evaluation backbone "
                                                    "(default: the bundle's).")
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
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Train fresh models on a bundle under a named protocol and report test accuracy.

    Example: [bold]ddcli evaluate cifar10-dm-ipc10.safetensors --test data/cifar10
    --test-files train_4.npz --baseline random --real data/cifar10 --real-files 'train_[123].npz'[/]
    """
    rep = Reporter(quiet or json_out)
    dev = torch.device(resolve_device(device))
    if models < 1:
        raise InputError(f"--models must be >= 1, got {models}")
    if baseline not in (None, "random", "centroids"):
        raise InputError(f"--baseline must be random or centroids, got {baseline!r}")
    if baseline == "centroids" and protocol != "linear-probe":
        raise InputError("--baseline centroids goes with --protocol linear-probe")
    proto = get_protocol(protocol, epochs=epochs)
    if out is not None:
        check_writable(out, force)
    b = load_bundle(bundle, warn=rep.warn)
    ds_info = b.dataset
    builtin = bool(ds_info.get("subset", {}).get("builtin_sample"))
    if test is None:
        if not builtin:
            raise InputError("--test is required (the test data to measure accuracy on)")
        test = sample_dir()
    if baseline is not None and real is None:
        if not builtin:
            raise InputError(f"--baseline {baseline} needs --real DATA (the real training data)")
        real = sample_dir()
    size = tuple(ds_info.get("image_size") or b.images.shape[2:])
    chans = int(ds_info.get("channels") or b.images.shape[1])
    test_ds = load_cli_dataset(rep, test, "test", files=test_files, image_size=size,
                               channels=chans)
    check_classes(b, test_ds)
    if is_long_tailed(ds_info.get("class_counts")) and imbalance_ratio(test_ds.class_counts) > 1.1:
        rep.warn("the test set is not balanced: long-tailed results assume a balanced test set")
    if test_ds.fingerprint == ds_info.get("fingerprint"):
        rep.warn("the test data is the data the bundle was distilled from")
    mean, std = ds_info["mean"], ds_info["std"]
    ipc = b.ipc
    if proto.name == "linear-probe":
        report = _linear_probe_report(rep, b, bundle, test_ds, proto, models, seed, dev, backbone,
                                      backbone_weights, inherit, baseline, real, real_files,
                                      size, chans)
        _finish(rep, report, out, json_out)
        return
    if inherit:
        raise InputError("--inherit goes with --protocol linear-probe")
    soft_protocol = proto.loss in ("kd", "otm")
    if soft_protocol and b.soft_labels is None:
        raise InputError(f"protocol {proto.name} needs soft labels: run 'ddcli relabel' first")
    step = last_relabel_step(b)
    temperature = float(step["temperature"]) if step else 1.0
    needs_teachers = proto.loss == "kd-online" or (baseline == "random" and soft_protocol)
    teachers = teachers_for(b, list(teacher or []), dev) if needs_teachers else []
    check_no_test_leak(b, teachers, test_ds)
    rep.info(f"protocol {proto.name}: {json.dumps(proto.to_dict())}")

    def run(images, labels, label, soft=None, views=None):
        with rep.progress(f"training {models} models ({label})",
                          proto.train_epochs()) as update:
            return evaluate_images(images, labels, mean=mean, std=std, test=test_ds,
                                   protocol=proto, num_models=models, seed=seed, device=dev,
                                   progress=update, soft=soft, views=views, teachers=teachers,
                                   temperature=temperature,
                                   class_counts=ds_info.get("class_counts"),
                                   calibration=(step or {}).get("calibrate"))

    views = bundle_views(b) if soft_protocol else None
    images, labels, soft_labels = b.decoded()  # multi-formation images, decoded
    if b.factor > 1:
        rep.info(f"decoding factor {b.factor}: {len(b.labels)} stored images -> "
                 f"{len(labels)} training images")
    result = run(images, labels, "bundle", soft_labels, views)
    report = _report_head(b, bundle, proto, models, seed, dev, test_ds)
    report["soft_labels"] = {
        "temperature": temperature, "views": bool(views),
        "relabel": {k: step.get(k) for k in ("teachers", "lia", "calibrate")},
    } if step else None
    report["result"] = result
    if baseline == "random":
        real_ds = _baseline_real_data(rep, b, baseline, real, real_files, size, chans)
        sub = random_real_subset(real_ds, ipc, seed)  # the same storage: IPC images
        pixels = sub.images.float() / 255.0
        soft, extras = None, {}
        if soft_protocol:  # relabelled by the same teachers, with the same settings
            rec = step or {}
            settings = RelabelSettings(
                temperature=temperature,
                calibrate=(rec.get("calibrate") or {}).get("method"),
                views=(rec.get("views") or {}).get("k", 0), num_teachers=len(teachers),
                seed=seed)
            prior = torch.tensor(ds_info.get("class_counts") or [1] * b.num_classes,
                                 dtype=torch.float32).clamp_min(1)
            soft, extras, _ = relabel_images(pixels, sub.labels, teachers, settings, ipc=ipc,
                                             prior=prior, mean=mean, std=std, device=dev)
        base = run(pixels, sub.labels, "random real", soft, views_from(extras, step))
        base.update(ipc=ipc, source=real_ds.source, selection_seed=seed,
                    relabelled=soft_protocol)
        _attach_baseline(report, base)
    _finish(rep, report, out, json_out)


def _report_head(b, bundle_path, proto, models, seed, dev, test_ds) -> dict:
    """What every evaluation report starts with: the bundle, the protocol, the run, the test."""
    return {
        "bundle": str(bundle_path),
        "bundle_checksum": b.checksum,
        "method": b.method,
        "ipc": b.ipc,
        "factor": b.factor,
        "classes": b.classes,
        "protocol": proto.to_dict(),
        "num_models": models,
        "seed": seed,
        "device": device_label(str(dev)),
        "torch": torch.__version__,
        "ddcli_version": __version__,
        "test": {"source": test_ds.source, "fingerprint": test_ds.fingerprint,
                 "num_images": len(test_ds)},
    }


def _baseline_real_data(rep, b, baseline, real, real_files, size, chans):
    """The real data a baseline draws from: the bundle's classes, and its recorded subset."""
    if b.ipc is None:
        raise InputError(f"--baseline {baseline} needs a bundle with the same IPC in every class")
    real_ds = load_cli_dataset(rep, real, "train", files=real_files, image_size=size,
                               channels=chans)
    check_classes(b, real_ds, "real")
    real_ds = same_subset(real_ds, b.dataset.get("subset") or {})
    if real_ds.fingerprint != b.dataset.get("fingerprint"):
        rep.warn("the --real data is not the data the bundle was distilled from "
                 "(fingerprints differ)")
    return real_ds


def _attach_baseline(report: dict, base: dict) -> None:
    report["baseline"] = base
    report["improvement_points"] = round(
        report["result"]["accuracy_mean"] - base["accuracy_mean"], 2)


def _finish(rep: Reporter, report: dict, out: Path | None, json_out: bool) -> None:
    if out is not None:
        atomic_write_bytes(out, (to_json(report) + "\n").encode())
        rep.info(f"wrote report {out}")
    if json_out:
        print_json(report)
    else:
        _render(report)


def _linear_probe_report(rep, b, bundle_path, test_ds, proto, models, seed, dev, backbone,
                         backbone_weights, inherit, baseline, real, real_files, size, chans):
    """The linear-probe protocol (frozen backbone), with or without classifier inheritance."""
    distill_bb = b.config.get("backbone")
    name = backbone or distill_bb
    if not name:
        raise InputError("--protocol linear-probe needs --backbone (the bundle names none)")
    weights = backbone_weights or (b.config.get("backbone_weights") if name == distill_bb
                                   else None)
    bb = create_backbone(name, weights).to(dev)
    golden, golden_bb = None, None
    if "golden_head.weight" in b.extras:
        golden_bb = bb if name == distill_bb and not backbone_weights else create_backbone(
            distill_bb, b.config.get("backbone_weights")).to(dev)
        golden = (b.extras["golden_head.weight"], b.extras["golden_head.bias"])
    elif inherit:
        raise InputError("--inherit needs a bundle with a golden head (distill sfm/lgm with "
                         "--golden-head-epochs > 0)")
    images, labels, _ = b.decoded()
    counts = b.dataset.get("class_counts")

    def run(pixels, labs, label, golden_arg):
        with rep.progress(f"{models} linear probes ({label})", proto.epochs) as update:
            return linear_probe(pixels, labs, test_ds.images, test_ds.labels, b.num_classes, bb,
                                num_models=models, epochs=proto.epochs, seed=seed, device=dev,
                                golden=golden_arg, golden_bb=golden_bb, class_counts=counts,
                                progress=update)

    result = run(images, labels, "bundle", golden if inherit else None)
    report = _report_head(b, bundle_path, proto, models, seed, dev, test_ds)
    report.update(
        mode=result["mode"],
        result=result,
        golden_head_test_accuracy=golden_head_accuracy(
            golden, golden_bb, test_ds.images, test_ds.labels, dev) if golden else None,
    )
    if baseline is not None:
        real_ds = _baseline_real_data(rep, b, baseline, real, real_files, size, chans)
        if baseline == "random":
            sub = random_real_subset(real_ds, b.ipc, seed)
        else:  # the real images nearest the class means, in the evaluation backbone
            feats = bb.embed_all(real_ds.images.float() / 255, dev)
            sub = real_ds.select(centroid_indices(feats, real_ds.labels.to(dev), b.num_classes,
                                                  b.ipc).cpu())
        base = run(sub.images.float() / 255, sub.labels, f"{baseline} real",
                   golden if inherit else None)
        base.update(ipc=b.ipc, source=real_ds.source, selection_seed=seed, kind=baseline)
        _attach_baseline(report, base)
    return report
