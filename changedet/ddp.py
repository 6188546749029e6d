"""torch.distributed helpers for data-parallel training (:func:`changedet.training.train` under ``torchrun``).

:func:`changedet.training.train` uses these to run, unchanged, under ``torchrun --nproc_per_node N`` (or
``changedet train --nproc N``, which launches ``torchrun`` itself):

* :func:`distributed_context` reads the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``), initialises the default process group (``gloo`` on the CPU, ``nccl`` on CUDA
  devices, one GPU per process: ``cuda:LOCAL_RANK``), and destroys it at the end, also when the run fails;
* :class:`ShardedBatchSampler` splits every global batch of an epoch across the ranks: the global batches are those
  of the single-process run, each rank takes a disjoint share of each, so the ranks together see each chip of the
  single-process epoch exactly once and all take the same number of optimiser steps;
* :func:`assign_by_size` spreads whole validation scenes over the ranks (largest first, onto the least loaded rank);
* :func:`run_on_main` runs a step on rank 0 only (writing outputs, computing metrics) and gives its result, or its
  error, to every rank, so all ranks take the same decisions and none is left waiting when rank 0 fails;
* :func:`state_dict_digest` fingerprints weights, to check that the replicas did not drift apart.

This module depends on torch and :mod:`changedet.errors` only (no Dask), so the training code can import it.

>>> ShardedBatchSampler(10, batch_size=4, rank=1, world_size=2).batches()  # doctest: +NORMALIZE_WHITESPACE
[[1, 3], [5, 7]]
>>> assign_by_size([100, 400, 250, 50], world_size=2)
[1, 0, 1, 1]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import Sampler

from changedet.errors import ChangedetError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistContext",
    "RankFailedError",
    "ShardedBatchSampler",
    "all_gather",
    "all_reduce_sum",
    "assign_by_size",
    "broadcast_buffers",
    "distributed_context",
    "gather_to_main",
    "launched_by_torchrun",
    "run_on_main",
    "state_dict_digest",
]

T = TypeVar("T")

#: Seconds a collective operation waits for the other ranks before failing (``init_process_group(timeout=...)``).
DEFAULT_TIMEOUT = 1800.0
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailedError(ChangedetError):
    """Another rank (rank 0) failed in a step whose result every rank needed; the message carries its error."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this machine (``LOCAL_RANK``).
    backend : str
        ``gloo`` or ``nccl``.
    device : torch.device
        The device of this rank: ``cpu`` or ``cuda:LOCAL_RANK``.
    owns_group : bool
        Whether :func:`distributed_context` created the process group (and so destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    owns_group: bool = True

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes outputs."""
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank,
                "backend": self.backend, "device": str(self.device)}


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting ``RANK``/``WORLD_SIZE``)."""
    return all(os.environ.get(k) for k in ("RANK", "WORLD_SIZE"))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InputError(f"environment variable {name}={raw!r} is not an integer; it is set by torchrun") from exc


def _rank_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu' (gloo)")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise InputError(
            f"LOCAL_RANK {local_rank} but only {count} CUDA device(s) are visible on this machine; start at most "
            f"{count} processes per machine (torchrun --nproc_per_node {count})"
        )
    if device.index is not None and device.index != local_rank and world_size > 1:
        log.warning("device %s ignored in a distributed run: each process uses cuda:LOCAL_RANK (cuda:%d)",
                    device, local_rank)
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_context(
    device: str | torch.device = "cpu",
    *,
    enabled: bool | None = None,
    backend: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[DistContext | None]:
    """Join (or create) the default process group for a data-parallel run; yield ``None`` for a single process.

    Parameters
    ----------
    device : str or torch.device
        The requested device; a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process).
    enabled : bool, optional
        ``None`` (default): distributed when launched with ``WORLD_SIZE > 1`` (``torchrun``) or when the caller
        already initialised a process group of several ranks. ``True``: distributed even with one rank (it then
        needs the ``torchrun`` environment). ``False``: never.
    backend : {"gloo", "nccl"}, optional
        Default ``nccl`` for CUDA devices, ``gloo`` otherwise.
    timeout : float
        Seconds a collective waits for the other ranks before failing.

    Yields
    ------
    DistContext or None

    Notes
    -----
    A group created here is destroyed on exit, after a barrier when the block succeeded, and without one when it
    raised (destroying the group makes the other ranks' pending collectives fail instead of waiting for the
    timeout). A group the caller created is left to the caller.
    """
    import torch.distributed as dist

    device = torch.device(device)
    if enabled is False:
        yield None
        return
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world == 1 and not enabled:
            yield None
            return
        local_rank = _env_int("LOCAL_RANK", torch.cuda.current_device() if device.type == "cuda" else 0)
        ctx = DistContext(rank=dist.get_rank(), world_size=world, local_rank=local_rank,
                          backend=str(dist.get_backend()), device=_rank_device(device, local_rank, world),
                          owns_group=False)
        yield ctx
        return
    world = _env_int("WORLD_SIZE", 1)
    if enabled is None and world <= 1:
        yield None
        return
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed support; run in a single process")
    missing = [k for k in _ENV if not os.environ.get(k)]
    if missing:
        raise InputError(
            f"a distributed run needs the torchrun environment, but {', '.join(missing)} is not set; launch with "
            "`torchrun --nproc_per_node N ...` or `changedet train --nproc N`, or pass distributed=False"
        )
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    rank_device = _rank_device(device, local_rank, world)
    backend = backend or ("nccl" if rank_device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise InputError(f"unknown distributed backend {backend!r}; choose gloo (CPU) or nccl (CUDA)")
    if backend == "nccl" and rank_device.type != "cuda":
        raise InputError("the nccl backend needs CUDA devices; use backend gloo on the CPU")
    if rank_device.type == "cuda":
        torch.cuda.set_device(rank_device)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=_dt.timedelta(seconds=float(timeout)),
        device_id=rank_device if backend == "nccl" else None,
    )
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, device=rank_device)
    log.info("distributed: rank %d of %d (%s, %s)", rank, world, backend, rank_device)
    ok = False
    try:
        yield ctx
        ok = True
    finally:
        try:
            if ok:
                _barrier(ctx)
        finally:
            dist.destroy_process_group()


