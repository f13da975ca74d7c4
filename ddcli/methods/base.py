"""What every distillation method shares: captured configs, the on-device real-image pool, and
the run harness (seeding, progress, checkpoints, resume, Ctrl-C)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ddcli.bundle import seal, seal_broken
from ddcli.configs import MAX_INT_OPTION, MethodConfig, check_option_value  # noqa: F401
from ddcli.data import Dataset, NormalizedImages
from ddcli.errors import InputError, Interrupted, RunError
from ddcli.io import fit_name, read_safetensors, write_safetensors
from ddcli.runtime import stop_signals

# --------------------------------------------------------------------------------------------
# configs (diffusers' register_to_config idea: every knob captured and stored in the bundle)


# --------------------------------------------------------------------------------------------
# real images by class, sampled per class without a host round trip (unless streamed)


def smallest_keys(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` smallest of each row's keys, ascending, equal keys in order of
    position: ``keys.argsort(dim=1, stable=True)[:, :k]``, found by a selection (``topk``)
    instead of a sort. The keys are ``torch.rand``'s float32 values (multiples of 2**-24) or
    2.0; as float64 they carry the position below their last bit, so no two are equal."""
    n = keys.shape[1]
    if n > 2**27:  # the key (< 4: last bit 2**-51) and the position must fit in 53 bits
        raise ValueError(f"{n} keys per row: at most 2**27")
    pos = torch.arange(n, device=keys.device, dtype=torch.float64)
    tie = 2.0 ** (-24 - max(1, math.ceil(math.log2(n))))  # pos * tie < 2**-24
    return (keys.double() + pos * tie).topk(k, dim=1, largest=False).indices


