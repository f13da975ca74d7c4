"""The Python API: what the commands do, callable from a script.

``ddcli.distill(...)`` and ``ddcli.evaluate(...)`` are the functions behind ``ddcli distill``
and ``ddcli evaluate`` (the commands parse options, call them and print what they return);
``ddcli.load_bundle`` reads a bundle and ``ddcli.BundleDataset`` serves one to a
``torch.utils.data.DataLoader``. See ``docs/python-api.md``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.utils.data

from ddcli import __version__
from ddcli.bundle import Bundle, check_bundle_name, load_bundle, save_bundle
from ddcli.catalog import AMPS, CACHE_MODES, COMPILE_MODES, DTYPES, MAX_SEED
from ddcli.configs import typed_value
from ddcli.distributed import process_rank, rank_errors, under_torchrun
from ddcli.errors import InputError, Interrupted
from ddcli.io import path_argument as _path_arg

__all__ = ["BundleDataset", "distill", "evaluate", "load_bundle"]

#: the most models one evaluation trains (a typo of 10^12 allocated until it hung)
MAX_MODELS = 1000

PYTHON_COMMAND = "ddcli.{}() (Python API)"


def _reporter(verbose: bool | Any):
    """A Reporter: the one given (the CLI's), or a quiet one unless ``verbose``."""
    from ddcli.reporting import Reporter

    if isinstance(verbose, bool):
        return Reporter(quiet=not verbose)
    return verbose


def _other_rank_reporter():
    """The Reporter of a rank other than 0 under torchrun: silent, warnings included (rank 0
    says them once; 8 processes printed each 8 times)."""
    from ddcli.reporting import Reporter

    return Reporter(quiet=True, warnings=False)


# --------------------------------------------------------------------------------------------
# a bundle as a torch Dataset


class BundleDataset(torch.utils.data.Dataset):
    """The images of a bundle as a ``torch.utils.data.Dataset`` of ``(image, target)``.

    ``image`` is a float32 (C, H, W) tensor in pixel scale (0..1 for real images; synthetic
    pixels may leave that range and are not clamped), multi-formation images decoded.
    ``target`` is the class index (an ``int``), or with ``soft_labels=True`` the stored soft
    label (a float32 vector over the classes). ``transform`` (if given) is applied to the image.

    Attributes: ``classes`` (names), ``num_classes``, ``mean`` / ``std`` (the real data's
    per-channel normalisation, to normalise in ``transform``), ``bundle`` (the :class:`Bundle`).
    """

    def __init__(self, path: str | Path | Bundle, transform: Callable | None = None,
                 soft_labels: bool = False):
        typed_value("soft_labels", bool, soft_labels)
        if transform is not None and not callable(transform):
            raise InputError(f"transform must be a callable, got {transform!r}")
        self.bundle = path if isinstance(path, Bundle) else load_bundle(_path_arg("path", path))
        images, labels, soft = self.bundle.decoded()
        if soft_labels and soft is None:
            where = "the bundle" if isinstance(path, Bundle) else path  # (not its tensors)
            raise InputError(f"{where}: the bundle has no soft labels (run 'ddcli relabel')")
        self.images = images.float().contiguous()
        self.labels = labels
        self.soft = soft.float() if soft_labels else None
        self.transform = transform
        self.classes = self.bundle.classes
        self.num_classes = self.bundle.num_classes
        self.mean = self.bundle.dataset.get("mean")
        self.std = self.bundle.dataset.get("std")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        # copies: a transform that works in place (x.mul_, Normalize(inplace=True)) changed
        # the dataset's images (and a float32 bundle's own), compounding every epoch
        x = self.images[i].clone()
        if self.transform is not None:
            x = self.transform(x)
        y = self.soft[i].clone() if self.soft is not None else int(self.labels[i])
        return x, y


# --------------------------------------------------------------------------------------------
# distill


def _int_tuple(value: str | Sequence[int] | None, flag: str, minimum: int = 1,
               ) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):  # ("8,,16" was read as 8,16)
            values = tuple(int(v) for v in value.split(","))
        else:
            values = tuple(operator.index(v) for v in value)  # (1.5 was read as 1)
        assert values and min(values) >= minimum
    except (ValueError, TypeError, AssertionError):
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise InputError(f"{flag} must be {kind} separated by commas, got {value!r}") from None
    return values


def _whole(value: Any) -> int | None:
    """``value`` as a Python int when it is an integer (a Python, numpy or torch one, as the
    options take them: :func:`typed_value`'s rule), else None (a bool, a float, a str)."""
    try:
        return typed_value("", int, value)
    except InputError:
        return None