def _barrier(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index or 0])
    else:
        dist.barrier()


def _object_device(ctx: DistContext) -> torch.device | None:
    return ctx.device if ctx.backend == "nccl" else None


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of each batch of an epoch of ``length`` samples (a ``DataLoader`` ``batch_sampler``).

    The global batches are those a single process draws with ``DataLoader(batch_size=batch_size,
    shuffle=False, drop_last=drop_last)``: ``[0, b)``, ``[b, 2b)``... Rank ``r`` of ``world_size`` takes the
    positions ``r, r + world_size, ...`` of each global batch. The ranks' batches are disjoint, their union is the
    single-process epoch, and every rank takes the same number of steps (the collective operations of
    ``DistributedDataParallel`` need that). The dataset itself decides what index ``i`` means in each epoch
    (:meth:`changedet.data.sampling.ChipDataset.set_epoch`), so this sampler needs no ``set_epoch``.

    Parameters
    ----------
    length : int
        Samples per epoch.
    batch_size : int
        The *global* batch size (all ranks together); at least ``world_size``.
    rank, world_size : int
    drop_last : bool, optional
        Drop a last incomplete global batch. Default: as :func:`changedet.training.train` does, when the epoch
        holds more than one batch.

    Examples
    --------
    >>> [ShardedBatchSampler(8, batch_size=3, rank=r, world_size=2, drop_last=False).batches() for r in (0, 1)]
    [[[0, 2], [3, 5], [6]], [[1], [4], [7]]]
    """

    def __init__(self, length: int, *, batch_size: int, rank: int, world_size: int,
                 drop_last: bool | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in a world of {world_size} process(es)")
        if batch_size < 1 or length < 1:
            raise InputError(f"batch_size and length must be >= 1, got {batch_size} and {length}")
        self.length = int(length)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(length > batch_size) if drop_last is None else bool(drop_last)
        sizes = [len(g) for g in self.global_batches()]
        if not sizes or min(sizes) < self.world_size:
            raise InputError(
                f"a global batch of {min(sizes, default=0)} chip(s) cannot be shared by {world_size} processes "
                f"(chips_per_epoch {length}, batch_size {batch_size}); raise batch_size and chips_per_epoch to at "
                f"least {world_size}, or start fewer processes"
            )

    def global_batches(self) -> list[range]:
        """The single-process batches of an epoch (ranges of sample indices)."""
        n, b = self.length, self.batch_size
        stop = (n // b) * b if self.drop_last else n
        return [range(s, min(s + b, stop)) for s in range(0, stop, b)]

    def batches(self) -> list[list[int]]:
        """This rank's batches of an epoch (lists of sample indices)."""
        return [list(g[self.rank :: self.world_size]) for g in self.global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.global_batches())