class ClassPool:
    """The real images by class, sampled for all classes at once, from a class-ordered
    :class:`~ddcli.data.NormalizedImages` (on a CPU the set itself read through the class
    order, on a GPU a class-sorted copy on the device, from the memory-mapped data cache each
    batch read from the cache file, ahead of time by a worker thread)."""

    def __init__(self, data: Dataset, device: torch.device, mean: list[float], std: list[float]):
        self.device = device = torch.device(device)
        #: class-sorted position -> the uint8 image, normalised on the way out
        self.src = NormalizedImages(data, device, mean, std,
                                    rows=torch.argsort(data.labels, stable=True))
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        self.counts = counts.to(device)
        self.offsets = (torch.cumsum(counts, 0) - counts).to(device)
        self.n_max = int(counts.max())
        self.num_classes = data.num_classes
        self.mean, self.std = self.src.mean, self.src.std
        #: the next batch of :meth:`next_batch`: (C, per_class) indices, the classes read
        #: for, and the read (a future) when streamed
        self._next: tuple[torch.Tensor, Any, Any] | None = None
        self._reader = None  # the worker thread reading streamed batches ahead

    def normalize(self, u8: torch.Tensor) -> torch.Tensor:
        return self.src.normalize(u8)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images at class-sorted positions ``idx`` (1-d), on the device."""
        return self.src.pixels(idx)

    def next_batch(self, per_class: int, generator: torch.Generator,
                   classes: tuple[int, int] | None = None) -> torch.Tensor:
        """This iteration's normalised real batch (:meth:`sample`'s layout), drawn one
        iteration ahead: the indices of the next batch are drawn now, and a streamed pool
        starts reading that batch in a worker thread while the device computes this one. The
        draws are the same with or without streaming, so both give the same batches; the
        pending indices are part of :meth:`state` (a resumed run reads what it would have)."""
        if self._next is None:
            self._queue(self.sample_index(per_class, generator), classes)
        idx, read_for, pending = self._next
        if idx.shape[1] != per_class:
            raise ValueError(f"pending batch of {idx.shape[1]} per class, {per_class} wanted")
        if pending is not None and read_for == classes:
            x = self.src.to_device(pending.result())
        else:  # in memory (or read ahead for other classes)
            x = self.rows(self._own(idx, classes))
        self._queue(self.sample_index(per_class, generator), classes)
        return self.normalize(x)

    @staticmethod
    def _own(idx: torch.Tensor, classes: tuple[int, int] | None) -> torch.Tensor:
        return (idx if classes is None else idx[classes[0]:classes[1]]).flatten()

    def _queue(self, idx: torch.Tensor, classes: tuple[int, int] | None) -> None:
        """Make ``idx`` (C, per_class) the next batch; a streamed pool starts reading it."""
        pending = None
        if self.src.mapped is not None:
            if self._reader is None:
                from concurrent.futures import ThreadPoolExecutor

                self._reader = ThreadPoolExecutor(1, thread_name_prefix="ddcli-read")
            pending = self._reader.submit(self.src.read,
                                          self.src.host_index(self._own(idx, classes)))
        self._next = (idx, classes, pending)

    def state(self) -> dict[str, torch.Tensor]:
        """The pending batch's indices (none before the first :meth:`next_batch`)."""
        return {} if self._next is None else {"real_next": self._next[0]}

    def load_state(self, state: dict[str, torch.Tensor],
                   classes: tuple[int, int] | None = None) -> None:
        self._next = None
        if "real_next" in state:
            self._queue(state["real_next"].to(self.device), classes)

    def normalize_float(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def sample_index(self, per_class: int, generator: torch.Generator) -> torch.Tensor:
        """(C, per_class) indices: without replacement within each class; a class with fewer
        images than ``per_class`` cycles through a random order of its images (every image at
        least once, the repeats drawn afresh each time: the top-up repeated the class's first
        images, in file order, at every step, so a tail class was matched against a skewed
        distribution).

        Each class's ``per_class`` smallest of ``n_max`` uniform keys, equal keys in order of
        position (what a stable sort gives, on any device): a selection, not a sort of every
        key (100k images per class: 9 ms instead of 41 on 2 CPU cores)."""
        c = self.num_classes
        keys = torch.rand((c, self.n_max), generator=generator, device=self.device)
        pos = torch.arange(self.n_max, device=self.device).view(1, -1)
        keys = torch.where(pos < self.counts.view(-1, 1), keys, 2.0)
        k = min(per_class, self.n_max)
        perm = smallest_keys(keys, k)  # a class's first min(count, k) columns: its images
        slot = torch.arange(per_class, device=self.device).view(1, -1)
        perm = perm.gather(1, slot % self.counts.view(-1, 1))  # (beyond a class's size: cycle)
        return self.offsets.view(-1, 1) + perm

    def sample(self, per_class: int, generator: torch.Generator,
               classes: tuple[int, int] | None = None) -> torch.Tensor:
        """Normalised real images, (C * per_class, ch, H, W), grouped by class. With
        ``classes`` (lo, hi) only those classes' images, from the same draws as all classes'."""
        idx = self.sample_index(per_class, generator)
        if classes is not None:
            idx = idx[classes[0]:classes[1]]
        return self.normalize(self.rows(idx.flatten()))

    def init_images(self, ipc: int, generator: torch.Generator, noise: float = 0.1) -> torch.Tensor:
        """Random real images per class (normalised). Where a class has fewer than ``ipc``
        images the repeats get Gaussian noise (std ``noise`` in normalised units) so they do
        not stay identical under Siamese augmentation."""
        idx = self.sample_index(ipc, generator)  # (C, ipc)
        x = self.normalize(self.rows(idx.flatten()))
        slot = torch.arange(ipc, device=self.device).view(1, -1)
        repeat = (slot >= self.counts.view(-1, 1)).flatten().view(-1, 1, 1, 1)
        jitter = torch.randn(x.shape, generator=generator, device=self.device) * noise
        return torch.where(repeat, x + jitter, x)


# --------------------------------------------------------------------------------------------
# the method interface


@dataclass
class SyntheticSet:
    images: torch.Tensor  # pixel scale (N, C, H, W), never clamped
    labels: torch.Tensor
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class Method:
    """A distillation method: ``setup`` once, ``step`` per iteration, ``result`` at the end.

    ``state()`` returns every tensor needed to resume (besides the generator, which the harness
    saves); ``load_state`` puts them back.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    #: whether the classes can be split among torchrun ranks (independent per-class losses;
    #: the method honours :attr:`classes` and :meth:`class_state_keys`)
    splits_classes: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        self.config = config
        self.reporter = None  # set by the CLI: progress bars for long setup work
        #: the classes [lo, hi) this process computes and updates (None: all of them); set by
        #: the harness before ``setup`` under torchrun
        self.classes: tuple[int, int] | None = None
        #: the torchrun context (ddcli.distributed.DistContext) when :attr:`classes` is set
        self.dist = None
        #: the run's seed, set by the harness before ``setup``: what a method builds and
        #: caches (expert trajectories, an extractor pool, a prior) is seeded with it, so the
        #: seed alone decides the bundle and ``ddcli experts/prior --seed`` prepare that cache
        self.seed = 0

    def split_refusal(self) -> str | None:
        """Why this method (with this config) cannot split its classes among ranks, or None."""
        if not self.splits_classes:
            return f"method {self.name} cannot split its work among processes"
        return None

    def class_state_keys(self) -> set[str]:
        """The keys of :meth:`state` whose tensors hold one block of rows per class (gathered
        from the ranks that own them); the other tensors are the same on every rank."""
        return set()

    def setup_progress(self, description: str, total: int | None, **kw: Any):
        """A progress context for setup work (experts, priors, features): the reporter's
        (``kw``: its ``unit`` and the like), or silent."""
        from contextlib import nullcontext

        if self.reporter is None:
            return nullcontext(lambda *a, **k: None)
        return self.reporter.progress(description, total, **kw)

    def run_inputs(self) -> dict[str, str]:
        """What a run depends on beyond its config, data, seed and device (known after
        :meth:`setup`): part of the checkpoint's key, so ``--resume`` refuses a change."""
        return {}

    def recorded_config(self) -> dict[str, Any]:
        """The config as stored in the bundle: every field, with values chosen "by IPC" (or
        similar) made explicit."""
        resolved = getattr(self.config, "resolved", None)
        return {**self.config.to_dict(), **(resolved() if resolved else {})}

    @property
    def iterations(self) -> int:
        return int(getattr(self.config, "iterations", 0))

    def check_data(self, data: Dataset) -> list[str]:
        """Refuse (InputError) data this config cannot run on, and return warnings about
        data it runs on poorly; called before :meth:`setup`, so before any expert, prior or
        feature is built."""
        return []

    def setup(self, data: Dataset, device: torch.device, generator: torch.Generator,
              mean: list[float], std: list[float]) -> None:
        raise NotImplementedError

    def step(self, it: int) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def result(self) -> SyntheticSet:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# the harness


def _lr_hint(method: Method) -> str:
    """The hint of a non-finite run, for a method that takes --lr (otgen does not)."""
    return " (a smaller --lr may help)" if "lr" in type(method.config).fields() else ""


def checkpoint_path_for(out: Path) -> Path:
    """``<out>.ckpt.safetensors`` beside the output (shortened for a name near the limit)."""
    return out.with_name(fit_name(out.name, after=".ckpt.safetensors"))


def _run_key(method: Method, data: Dataset, seed: int, device: torch.device) -> dict[str, str]:
    return {
        "method": method.name,
        "config": json.dumps(method.config.to_dict(), sort_keys=True),
        "fingerprint": data.fingerprint,
        "seed": str(seed),
        "device_type": device.type,
        **{f"input_{k}": v for k, v in method.run_inputs().items()},
    }


def _save_checkpoint(path: Path, method: Method, gen: torch.Generator, it: int, key: dict,
                     state: dict[str, torch.Tensor] | None = None,
                     loss: float | None = None, elapsed: float | None = None,
                     notes: dict[str, str] | None = None) -> None:
    """``loss``: the last logged loss, the bundle's ``final_loss`` when a resumed run has no
    iteration left (its own loop logs none). ``elapsed``: the seconds of iterations so far,
    over every run that led here. ``notes``: the caller's (see :func:`checkpoint_notes`)."""
    state = method.state() if state is None else state
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    tensors = {k: v.cpu() for k, v in tensors.items()}
    tensors["_generator"] = gen.get_state()
    meta = {**{f"note_{k}": v for k, v in (notes or {}).items()}, **key, "iteration": str(it)}
    if loss is not None:
        meta["loss"] = repr(float(loss))
    if elapsed is not None:
        meta["elapsed_s"] = repr(round(float(elapsed), 3))
    seal(tensors, meta)
    write_safetensors(path, tensors, meta)


def _checkpoint_number(meta: dict[str, str], name: str) -> float | None:
    """A number a checkpoint holds: ``loss`` (None: none logged yet) or ``elapsed_s``; None
    in an older checkpoint without it."""
    try:
        value = float(meta[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def checkpoint_notes(path: Path) -> dict[str, str]:
    """The notes a caller of :func:`run_method` left in the checkpoint at ``path`` (its
    ``notes``; ``distill`` records there what the interrupted command asked for after the
    iterations); {} when there is no readable checkpoint (:func:`run_method` says why)."""
    from safetensors import safe_open

    if not Path(path).is_file():  # (a FIFO there blocked the open for good: run_method
        return {}  # refuses it with a message)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return {}
    return {k[len("note_"):]: v for k, v in meta.items() if k.startswith("note_")}


def _load_checkpoint(path: Path, method: Method, gen: torch.Generator, key: dict
                     ) -> tuple[int, float | None, float]:
    """Resume from ``path`` after checking it against one schema: this run's key, an iteration
    within the run, the generator's state, and the method's state (every tensor it has from
    setup; tensors that do not fit are refused). Returns the iteration, the last logged loss
    and the seconds the earlier runs spent iterating (0 in an older checkpoint)."""
    start_over = "delete it, or rerun with --force instead of --resume to start over"
    try:
        tensors, meta = read_safetensors(path, "checkpoint")
    except InputError as e:
        raise InputError(f"{e}; {start_over}") from None
    bad = f"checkpoint {path} is damaged or incomplete"
    if seal_broken(tensors, meta):  # (checkpoints of ddcli 0.3.0.dev0 and before have none)
        raise InputError(f"{bad}: its checksum does not match its contents; {start_over}")
    for k, v in key.items():
        if meta.get(k) != v:
            raise InputError(f"checkpoint {path} belongs to another run "
                             f"({_key_difference(k, meta.get(k), v)}); {start_over}")
    it = meta.get("iteration", "")
    if not it.isdecimal() or len(it) > 12 or int(it) > method.iterations:
        raise InputError(f"{bad}: bad iteration {it[:20]!r}; {start_over}")
    rng = tensors.pop("_generator", None)
    ref = gen.get_state()
    if rng is None or rng.dtype != ref.dtype or rng.shape != ref.shape:
        raise InputError(f"{bad}: it lacks the random generator's state; {start_over}")
    missing = sorted(set(method.state()) - set(tensors))  # the state every run has from setup
    if missing:
        raise InputError(f"{bad}: it lacks the state {missing[0]!r}; {start_over}")
    gen.set_state(rng)
    try:
        method.load_state({k: v.to(method_device(method)) for k, v in tensors.items()})
    except (KeyError, IndexError, ValueError, RuntimeError) as e:  # shapes that do not fit
        raise InputError(f"{bad}: {type(e).__name__}: {e}; {start_over}") from None
    return int(it), _checkpoint_number(meta, "loss"), _checkpoint_number(meta, "elapsed_s") or 0.0


def _key_difference(key: str, theirs: str | None, ours: str) -> str:
    """What differs between a checkpoint's run and this one, as the user can tell it: the
    options of the config by name (``--iterations 20 there, 40 here``), else the key."""
    if key == "config" and theirs is not None:
        try:
            a, b = json.loads(theirs), json.loads(ours)
        except ValueError:
            return "its config differs"
        names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) \
            if isinstance(a, dict) and isinstance(b, dict) else []
        if names:
            return ", ".join(f"--{k.replace('_', '-')} {json.dumps(a.get(k))} there, "
                             f"{json.dumps(b.get(k))} here" for k in names[:3])
    if key == "fingerprint":
        return "other data"
    if key.startswith("input_") and theirs is None:
        return (f"it was written by an older ddcli, which did not record the "
                f"{key[len('input_'):].replace('_', ' ')}")
    if key == "input_prior_sha256":
        return "the --prior folder's contents changed"
    return f"its {key.replace('_', ' ')} differs"


def _gathered_state(method: Method, dist, num_classes: int) -> dict[str, torch.Tensor]:
    """The whole state on every rank: the class-split tensors assembled from their owners."""
    keys = method.class_state_keys()
    return {k: dist.gather_classes(v, num_classes) if k in keys else v
            for k, v in method.state().items()}


def _resume_distributed(checkpoint: Path, method: Method, gen: torch.Generator, key: dict,
                        dist, warn: Callable[[str], None]) -> tuple[int, float | None, float]:
    """Rank 0 reads and checks the checkpoint and hands it to every rank (what
    :func:`_load_checkpoint` returns)."""
    payload: tuple = ("missing",)
    if dist.is_main:
        try:
            if checkpoint.exists():
                it, loss, earlier = _load_checkpoint(checkpoint, method, gen, key)
                payload = ("ok", it, {k: v.detach().cpu() for k, v in method.state().items()},
                           gen.get_state(), loss, earlier)
            else:
                warn(f"no checkpoint at {checkpoint}; starting from iteration 0")
        except InputError as e:
            payload = ("error", str(e))
    payload = dist.broadcast(payload)
    if payload[0] == "error":
        if dist.is_main:
            raise InputError(payload[1])
        raise SystemExit(InputError.exit_code)  # rank 0 says why
    if payload[0] == "missing":
        return 0, None, 0.0
    if not dist.is_main:
        gen.set_state(payload[3])
        method.load_state({k: v.to(method_device(method)) for k, v in payload[2].items()})
    return int(payload[1]), payload[4], payload[5]


def method_device(method: Method) -> torch.device:
    return getattr(method, "device", torch.device("cpu"))


ProgressFn = Callable[..., None]


def run_method(
    method: Method,
    data: Dataset,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: ProgressFn | None = None,
    log_every: int = 50,
    warn: Callable[[str], None] = lambda m: None,
    dist=None,
    keep_last: bool = False,
    notes: dict[str, str] | None = None,
) -> tuple[SyntheticSet, dict[str, Any]]:
    """Run ``method`` on ``data``; return the synthetic set and run statistics.

    ``keep_last``: checkpoint the last iteration even with ``checkpoint_every`` 0, for a caller
    whose next step is long (``--relabel``'s teacher training). ``notes``: strings the caller
    keeps in each checkpoint, read back with :func:`checkpoint_notes` (not part of the run's
    key: a resumed run may differ in them).

    The statistics' ``wall_time_s`` and ``iterations_per_s`` are this run's;
    ``total_wall_time_s`` adds the iterating time of the runs a resumed one continues.

    All randomness comes from one ``torch.Generator`` on ``device`` seeded with ``seed``; its
    state is checkpointed with the method's state, so a resumed run equals an uninterrupted
    one. Ctrl-C (SIGINT) finishes the current iteration, saves a checkpoint and raises
    :class:`Interrupted`.

    With ``dist`` (a :class:`ddcli.distributed.DistContext`, under torchrun) this process
    computes only its block of classes; the ranks meet at log points (the loss summed over
    them, the non-finite check, Ctrl-C), at checkpoints and at the end, and only rank 0 writes
    checkpoints. The result (on every rank) equals the single-process one.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    mean, std = data.mean_std()
    method.device = device
    method.seed = seed
    if dist is not None:
        method.classes = dist.classes(data.num_classes)
        method.dist = dist
    for msg in method.check_data(data):
        warn(msg)
    method.setup(data, device, gen, mean, std)
    key = _run_key(method, data, seed, device)
    start, resumed_loss, earlier = 0, None, 0.0
    if resume and checkpoint is not None and dist is not None:
        start, resumed_loss, earlier = _resume_distributed(checkpoint, method, gen, key, dist,
                                                           warn)
    elif resume and checkpoint is not None:
        if checkpoint.exists():
            start, resumed_loss, earlier = _load_checkpoint(checkpoint, method, gen, key)
        else:
            warn(f"no checkpoint at {checkpoint}; starting from iteration 0")

    total = method.iterations
    losses: list[float] = []
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = start
    # the first iteration (1-based) whose loss was not finite, 0 while none: kept on the device
    # (no host sync per iteration) and read where the loop syncs anyway (log points,
    # checkpoints, the end)
    first_bad = torch.zeros((), dtype=torch.int64, device=device)

    def check_finite() -> None:
        if dist is None:
            bad = int(first_bad)
        else:  # the first bad iteration of any rank (a collective: every rank calls it here)
            never = torch.full((), 2**62, dtype=torch.int64, device=device)
            bad = int(dist.all_reduce(torch.where(first_bad > 0, first_bad, never), "min"))
            bad = 0 if bad == 2**62 else bad
        if bad:
            if dist is not None and not dist.is_main:
                raise SystemExit(RunError.exit_code)  # rank 0 says it
            raise RunError(
                f"the loss became non-finite (NaN or infinity) at iteration {bad}/{total}; "
                f"no bundle was written{_lr_hint(method)}"
            )

    def last_loss() -> float | None:
        return losses[-1] if losses else resumed_loss

    def save(at: int) -> None:
        saved = {"loss": last_loss(), "elapsed": earlier + time.perf_counter() - t0,
                 "notes": notes}
        if dist is None:
            _save_checkpoint(checkpoint, method, gen, at, key, **saved)
            return
        state = _gathered_state(method, dist, data.num_classes)
        if dist.is_main:
            _save_checkpoint(checkpoint, method, gen, at, key, state, **saved)
        dist.barrier()  # the checkpoint is complete before any rank goes on

    with stop_signals() as stop:  # Ctrl-C / SIGTERM: finish the iteration, save, stop
        loss = None
        while it < total:
            loss = method.step(it)
            it += 1
            if torch.is_tensor(loss):
                first_bad.masked_fill_(~torch.isfinite(loss.detach()).all() & (first_bad == 0),
                                       it)
            elif loss is not None and not math.isfinite(float(loss)) and not int(first_bad):
                first_bad.fill_(it)
            log_point = it % log_every == 0 or it == total
            if log_point:
                if dist is None:
                    value = float(loss)  # the only host sync, every log_every iterations
                else:  # the loss summed over the ranks' classes
                    value = float(dist.all_reduce(loss.detach().float().reshape(())))
                check_finite()
                losses.append(value)
                if progress:
                    progress(it, total=total, status=f"loss {value:.4g}")
            elif progress:  # every iteration: the count only (no host sync)
                progress(it, total=total)
            if checkpoint is not None and checkpoint_every and it % checkpoint_every == 0 \
                    and it < total:
                check_finite()
                save(it)
            stopping = stop["flag"]
            if dist is not None and (log_point or device.type == "cpu"):
                # the ranks agree on stopping: on a CPU every iteration (a scalar over gloo is
                # nothing beside a step; at log points only, 50 slow iterations outlasted the
                # 30 s torchrun gives its workers after passing on a Ctrl-C), on a GPU at log
                # points (the agreement is a host sync)
                stopping = bool(dist.all_reduce(torch.tensor(float(stopping)), "max"))
            elif dist is not None:
                stopping = False
            if stopping:
                check_finite()
                if checkpoint is not None:
                    save(it)
                    raise Interrupted(
                        f"interrupted at iteration {it}/{total}; checkpoint saved to {checkpoint}"
                        "; rerun with --resume to continue"
                    )
                raise Interrupted(f"interrupted at iteration {it}/{total}")
        check_finite()
        if checkpoint is not None and total > start and (checkpoint_every or keep_last):
            # what follows (relabelling, writing) may be interrupted: keep the work (with
            # checkpoint_every 0, a Ctrl-C during --relabel's teacher training lost it all)
            save(total)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    stats = {
        "iterations": total,
        "resumed_from": start,
        "wall_time_s": round(wall, 3),
        "total_wall_time_s": round(earlier + wall, 3),
        "iterations_per_s": round((total - start) / wall, 3)
        if wall > 0 and total > start else None,
        "final_loss": last_loss(),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda" else None,
    }
    if dist is not None:  # every rank's classes, assembled (bit-exact) on every rank
        method.load_state(_gathered_state(method, dist, data.num_classes))
    result = method.result()
    if not bool(torch.isfinite(result.images).all()):
        raise RunError(f"the synthetic images are not finite (NaN or infinity) after iteration "
                       f"{total}; no bundle was written{_lr_hint(method)}")
    return result, stats