def _check_seed(seed: Any) -> int:
    """The command line's rule for a seed (an int in 0..MAX_SEED), for the Python API."""
    whole = _whole(seed)
    if whole is None or not 0 <= whole <= MAX_SEED:
        raise InputError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return whole


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` (any case) if it is one of ``choices``, lower-cased; else an InputError."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


def _device_arg(device: Any) -> str:
    """``device`` as the command line's spelling: a ``torch.device`` is taken as its name."""
    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise InputError(f"device must be a string (auto, cpu, cuda, cuda:N) or a torch.device, "
                         f"got {device!r}")
    return device


def _verbose_arg(verbose: Any) -> Any:
    """``verbose``: True / False (or the command line's own Reporter)."""
    from ddcli.reporting import Reporter

    if not isinstance(verbose, (bool, Reporter)):
        raise InputError(f"verbose must be True or False, got {verbose!r}")
    return verbose


def _name_arg(name: str, value: Any) -> str:
    """A name argument (a method, a protocol): a string."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be a name (a string), got {value!r}")
    return value


def _as_list(value: Any) -> list:
    """A sequence argument given one value (a name or a path) as a list of that one: a string
    is not taken for its characters."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, Path)) else list(value)


def distill(
    data: str | Path | None = None,
    *,
    method: str = "dm",
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    train_files: str | None = None,
    image_size: str | int | tuple[int, int] | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    max_per_class: int | None = None,
    imbalance_factor: float | None = None,
    relabel: bool = False,
    relabel_teacher: Sequence[str] | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    dtype: str = "float32",
    verbose: bool = False,
    command: str | None = None,
    data_cache: str = "auto",
    **options: Any,
) -> dict:
    """Distill ``data`` (a dataset folder or .npz shard; None: the built-in sample) with
    ``method`` and write a bundle; return what ``ddcli distill --json`` prints (``bundle``,
    ``checksum``, ``config``, ``stats``, ...).

    ``options`` are the method's options with underscores (``ipc=10``, ``iterations=500``,
    ``batch_real=64``, ...; ``ddcli list methods`` shows them). ``verbose`` shows progress on
    stderr.
    """

    from ddcli.distributed import env_world_size

    world = env_world_size()
    rank = process_rank(world)
    with rank_errors(rank):  # the command line's checks, before any work
        seed = _check_seed(seed)
        data, out = _path_arg("data", data, True), _path_arg("out", out, True)
        method, device = _name_arg("method", method), _device_arg(device)
        verbose = _verbose_arg(verbose)
        command = typed_value("command", str | None, command)  # (5 was recorded as a number)
        for name, value in (("force", force), ("skip_bad", skip_bad), ("relabel", relabel),
                            ("resume", resume)):
            typed_value(name, bool, value)
        train_files = typed_value("train_files", str | None, train_files)
        channels = typed_value("--channels", int | None, channels)
        max_per_class = typed_value("--max-per-class", int | None, max_per_class)
        imbalance_factor = typed_value("--imbalance-factor", float | None, imbalance_factor)
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
                or checkpoint_every < 0:
            raise InputError(f"--checkpoint-every must be an integer >= 0 (0: never), got "
                             f"{checkpoint_every!r}")
        dtype = _choice("dtype", dtype, DTYPES)
        data_cache = _choice("data_cache", data_cache, CACHE_MODES)
        if options.get("preset") is not None:  # (these collided with internal arguments)
            raise InputError("preset: presets are the built-in sample's (sample-cpu, used when "
                             "data is None); pass the method's options instead")
        options.pop("preset", None)
        for name in ("name", "world"):
            if options.get(name) is not None:
                raise InputError(f"unknown option {name!r} of method {method!r}")
        relabel_teacher = _as_list(relabel_teacher)
        if not all(isinstance(a, str) for a in relabel_teacher):
            raise InputError(f"relabel_teacher must be teacher names (strings), got "
                             f"{relabel_teacher!r}")
    with rank_errors(rank), _own_torch_state():  # torchrun: rank 0 reports
        return _distill(data, method=method, out=out, seed=seed, device=device, force=force,
                        train_files=train_files, image_size=image_size, channels=channels,
                        skip_bad=skip_bad, max_per_class=max_per_class,
                        imbalance_factor=imbalance_factor, relabel=relabel,
                        relabel_teacher=relabel_teacher, checkpoint_every=checkpoint_every,
                        resume=resume, dtype=dtype,
                        verbose=verbose if rank == 0 else _other_rank_reporter(),
                        command=command, world=world, data_cache=data_cache, **options)


@contextmanager
def _own_torch_state():
    """Run with torch's global state as ddcli needs it, and leave the caller's as it was:
    - the global random state: the runs draw from their own generators, but building a module
      draws its default initialisation from the global one (a script's
      ``torch.manual_seed(0)`` stream was moved by a distill or evaluate call);
    - gradients on and inference mode off (a call inside ``torch.no_grad()`` failed with an
      internal error, inside ``torch.inference_mode()`` blamed every image as unreadable);
    - float32 as the default dtype (``torch.set_default_dtype(torch.float64)`` failed)."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    dtype = torch.get_default_dtype()
    own_dtype = dtype != torch.float32  # (process-wide: touched only where it must be)
    if own_dtype:
        torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), \
                torch.enable_grad():
            yield
    finally:
        if own_dtype:
            torch.set_default_dtype(dtype)


def _int_tuple_options(method: str) -> list[str]:
    """The options of ``method``'s config that hold a tuple of ints (given as "a,b,c")."""
    from ddcli.configs import CONFIGS

    config = CONFIGS.get(method.lower())
    return [f.name for f in dataclasses.fields(config) if str(f.type).startswith("tuple[int")
            ] if config else []


def _distill(data, *, method, out, seed, device, force, train_files, image_size, channels,
             skip_bad, max_per_class, imbalance_factor, relabel, relabel_teacher,
             checkpoint_every, resume, dtype, verbose, command, world, data_cache,
             **options) -> dict:
    from ddcli.data import check_out_not_data
    from ddcli.io import check_writable, output_path
    from ddcli.methods import create_method
    from ddcli.reporting import resolve_device

    rep = _reporter(verbose)
    dev = resolve_device(device)
    overrides = {k: v for k, v in options.items() if v is not None}
    # (refusals here run inside distill()'s rank_errors: said once, by rank 0)
    for name in _int_tuple_options(method):  # "64,128" -> (64, 128)
        if isinstance(overrides.get(name), str):
            overrides[name] = _int_tuple(overrides[name], "--" + name.replace("_", "-"),
                                         minimum=0)  # the config checks its own ranges
    for name in ("backbone_weights", "prior"):  # recorded absolute: evaluate (and --resume)
        # from anywhere finds them, and a relative path names one folder
        if isinstance(overrides.get(name), str | Path) and str(overrides[name]):
            overrides[name] = str(Path(overrides[name]).expanduser().absolute())
    out = output_path(out) if out is not None else None
    if out is not None:  # fail before a slow read
        check_out_not_data(out, {"DATA": data})  # (the more pressing of the two)
        check_bundle_name(out)
        if world <= 1 or process_rank(world) == 0 or not under_torchrun():
            # rank 0 alone writes: under torchrun (which stops the others when rank 0 exits)
            # the others' file systems need not hold its output folder; under another
            # launcher every process still says a refusal at once (none waits in the group)
            check_writable(out, force)
            _check_checkpoint(out, resume, force)
    builtin = data is None
    preset = "sample-cpu" if builtin else None
    algo = create_method(method.lower(), preset=preset, **overrides)  # before reading
    if relabel:  # its options too, not after the whole distillation
        _check_relabel(algo, relabel_teacher)
    elif relabel_teacher:  # (it was ignored)
        raise InputError("--relabel-teacher chooses the teacher of --relabel: pass "
                         "--relabel too")
    if world > 1:
        why = algo.split_refusal()
        if why is None and relabel:
            why = ("--relabel does not run under torchrun; run 'ddcli relabel' on the "
                   "bundle after")
        if why is not None:
            raise InputError(f"{why} (WORLD_SIZE={world}); run it as one process, without "
                             "torchrun")
    if world > 1:
        from ddcli.distributed import joined

        with joined(dev) as ctx:
            return _distill_run(rep, algo, data, builtin, preset, out, seed, ctx.device, force,
                                train_files, image_size, channels, skip_bad, max_per_class,
                                imbalance_factor, relabel, relabel_teacher, checkpoint_every,
                                resume, dtype, command, ctx, data_cache)
    return _distill_run(rep, algo, data, builtin, preset, out, seed, dev, force, train_files,
                        image_size, channels, skip_bad, max_per_class, imbalance_factor, relabel,
                        relabel_teacher, checkpoint_every, resume, dtype, command, None,
                        data_cache)


def _check_relabel(algo, relabel_teacher: list[str]) -> None:
    """``distill --relabel``'s options, before the distillation (they failed after it)."""
    from ddcli.catalog import TEACHER_ARCHS
    from ddcli.teachers import check_distinct_archs

    bad = [a for a in relabel_teacher if a.lower() not in TEACHER_ARCHS]
    if bad:
        raise InputError(f"--relabel-teacher {bad[0]!r} is not one of "
                         f"{', '.join(TEACHER_ARCHS)}")
    relabel_teacher[:] = [a.lower() for a in relabel_teacher]
    check_distinct_archs(relabel_teacher, "--relabel-teacher")
    if getattr(algo, "factor", 1) > 1:
        raise InputError("--relabel does not label multi-formation images (factor > 1); pass "
                         "--factor 1, or relabel the decoded export")


def _check_checkpoint(out: Path, resume: bool, force: bool) -> Path:
    """The checkpoint path of ``out``; an earlier run's checkpoint there is not replaced (nor
    deleted at the end) unless asked: ``--resume`` continues it, ``--force`` starts over."""
    from ddcli.methods.base import checkpoint_path_for

    ckpt = checkpoint_path_for(out)
    if ckpt.exists() and not (resume or force):
        raise InputError(f"{ckpt} holds an earlier run's checkpoint: pass --resume to continue "
                         "it, or --force to start over")
    return ckpt


def _distill_run(rep, algo, data, builtin, preset, out, seed, dev, force, train_files,
                 image_size, channels, skip_bad, max_per_class, imbalance_factor, relabel,
                 relabel_teacher, checkpoint_every, resume, dtype, command, ctx,
                 data_cache="auto") -> dict:
    from ddcli.data import sample_dir
    from ddcli.io import check_writable, output_lock
    from ddcli.methods.base import checkpoint_notes, checkpoint_path_for, run_method
    from ddcli.reporting import device_label, load_dataset_reported

    dev = str(dev)
    path = sample_dir() if builtin else Path(data)
    ds = load_dataset_reported(
        rep, path, "train", files=train_files, image_size=image_size, channels=channels,
        skip_bad=skip_bad, max_per_class=max_per_class, imbalance_factor=imbalance_factor,
        cache=data_cache,
    )
    if ds.mapped is not None:
        rep.info(f"real images read through the data cache {ds.mapped.path.parent}")
    if builtin:
        ds.subset["builtin_sample"] = True
    if ctx is not None:  # (every rank distils its classes from its own copy)
        ctx.check_same_data(ds, "the data")
    if ctx is not None and ds.num_classes < ctx.world_size:
        raise InputError(f"{ctx.world_size} processes for {ds.num_classes} classes: use at "
                         "most one process per class")
    cfg = algo.config
    if out is None:
        out = Path(f"{ds.name}-{algo.name}-ipc{getattr(cfg, 'ipc', 0)}.safetensors")
    writer = ctx is None or ctx.is_main  # (rank 0 alone writes, and checks, the output)
    if writer:
        check_writable(out, force)  # again: the default name is known only now
    # one run at a time writes an output (rank 0 alone under torchrun)
    with output_lock(out) if writer else nullcontext():
        ckpt = _check_checkpoint(out, resume, force) if writer else checkpoint_path_for(out)
        info = ds.info()
        rep.info(
            f"{algo.name} on {ds.name}: {len(ds)} images, {ds.num_classes} classes, "
            f"{ds.channels}x{ds.image_size[0]}x{ds.image_size[1]}, device {dev}"
            + (f", preset {preset}" if preset else "")
        )
        algo.reporter = rep
        if command is None:
            command = PYTHON_COMMAND.format("distill")
        cpu_hint = ("a GPU (--device cuda) or fewer --iterations is faster"
                    if dev == "cpu" else None)
        # what follows the iterations, so that a resumed run that forgets it says so (it wrote
        # a bundle without the soft labels the interrupted run had asked for, without a word)
        teachers = list(relabel_teacher or ["convnet"])
        notes = {"relabel": ",".join(teachers)} if relabel else {}
        if resume and not relabel and ckpt.exists() and ctx is None:
            asked = checkpoint_notes(ckpt).get("relabel")
            if asked:
                rep.warn(f"the interrupted run asked for --relabel (teachers: {asked}); this one "
                         "does not, so its bundle gets hard labels only: add --relabel "
                         f"--relabel-teacher {asked.replace(',', ' --relabel-teacher ')} to "
                         "label it as asked")
        with rep.progress(f"distill ({algo.name})", algo.iterations, unit="iterations",
                          estimate=True, cpu_hint=cpu_hint) as update:
            syn, stats = run_method(
                algo, ds, device=dev, seed=seed, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                resume=resume, progress=update, warn=rep.warn, dist=ctx, keep_last=bool(relabel),
                notes=notes,
            )
        if ctx is not None and not ctx.is_main:  # rank 0 alone writes
            return {}
        recorded = {**algo.recorded_config(), "preset": preset}
        step = {"command": command, "step": "distill", "method": algo.name, "config": recorded,
                "stats": stats, "parent_checksum": None}
        if ctx is not None:
            step["world_size"] = ctx.world_size
        bundle = Bundle(
            images=syn.images,
            labels=syn.labels,
            extras=syn.extras,
            method=algo.name,
            config=recorded,
            dataset=info,
            seed=seed,
            device=device_label(dev),
            provenance=[step],
        )
        try:
            if relabel:  # the paper's pipeline in one command: LIA soft labels
                bundle, teacher_log = _relabel(rep, bundle, ds, teachers, dev, seed, command)
            checksum = save_bundle(bundle, out, force=force, dtype=dtype)
        except (KeyboardInterrupt, Interrupted):  # the iterations are done, and checkpointed
            if not ckpt.exists():
                raise
            raise Interrupted(f"interrupted after the {algo.iterations} iterations; checkpoint "
                              f"saved to {ckpt}; rerun with --resume to finish") from None
        if ckpt.exists():
            ckpt.unlink()
        rate = stats["iterations_per_s"]  # None: resumed with no iteration left
        rep.info(
            f"wrote {out}: {syn.images.shape[0]} images, IPC {getattr(cfg, 'ipc', '?')}, "
            + (f"{stats['wall_time_s']:.1f} s ({rate:.1f} it/s)" if rate else
               f"resumed after iteration {stats['resumed_from']}" if stats["resumed_from"]
               else "no iteration")
        )
        return {"bundle": str(out), "checksum": checksum,
                "content_checksum": bundle.content_checksum, "method": algo.name,
                "config": recorded, "seed": seed, "device": bundle.device,
                "dataset": {k: info[k] for k in ("name", "fingerprint", "num_images")},
                "stats": stats,
                **({"world_size": ctx.world_size} if ctx is not None else {}),
                # --relabel's step and teachers, as `relabel --json` reports them
                **({"relabel": bundle.provenance[-1], "teachers": teacher_log}
                   if relabel else {})}


def _relabel(rep, bundle: Bundle, ds, archs: list[str], device: str, seed: int, command: str):
    from ddcli.relabel import RelabelSettings, relabel_bundle
    from ddcli.teachers import train_teachers

    teachers, log = train_teachers(rep, ds, archs, torch.device(device), seed)
    bundle.checksum = ""
    with rep.progress("labelling", None, unit="images") as update:
        return relabel_bundle(bundle, teachers, RelabelSettings(seed=seed),
                              device=torch.device(device), command=command,
                              progress=update), log


# --------------------------------------------------------------------------------------------
# evaluate


def evaluate(
    bundle: str | Path,
    *,
    test: str | Path | None = None,
    test_files: str | None = None,
    protocol: str = "dm",
    models: int = 5,
    epochs: int | None = None,
    baseline: str | None = None,
    real: str | Path | None = None,
    real_files: str | None = None,
    backbone: str | None = None,
    backbone_weights: str | Path | None = None,
    inherit: bool = False,
    teacher: Sequence[str | Path] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    verbose: bool = False,
    compile: str = "auto",
    amp: str = "off",
    data_cache: str = "auto",
    skip_bad: bool = False,
) -> dict:
    """Train ``models`` fresh models on ``bundle`` under ``protocol`` and test them; return
    the report ``ddcli evaluate --json`` prints (``result.accuracy_mean``, ``per_class_accuracy``,
    ``baseline``, ...). ``out`` also writes it as JSON. ``test`` may be omitted for bundles
    of the built-in sample. ``data_cache`` (on / off / auto) reads the test set and the
    baseline's real set through the memory-mapped data cache, as ``distill`` does; ``skip_bad``
    skips their unreadable images with a warning count, as ``distill``'s does.

    Under ``torchrun`` the models are spread over the processes (each trains its block, with
    the random draws of a single process, so every model's accuracy equals the one-process
    figure on a CPU); rank 0 reports and writes ``out``, the others return ``{}``."""
    from ddcli.distributed import env_world_size

    world = env_world_size()
    with rank_errors(process_rank(world)):
        seed = _check_seed(seed)  # the command line's checks, before any work
        whole = _whole(models)
        models = models if whole is None else whole
        test, real, backbone_weights, out = (_path_arg(n, v, True) for n, v in (
            ("test", test), ("real", real), ("backbone_weights", backbone_weights),
            ("out", out)))
        bundle, protocol, device, verbose, epochs, baseline = _evaluate_args(
            bundle, protocol, device, verbose, epochs, baseline, test=test, real=real,
            backbone_weights=backbone_weights, out=out, force=force, inherit=inherit,
            skip_bad=skip_bad, test_files=test_files, real_files=real_files, backbone=backbone)
        compile = _choice("compile", compile, COMPILE_MODES)
        amp = _choice("amp", amp, AMPS)
        data_cache = _choice("data_cache", data_cache, CACHE_MODES)
        teacher = [_path_arg("teacher", t) for t in _as_list(teacher)]
        if world > 1 and protocol.lower() == "linear-probe":
            raise InputError(f"the linear-probe protocol does not run under torchrun "
                             f"(WORLD_SIZE={world}); run it as one process")
        if world > 1 and models < world:
            raise InputError(f"{world} processes for {models} models: use at most one "
                             "process per model")
    args = {k: v for k, v in locals().items()
            if k not in ("env_world_size", "world", "whole")}
    if world == 1:
        with _own_torch_state():
            return _evaluate(**args, ctx=None)
    from ddcli.distributed import joined
    from ddcli.reporting import resolve_device

    with rank_errors(process_rank(world)), joined(resolve_device(device)) as ctx, \
            _own_torch_state():
        return _evaluate(**{**args, "verbose": verbose if ctx.is_main else
                            _other_rank_reporter()}, ctx=ctx)


def _evaluate_args(bundle, protocol, device, verbose, epochs, baseline, **others):
    """evaluate()'s arguments checked as the command line's (types included), before any
    work: (bundle, protocol, device, verbose, epochs, baseline) as it uses them."""
    if isinstance(bundle, Bundle):
        raise InputError("evaluate takes a bundle file: write the Bundle with "
                         "ddcli.save_bundle first")
    if bundle is None:
        raise InputError("bundle must be a path (a str or Path), got None")
    bundle = _path_arg("bundle", bundle)  # (its others: expanded by evaluate)
    for name in ("force", "inherit", "skip_bad"):
        typed_value(name, bool, others[name])
    for name in ("test_files", "real_files", "backbone"):
        typed_value(name, str | None, others[name])
    if baseline is not None:
        baseline = _choice("baseline", baseline, ("random", "centroids"))
    return (bundle, _name_arg("protocol", protocol), _device_arg(device), _verbose_arg(verbose),
            typed_value("--epochs", int | None, epochs), baseline)


def _evaluate(bundle, *, test, test_files, protocol, models, epochs, baseline, real,
              real_files, backbone, backbone_weights, inherit, teacher, out, seed, device,
              force, verbose, compile, amp, data_cache, skip_bad, ctx) -> dict:
    from ddcli.configs import check_option_value
    from ddcli.data import (
        check_out_not_data,
        imbalance_ratio,
        is_long_tailed,
        resize_images,
        sample_dir,
    )
    from ddcli.evaluation import (
        bundle_views,
        check_classes,
        check_no_test_leak,
        evaluate_images,
        random_real_subset,
        teachers_for,
        views_from,
    )
    from ddcli.io import check_writable, output_path
    from ddcli.protocols import get_protocol
    from ddcli.relabel import RelabelSettings, last_relabel_step, relabel_images
    from ddcli.reporting import load_dataset_reported, resolve_device

    rep = _reporter(verbose)
    dev = ctx.device if ctx is not None else torch.device(resolve_device(device))
    bundle = Path(bundle)
    out = output_path(out) if out is not None else None
    real = Path(real) if real is not None else None
    protocol = protocol.lower()
    if isinstance(models, bool) or not isinstance(models, int) or not 1 <= models <= MAX_MODELS:
        raise InputError(f"--models must be an integer from 1 to {MAX_MODELS}, got {models!r}")
    if epochs is not None:
        check_option_value("--epochs", epochs)
    if out is not None and bundle.resolve() == out.resolve():  # (with --force it became JSON)
        raise InputError("--out is the bundle being evaluated: choose another file")
    if out is not None:  # (the defaults too: -o into the built-in sample replaced its shard)
        check_out_not_data(out, {"--test": test if test is not None else sample_dir(),
                                 "--real": real if real is not None else sample_dir()})
    if baseline not in (None, "random", "centroids"):
        raise InputError(f"--baseline must be random or centroids, got {baseline!r}")
    if baseline == "centroids" and protocol != "linear-probe":
        raise InputError("--baseline centroids goes with --protocol linear-probe")
    proto = get_protocol(protocol, epochs=epochs)
    # options that would change nothing are refused, not ignored (a typo'd --teacher file or
    # --real path passed silently)
    probe = proto.name == "linear-probe"
    if real is None and real_files:
        raise InputError("--real-files chooses shards of --real DATA: pass --real too")
    if real is not None and baseline is None:
        raise InputError("--real is the real data of a baseline: pass --baseline random (or "
                         "centroids)")
    if not probe and (backbone or backbone_weights):
        raise InputError("--backbone / --backbone-weights go with --protocol linear-probe")
    if probe and (amp != "off" or compile == "on" or teacher):
        raise InputError("--amp, --compile on and --teacher apply to the ConvNet protocols, "
                         "not to linear-probe")
    if out is not None and (ctx is None or ctx.is_main):  # rank 0 alone writes the report
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
    test_ds = load_dataset_reported(rep, Path(test), "test", files=test_files, image_size=size,
                                    conform="the bundle's", channels=chans,
                                    cache=data_cache,
                                    skip_bad=skip_bad, skip_flag="--skip-bad")
    if ctx is not None:  # (every rank tests its models on its own copy; first, so that a
        # copy with other classes is said once, by rank 0)
        ctx.check_same_data(test_ds, "the test data")
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
                                      size, chans, data_cache, skip_bad)
        return _finish(rep, report, out)
    if inherit:
        raise InputError("--inherit goes with --protocol linear-probe")
    soft_protocol = proto.loss in ("kd", "otm")
    if soft_protocol and b.soft_labels is None:
        raise InputError(f"protocol {proto.name} needs soft labels: run 'ddcli relabel' first")
    step = last_relabel_step(b)
    temperature = float(step["temperature"]) if step else 1.0
    needs_teachers = proto.loss == "kd-online" or (baseline == "random" and soft_protocol)
    if teacher and not needs_teachers:
        raise InputError(f"--teacher changes nothing under the {proto.name} protocol (it "
                         "serves kd-online, and a --baseline random under kd or otm)")
    teachers = teachers_for(b, [Path(t) for t in teacher or []], dev) if needs_teachers else []
    if (proto.loss == "kd-online" and teacher and step
            and (temperature != 1.0 or step.get("calibrate")) and not proto.temperature):
        rep.info(f"the --teacher outputs are softened at T {temperature:g}"
                 + (" and calibrated (adsa)" if step.get("calibrate") else "")
                 + " as the bundle's soft labels were")
    uses_soft = soft_protocol or proto.loss == "kd-online"
    if uses_soft:  # a hard-label protocol learns nothing from the teachers
        check_no_test_leak(b, teachers, test_ds)

    cpu_hint = ("a GPU (--device cuda), fewer --models or fewer --epochs is faster"
                if dev.type == "cpu" else None)

    def run(images, labels, label, soft=None, views=None):
        with rep.progress(f"training {models} models ({label})", proto.train_epochs(),
                          unit="epochs", estimate=True, cpu_hint=cpu_hint) as update:
            def test_progress(done: int, total: int) -> None:
                update(done, total=total, description=f"testing {models} models on "
                                                      f"{len(test_ds)} images ({label})",
                       unit="batches")

            return evaluate_images(images, labels, mean=mean, std=std, test=test_ds,
                                   protocol=proto, num_models=models, seed=seed, device=dev,
                                   progress=update, test_progress=test_progress,
                                   soft=soft, views=views, teachers=teachers,
                                   temperature=temperature,
                                   class_counts=ds_info.get("class_counts"),
                                   calibration=(step or {}).get("calibrate"),
                                   compile=compile, amp=amp, dist=ctx)

    views = bundle_views(b) if soft_protocol else None
    images, labels, soft_labels = b.decoded()  # multi-formation images, decoded
    if b.factor > 1:
        rep.info(f"decoding factor {b.factor}: {len(b.labels)} stored images -> "
                 f"{len(labels)} training images")
    # images of another size than the data's (a backbone method's --syn-res): the data's size
    resized_from = list(images.shape[2:]) if tuple(images.shape[2:]) != size else None
    if resized_from:
        rep.info(f"images resized from {resized_from[0]}x{resized_from[1]} to the data's "
                 f"{size[0]}x{size[1]} (antialiased) for the {proto.name} protocol's models")
        images = resize_images(images, size)
    real_ds = None  # read (and checked) before any model trains: a bad --real fails first
    if baseline == "random":
        real_ds = _baseline_real_data(rep, b, baseline, real, real_files, size, chans, data_cache,
                                      skip_bad, ctx)
    result = run(images, labels, "bundle", soft_labels, views)
    report = _report_head(b, bundle, proto, models, seed, dev, test_ds)
    if resized_from:
        report["images_resized_from"] = resized_from
    report["soft_labels"] = {
        "used": soft_protocol, "temperature": temperature, "views": bool(views),
        "relabel": {k: step.get(k) for k in ("teachers", "lia", "calibrate")},
    } if step else None
    # the KD temperature that ran (the protocol's, else the relabel step's, else 1): kd-online
    # softens its teachers' outputs with it, and calibrates them as the relabel step did
    report["temperature_used"] = (proto.temperature or temperature
                                  if proto.loss in ("kd", "kd-online") else None)
    if proto.loss == "kd-online":
        report["teacher_calibration"] = (step or {}).get("calibrate")
    if teachers:  # the teachers this evaluation used (--teacher, or the relabel step's)
        source = "--teacher" if teacher else "relabel step"
        report["teachers"] = [{k: v for k, v in t.describe().items()
                               if k in ("path", "arch", "checksum")} | {"source": source}
                              for t in teachers]
    report["result"] = result
    if real_ds is not None:
        sub = random_real_subset(real_ds, ipc, seed)  # the same storage: IPC images
        pixels = sub.images.float() / 255.0
        soft, extras = None, {}
        record = None
        if soft_protocol:
            # relabelled by the same teachers with the same relabel settings (temperature,
            # calibration, views): what `ddcli relabel` would do to these images, so ADSA's τ
            # is searched on them as relabel searches it on the bundle's (recorded below)
            rec = step or {}
            settings = RelabelSettings(
                temperature=temperature,
                calibrate=(rec.get("calibrate") or {}).get("method"),
                views=(rec.get("views") or {}).get("k", 0), num_teachers=len(teachers),
                seed=seed)
            prior = torch.tensor(ds_info.get("class_counts") or [1] * b.num_classes,
                                 dtype=torch.float32).clamp_min(1)
            soft, extras, record = relabel_images(pixels, sub.labels, teachers, settings,
                                                  ipc=ipc, prior=prior, mean=mean, std=std,
                                                  device=dev)
            record = {k: record[k] for k in ("temperature", "calibrate", "views")} | {
                "teachers": [t["checksum"] for t in record["teachers"]]}
        base = run(pixels, sub.labels, "random real", soft, views_from(extras, step))
        base.update(ipc=ipc, source=real_ds.source, fingerprint=real_ds.fingerprint,
                    selection_seed=seed, relabelled=soft_protocol)
        if record is not None:
            base["relabel"] = record
        _attach_baseline(report, base)
    if ctx is not None and not ctx.is_main:  # rank 0 alone reports and writes
        return {}
    return _finish(rep, report, out)


def _report_head(b, bundle_path, proto, models, seed, dev, test_ds) -> dict:
    """What every evaluation report starts with: the bundle, the protocol, the run, the test."""
    from ddcli.reporting import device_label

    return {
        "bundle": str(bundle_path),
        "bundle_checksum": b.checksum,
        # the images, labels and soft labels alone: equal for two same-seed runs (the file's
        # checksum covers the creation time and the command too)
        "bundle_content_checksum": b.content_checksum,
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


def _baseline_real_data(rep, b, baseline, real, real_files, size, chans, data_cache,
                        skip_bad=False, ctx=None):
    """The real data a baseline draws from: the bundle's classes, and its recorded subset."""
    from ddcli.evaluation import as_distilled, check_classes
    from ddcli.reporting import load_dataset_reported

    if b.ipc is None:
        raise InputError(f"--baseline {baseline} needs a bundle with the same IPC in every class")
    real_ds = load_dataset_reported(rep, real, "train", files=real_files, image_size=size,
                                    conform="the bundle's", channels=chans, cache=data_cache,
                                    skip_bad=skip_bad, skip_flag="--skip-bad")
    if ctx is not None:
        ctx.check_same_data(real_ds, "the --real data")
    check_classes(b, real_ds, "real")
    return as_distilled(real_ds, b, rep.warn, "--real data")


def _attach_baseline(report: dict, base: dict) -> None:
    report["baseline"] = base
    report["improvement_points"] = round(
        report["result"]["accuracy_mean"] - base["accuracy_mean"], 2)


def _finish(rep, report: dict, out: Path | None) -> dict:
    from ddcli.io import atomic_write_bytes, to_json

    if out is not None:
        atomic_write_bytes(out, (to_json(report) + "\n").encode())
        rep.info(f"wrote report {out}")
    return report


def _linear_probe_report(rep, b, bundle_path, test_ds, proto, models, seed, dev, backbone,
                         backbone_weights, inherit, baseline, real, real_files, size, chans,
                         data_cache, skip_bad):
    """The linear-probe protocol (frozen backbone), with or without classifier inheritance."""
    from ddcli.backbones import create_backbone
    from ddcli.evaluation import random_real_subset
    from ddcli.probe import centroid_indices, golden_head_accuracy, linear_probe

    distill_bb = b.config.get("backbone")
    name = backbone or distill_bb
    if not name:
        raise InputError("--protocol linear-probe needs --backbone (the bundle names none)")
    weights = backbone_weights or (b.config.get("backbone_weights") if name == distill_bb
                                   else None)
    bb = create_backbone(name, weights).to(dev)
    golden, golden_bb = None, None
    if "golden_head.weight" in b.extras:
        # the golden head reads the distillation's backbone: this one where it is the same
        # (its name, and no other weights: --backbone-weights naming the same file elsewhere,
        # told by its sha256, is the same; the recorded path was reloaded and was relative)
        recorded = (b.config.get("backbone_identity") or {}).get("weights_sha256")
        same = name == distill_bb and (not backbone_weights or bb.weights_sha256 == recorded)
        golden_bb = bb if same else create_backbone(
            distill_bb, b.config.get("backbone_weights")).to(dev)
        golden = (b.extras["golden_head.weight"], b.extras["golden_head.bias"])
    elif inherit:
        raise InputError("--inherit needs a bundle with a golden head (distill sfm/lgm with "
                         "--golden-head-epochs > 0)")
    images, labels, _ = b.decoded()
    counts = b.dataset.get("class_counts")

    def run(pixels, labs, label, golden_arg):
        with rep.progress(f"{models} linear probes ({label})", proto.epochs, unit="epochs",
                          estimate=True) as update:
            def test_progress(done: int, total: int) -> None:
                update(done, total=total, unit="images",
                       description=f"testing {models} probes on {total} images ({label})")

            return linear_probe(pixels, labs, test_ds.images, test_ds.labels, b.num_classes, bb,
                                num_models=models, epochs=proto.epochs, seed=seed, device=dev,
                                golden=golden_arg, golden_bb=golden_bb, class_counts=counts,
                                progress=update, test_progress=test_progress)

    real_ds = None if baseline is None else _baseline_real_data(  # before any probe trains
        rep, b, baseline, real, real_files, size, chans, data_cache, skip_bad)
    result = run(images, labels, "bundle", golden if inherit else None)
    report = _report_head(b, bundle_path, proto, models, seed, dev, test_ds)
    report.update(
        mode=result["mode"],
        result=result,
        golden_head_test_accuracy=golden_head_accuracy(
            golden, golden_bb, test_ds.images, test_ds.labels, dev) if golden else None,
    )
    if real_ds is not None:
        if baseline == "random":
            sub = random_real_subset(real_ds, b.ipc, seed)
        else:  # the real images nearest the class means, in the evaluation backbone
            feats = bb.embed_all(real_ds.images, dev)
            sub = real_ds.select(centroid_indices(feats, real_ds.labels.to(dev), b.num_classes,
                                                  b.ipc).cpu())
        base = run(sub.images.float() / 255, sub.labels, f"{baseline} real",
                   golden if inherit else None)
        base.update(ipc=b.ipc, source=real_ds.source, fingerprint=real_ds.fingerprint,
                    selection_seed=seed, kind=baseline)
        _attach_baseline(report, base)
    return report
