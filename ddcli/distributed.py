"""Several processes through ``torchrun``: the classes split among the ranks.

``torchrun --nproc-per-node N -m ddcli distill ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set. For the methods whose per-class losses are
independent (:attr:`ddcli.methods.base.Method.splits_classes`), rank r owns a contiguous block
of classes: every rank makes the same random draws as a single process would (the shared seed),
but computes the network passes and updates only for its own classes' synthetic images. Rank 0
gathers the images and alone writes checkpoints and the bundle. Collectives happen only at log
points, checkpoints and the end, never per iteration.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ddcli.errors import DDCliError, InputError, Interrupted, RunError

FAILED = ("another process of the distributed run failed or was killed (torchrun's report "
          "names it); its output was not written")

#: how long a rank other than 0 waits, after a refusal, for rank 0 to print the same refusal
#: (torchrun stops this process once rank 0 has exited); exiting at once had torchrun stop
#: rank 0 before it printed, leaving no error line at all. Past it (rank 0 did not refuse:
#: a refusal of this rank's own) this rank says it.
RANK_0_WAIT_S = 30.0


def env_world_size() -> int:
    """The world size torchrun set (1 outside torchrun); a bad value is refused."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise InputError(f"bad WORLD_SIZE {raw!r} in the environment") from None
    if n < 1:
        raise InputError(f"bad WORLD_SIZE {raw!r} in the environment")
    return n


def env_rank(world: int) -> tuple[int, int]:
    """(RANK, LOCAL_RANK) torchrun set for a run of ``world`` processes, checked: a rank outside
    0..world-1 waited for its peers forever."""
    raw = os.environ.get("RANK")
    if raw is None or not raw.strip():
        raise InputError("WORLD_SIZE is set but RANK is not: start several processes with "
                         "torchrun (see the README, 'Several GPUs / machines')")
    values = []
    for name, value in (("RANK", raw), ("LOCAL_RANK", os.environ.get("LOCAL_RANK", raw))):
        try:
            n = int(value)
        except ValueError:
            raise InputError(f"bad {name} {value!r} in the environment") from None
        if not 0 <= n < world:
            raise InputError(f"{name} {n} is outside 0..{world - 1} (WORLD_SIZE {world})")
        values.append(n)
    return values[0], values[1]