def assign_by_size(sizes: Sequence[float], world_size: int) -> list[int]:
    """The rank of each item: largest first onto the least loaded rank (deterministic; ties to the lower rank).

    Used to spread whole validation scenes (``sizes``: pixel counts) over the ranks.
    """
    if world_size < 1:
        raise InputError(f"world_size must be >= 1, got {world_size}")
    load = [0.0] * world_size
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda j: (-float(sizes[j]), j)):
        r = min(range(world_size), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += float(sizes[i])
    return owner


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (a no-op in a single process); returns it."""
    if ctx is not None:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(obj: T, ctx: DistContext) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: T, ctx: DistContext) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the other ranks."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def _rebuild_error(kind: str, module: str, message: str) -> ChangedetError:
    import importlib

    try:
        cls = getattr(importlib.import_module(module), kind)
        if isinstance(cls, type) and issubclass(cls, ChangedetError):
            return cls(message)  # same class, same exit code, on every rank
    except Exception:  # noqa: BLE001 - fall back to a generic error below
        pass
    return RankFailedError(f"rank 0 failed with {kind}: {message}")


def run_on_main(fn: Callable[[], T], ctx: DistContext | None) -> T:
    """Run ``fn`` on rank 0 only and return its (picklable) result on every rank.

    If ``fn`` raises on rank 0, rank 0 re-raises it and the other ranks raise the same changedet error class with
    the same message (other exceptions: :class:`RankFailedError`), so no rank waits for a result that never comes.
    In a single process (``ctx`` None) this is just ``fn()``.
    """
    if ctx is None:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - handed to every rank, re-raised below
            error = exc
            box[0] = ("error", type(exc).__name__, type(exc).__module__, str(exc))
    dist.broadcast_object_list(box, src=0, device=_object_device(ctx))
    if error is not None:
        raise error
    if box[0][0] == "error":
        _, kind, module, message = box[0]
        raise _rebuild_error(kind, module, message)
    result: T = box[0][1]
    return result


def broadcast_buffers(module: nn.Module, ctx: DistContext | None) -> None:
    """Copy rank 0's buffers (batch-norm running statistics...) to every rank, in place.

    ``DistributedDataParallel`` broadcasts buffers at the start of each forward pass, but each rank then updates its
    running statistics with its own batch: after the last step of an epoch they differ. Calling this before
    validating or saving makes every replica identical to rank 0's.
    """
    if ctx is None:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def state_dict_digest(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict (memory-format independent).

    Two modules or checkpoints with the same digest hold bit-identical weights and buffers.

    Examples
    --------
    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> state_dict_digest(a) == state_dict_digest(b) == state_dict_digest(dict(a.state_dict()))
    True
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
