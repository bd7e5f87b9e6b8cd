"""Process-group set-up from the ``torchrun`` environment, and the small helpers around it.

``torchrun`` (``python -m torch.distributed.run``) starts one process per rank and tells
each one who it is through environment variables: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_distributed` reads them,
joins the process group and returns a :class:`DistributedContext`. Without these variables
it joins nothing and returns the single-process context, so the same script runs with
``python`` and with ``torchrun``.

Every helper of :mod:`metareid.distributed` behaves as the identity (or a no-op) when
``torch.distributed`` is not initialised or the world holds one rank.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist

from metareid._validation import describe

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "barrier",
    "destroy_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "on_main_process",
]

#: Default bound on every collective of the process group (and on joining it): a rank that
#: stops answering makes the others fail after this long instead of hanging.
DEFAULT_TIMEOUT = timedelta(minutes=5)

_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_DEVICE_TYPES = ("cpu", "cuda")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is in the job.

    Attributes:
        rank: global rank in [0, world_size).
        world_size: number of ranks of the job (1 for a single process).
        local_rank: rank on this machine; selects the CUDA device.
        device: the device this rank computes on.
        backend: ``"nccl"``, ``"gloo"``..., or ``None`` when no process group exists.
        is_main: ``rank == 0``: the process that logs, writes checkpoints and pictures.

    Example:
        >>> import torch
        >>> ctx = DistributedContext(0, 1, 0, torch.device("cpu"), None, True)
        >>> ctx.is_distributed
        False
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    is_main: bool

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one rank exists."""
        return self.backend is not None and self.world_size > 1


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer >= {minimum}, got {raw!r}"
        ) from None
    if value < minimum:
        raise ValueError(
            f"environment variable {name} must be an integer >= {minimum}, got {raw!r}"
        )
    return value


def _as_timeout(timeout: timedelta | float) -> timedelta:
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(
            f"timeout must be a datetime.timedelta or a number of seconds, got {describe(timeout)}"
        )
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"timeout must be a finite duration > 0, got {timeout!r}")
    return timedelta(seconds=seconds)


def _pick_device(device_type: str | None, local_rank: int) -> torch.device:
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type not in _DEVICE_TYPES:
        raise ValueError(
            f"device_type must be one of {list(_DEVICE_TYPES)} or None, got {device_type!r}"
        )
    if device_type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device_type='cuda' was asked for but CUDA is not available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK={local_rank} needs CUDA device {local_rank}, but this machine has "
            f"{count}; start at most {count} processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def _current_context() -> DistributedContext:
    """The context of an already initialised process group."""
    rank, world = dist.get_rank(), dist.get_world_size()
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world, local_rank, device, backend, rank == 0)


def init_distributed(
    backend: str | None = None,
    timeout: timedelta | float = DEFAULT_TIMEOUT,
    device_type: str | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join the process group described by the ``torchrun`` environment.

    With ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set
    (``torchrun`` sets them all), this initialises the default process group with the
    ``env://`` method, selects CUDA device ``LOCAL_RANK`` (``torch.cuda.set_device``) when
    the rank computes on CUDA, and returns the rank's context. Without ``RANK`` and
    ``WORLD_SIZE`` it initialises nothing and returns the single-process context (rank 0
    of 1, ``backend=None``). If a process group already exists it is kept and described.

    Args:
        backend: ``None`` (default) picks ``"nccl"`` on CUDA and ``"gloo"`` on the CPU;
            any backend name ``torch.distributed`` knows is passed on.
        timeout: bound on joining the group and on every later collective, as a
            ``timedelta`` or in seconds. Default :data:`DEFAULT_TIMEOUT` (5 minutes),
            much shorter than PyTorch's own default (10 to 30 minutes), so that a rank that
            stops answering fails the job quickly; raise it if ranks legitimately wait
            longer for one another (e.g. rank 0 writing a large checkpoint).
        device_type: ``"cuda"``, ``"cpu"`` or ``None`` (default: CUDA when available).
        env: the environment to read; ``None`` (default) reads ``os.environ``.

    Returns:
        The rank, world size, local rank, device and backend of this process.

    Raises:
        ValueError: only some of the variables are set (the missing ones are named), one
            is not a valid integer, ``RANK`` is not below ``WORLD_SIZE``, ``LOCAL_RANK``
            has no CUDA device, CUDA was asked for but is missing, or NCCL is asked for
            on the CPU.
        TypeError: for a timeout that is not a duration.

    Example:
        >>> ctx = init_distributed(env={})  # no torchrun variables: one process
        >>> ctx.rank, ctx.world_size, ctx.backend, ctx.is_main
        (0, 1, None, True)
    """
    env = os.environ if env is None else env
    timeout = _as_timeout(timeout)
    if backend is not None and not isinstance(backend, str):
        raise TypeError(
            f"backend must be a string such as 'gloo' or 'nccl', got {describe(backend)}"
        )
    if dist.is_available() and dist.is_initialized():
        return _current_context()
    present = [name for name in _REQUIRED_ENV if name in env]
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return DistributedContext(0, 1, 0, _pick_device(device_type, 0), None, True)
    missing = [name for name in _REQUIRED_ENV if name not in env]
    if missing:
        raise ValueError(
            f"the torchrun environment is incomplete: {', '.join(present)} set but "
            f"{', '.join(missing)} missing; launch with torchrun or set all of "
            f"{', '.join(_REQUIRED_ENV)}"
        )
    world_size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if rank >= world_size:
        raise ValueError(f"RANK must be < WORLD_SIZE={world_size}, got RANK={rank}")
    device = _pick_device(device_type, local_rank)
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("backend='nccl' needs CUDA devices; use backend='gloo' on the CPU")
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed support")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    return DistributedContext(rank, world_size, local_rank, device, backend, rank == 0)


def destroy_distributed() -> None:
    """Leave and destroy the default process group; a no-op if none exists.

    Example:
        >>> destroy_distributed()  # nothing to destroy in a single process
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group exists and holds more than one rank.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank; 0 without a process group.

    Example:
        >>> get_rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks; 1 without a process group.

    Example:
        >>> get_world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a single process.

    Example:
        >>> is_main_process()
        True
    """
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point; a no-op without a process group.

    Bounded by the process group's timeout (see :func:`init_distributed`). With NCCL the
    barrier runs on this rank's current CUDA device.

    Example:
        >>> barrier()  # returns at once in a single process
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def on_main_process(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Wrap ``fn`` so that it runs on rank 0 only; other ranks get ``None`` back.

    Meant for logging, progress bars and pictures: ``Trainer(cfg, log=on_main_process(print))``.
    The rank is read at call time, so the wrapper may be built before
    :func:`init_distributed`. Do not wrap code that runs collectives: the other ranks would
    not join them.

    Args:
        fn: any callable.

    Returns:
        A callable with the same arguments.

    Example:
        >>> log = on_main_process(print)
        >>> log("only rank 0 prints this")
        only rank 0 prints this
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {describe(fn)}")

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        if get_rank() != 0:
            return None
        return fn(*args, **kwargs)

    return wrapper