def under_torchrun() -> bool:
    """Whether torchrun launched this process (it stops the other ranks once one exits)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def leave_to_rank_0(error: DDCliError, rank: int | str) -> None:
    """On a rank other than 0, an error rank 0 meets as well (or sees as this rank's
    failure): rank 0 prints it. Wait for torchrun to stop this process (it does once rank 0
    has exited), then, if still running (the error was this rank's alone), raise it naming
    the rank."""
    if getattr(error, "rank_said", False):  # waited for already (an inner check's)
        raise error
    if under_torchrun():  # torchrun's: it stops us once rank 0 exits
        try:  # (another launcher stops no one: say it at once)
            time.sleep(RANK_0_WAIT_S)
        except KeyboardInterrupt:  # rank 0 says "interrupted"
            raise SystemExit(Interrupted.exit_code) from None
    own = type(error)(f"rank {rank}: {error}", error.exit_code)
    own.rank_said = True
    raise own from None


@contextmanager
def rank_errors(rank: int) -> Iterator[None]:
    """Under torchrun, on a rank other than 0: an interrupt ends it quietly (rank 0 says it),
    and an error is left to rank 0 (:func:`leave_to_rank_0`), which meets the same refusal
    (the command line's checks, a missing file, an existing output) or sees this rank fail
    and says so; one rank 0 did not meet is said by this rank, named, after the wait. (A
    failure to join the group, rank 0 having left it with its refusal, printed a second
    line.) On rank 0 (and outside torchrun) errors pass as they are."""
    if rank == 0:
        yield
        return
    try:
        yield
    except (Interrupted, KeyboardInterrupt):
        raise SystemExit(Interrupted.exit_code) from None
    except DDCliError as e:
        leave_to_rank_0(e, rank)


def process_rank(world: int) -> int:
    """This process's rank: RANK under torchrun (checked by :func:`env_rank`), else 0."""
    return env_rank(world)[0] if world > 1 else 0


def single_process(command: str) -> None:
    """Refuse ``command`` under torchrun: only distill and evaluate share their work among
    processes (every rank ran the whole command and raced to write one output)."""
    world = env_world_size()
    if world > 1:
        with rank_errors(env_rank(world)[0]):
            raise InputError(f"ddcli {command} does not run under torchrun (WORLD_SIZE="
                             f"{world}): only distill and evaluate share their work among "
                             "processes; run it as one process")


def class_block(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes [lo, hi) rank ``rank`` owns: contiguous blocks, sizes differing by at most
    one (``torch.tensor_split``'s rule); a rank may own none when ranks outnumber classes."""
    base, extra = divmod(num_classes, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass
class DistContext:
    """This process's place in a torchrun run (a process group is initialised)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def classes(self, num_classes: int) -> tuple[int, int]:
        return class_block(num_classes, self.rank, self.world_size)

    # -- collectives, each turning a dead peer into one RunError --------------------------

    def _call(self, fn, *args, **kwargs):
        import torch.distributed as dist

        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as e:
            raise RunError(FAILED) from e

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        t = t.to(self.device).clone()
        self._call(dist.all_reduce, t, op=ops[op])
        return t

    def gather_classes(self, t: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Every rank's own class rows of ``t`` ((C * k, ...), grouped by class), assembled on
        every rank: row blocks are exchanged as they are (no arithmetic), so the result is
        bit-exact."""
        import torch.distributed as dist

        k = t.shape[0] // num_classes
        blocks = [class_block(num_classes, r, self.world_size) for r in range(self.world_size)]
        most = max(hi - lo for lo, hi in blocks) * k
        lo, hi = blocks[self.rank]
        mine = t[lo * k:hi * k].detach().to(self.device)
        pad = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=self.device)
        pad[:mine.shape[0]] = mine
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        self._call(dist.all_gather, parts, pad)
        rows = [p[:(b_hi - b_lo) * k] for p, (b_lo, b_hi) in zip(parts, blocks, strict=True)]
        return torch.cat(rows).to(t.device)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._call(dist.broadcast_object_list, box, src=0, device=self.device
                   if self.device.type == "cuda" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        import torch.distributed as dist

        box: list[Any] = [None] * self.world_size
        self._call(dist.all_gather_object, box, obj)
        return box

    def check_same_data(self, ds, what: str) -> None:
        """Refuse data that differs between ranks (a machine with another copy at the same
        path): every rank learns which differ, rank 0 says it (a rank whose classes rank 0
        lacked padded them with zeros, a rank with other test images changed the accuracy,
        and both ended with exit 0)."""
        mine = (ds.fingerprint, len(ds), ds.num_classes)
        every = self.all_gather_object(mine)
        other = [r for r, v in enumerate(every) if v != every[0]]
        if other:
            r = other[0]
            raise InputError(
                f"{what} differs between processes: rank {r} read {every[r][1]} images of "
                f"{every[r][2]} classes (fingerprint {every[r][0][:12]}), rank 0 "
                f"{every[0][1]} of {every[0][2]} ({every[0][0][:12]}); every process must "
                "read the same data (the same files at the same path on every machine)")

    def barrier(self) -> None:
        import torch.distributed as dist

        self._call(dist.barrier)

    def close(self, wait: bool = True) -> None:
        """Leave the group; with ``wait`` (a normal end) after every rank has finished, so
        that no rank tears its connections down while another still uses them (gloo then
        aborts the process: 'terminate called without an active exception')."""
        import torch.distributed as dist

        if dist.is_initialized():
            if wait:
                try:
                    dist.barrier()
                except (RuntimeError, dist.DistError):  # a peer already gone: nothing to wait for
                    pass
            dist.destroy_process_group()


#: set once this process has joined a torchrun group (read by ``ddcli.__main__._finish``)
joined_a_group = False


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun set up: gloo on the CPU, nccl on CUDA (one GPU per
    process, ``cuda:LOCAL_RANK``). A SIGTERM (torchrun stopping the survivors after a rank
    failed) becomes a :class:`RunError`, so the run ends with one line, not a traceback."""
    import torch.distributed as dist

    world = env_world_size()
    rank, local = env_rank(world)
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} has no GPU (this machine has "
                             f"{torch.cuda.device_count()}); use --nproc-per-node <= that")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if "MASTER_ADDR" not in os.environ:
        raise InputError("WORLD_SIZE is set but MASTER_ADDR is not: start several processes "
                         "with torchrun")
    try:
        dist.init_process_group(backend, rank=rank, world_size=world)
    except (RuntimeError, ValueError) as e:
        raise RunError(f"cannot join the process group ({backend}): {e}") from None
    global joined_a_group
    joined_a_group = True  # the entry point leaves through os._exit (ddcli.__main__)

    def on_term(signum, frame):  # rank 0 says it once; the others end quietly
        if rank == 0:
            raise RunError(FAILED)
        raise SystemExit(1)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        pass
    return DistContext(rank, world, local, dev)


@contextmanager
def joined(device: str) -> Iterator[DistContext]:
    """:func:`init_distributed`, left at the end: after every rank has finished when the
    block ends normally, at once when it raises (a rank waiting for a failed peer would
    hang)."""
    ctx = init_distributed(device)
    try:
        yield ctx
    except BaseException as e:
        try:
            # a rank other than 0 waits in the group: rank 0, blocked in a collective with it,
            # would otherwise see it leave, report a failed peer, and be named the culprit
            if ctx.rank != 0 and isinstance(e, DDCliError) and not isinstance(e, Interrupted) \
                    and str(e) != FAILED:
                leave_to_rank_0(e, ctx.rank)
        finally:
            ctx.close(wait=False)
        raise
    ctx.close()
