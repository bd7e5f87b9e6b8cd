"""Collectives with exact semantics, each the identity when there is one rank.

All of them act on the default process group unless ``group`` is given, and every rank of
the group must call them in the same order (as with any ``torch.distributed`` collective).
Each one is bounded by the process group's timeout (see
:func:`metareid.distributed.init_distributed`). Shape or dtype disagreements between ranks
raise the same ``ValueError`` on every rank instead of hanging or corrupting data.

Under NCCL tensors travel through this rank's CUDA device, under gloo through the CPU;
results come back on the input's device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor

from metareid._validation import describe
from metareid.distributed._autograd import all_gather_autograd, all_reduce_sum_autograd
from metareid.distributed._layout import (
    active,
    agree,
    comm_device,
    group_rank,
    group_size,
    tensor_signature,
)

__all__ = [
    "all_gather_concat",
    "all_gather_concat_with_grad",
    "all_reduce_grads_",
    "all_reduce_mean",
    "broadcast_object",
]

T = TypeVar("T")


def _check_batch_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor with a first (batch) dimension, got {describe(value)}"
        )
    if value.dim() == 0:
        raise ValueError(f"{name} must have a first (batch) dimension, got a 0-d tensor")
    return value


def _gather_layout(tensor: Tensor, group: dist.ProcessGroup | None, name: str) -> list[int]:
    """Rows of every rank; raises on every rank if trailing shapes or dtypes differ."""
    signature = tensor_signature(tensor)
    mismatch, extras = agree(group, signature, extra=(tensor.shape[0],))
    if mismatch is not None:
        per_rank = ", ".join(
            f"rank {r}: trailing shape {shape} dtype {dtype}"
            for r, (shape, dtype) in enumerate(mismatch)
        )
        raise ValueError(
            f"{name} must have the same trailing shape and dtype on every rank to be gathered "
            f"along dim 0, got {per_rank}"
        )
    return [row[0] for row in extras]


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    if tensor.shape[0] == rows:
        return tensor
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad])


def all_gather_concat(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Every rank's ``tensor``, concatenated along dim 0 in rank order, without gradient.

    The first dimension may differ between ranks (each rank pads to the largest and the
    padding is cut off again); the other dimensions and the dtype must agree. The result
    is the same on every rank. Without a process group, or with one rank, it is
    ``tensor.detach()``.

    Args:
        tensor: this rank's rows, shape (B_r, ...).
        group: process group; ``None`` (default) is the default group.

    Returns:
        Shape (sum_r B_r, ...), on ``tensor``'s device, detached.

    Raises:
        ValueError: the trailing shapes or dtypes differ between ranks (raised on every
            rank), or ``tensor`` is 0-d.
        TypeError: ``tensor`` is not a tensor.

    Example:
        >>> import torch
        >>> all_gather_concat(torch.tensor([[1, 2], [3, 4]]))  # one process: itself
        tensor([[1, 2],
                [3, 4]])
    """
    tensor = _check_batch_tensor("tensor", tensor)
    if not active(group):
        return tensor.detach()
    rows = _gather_layout(tensor, group, "tensor")
    if max(rows) == 0:  # nothing anywhere: no collective on empty buffers
        return tensor.detach()
    device = comm_device(group, tensor.device)
    is_bool = tensor.dtype == torch.bool  # gloo cannot gather bool tensors
    local = tensor.detach().to(torch.uint8) if is_bool else tensor.detach()
    local = _pad_rows(local.to(device).contiguous(), max(rows))
    out = [torch.empty_like(local) for _ in rows]
    dist.all_gather(out, local, group=group)
    result = torch.cat([o[:n] for o, n in zip(out, rows, strict=True)]).to(tensor.device)
    return result.bool() if is_bool else result


def all_gather_concat_with_grad(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Like :func:`all_gather_concat`, differentiable: gradients flow back to every rank.

    Built on ``torch.distributed.nn.functional.all_gather``. In ``backward`` each rank
    receives, for its own rows, the sum of the gradients that all ranks computed for those
    rows. So if rank ``r`` computes ``loss_r`` from the gathered tensor, rank ``r``'s
    ``tensor.grad`` is ``d(sum_s loss_s)/d tensor_r``: a loss computed on the gathered
    batch back-propagates exactly as on one process holding the concatenated batch. Higher
    order gradients (``create_graph=True``) cross ranks too. Every rank must run the
    backward (it is a collective); the rows of the other ranks carry no gradient to this
    rank's parameters except through that exchange.

    Without a process group, or with one rank, it returns ``tensor`` itself.

    Args:
        tensor: this rank's rows, shape (B_r, ...), floating point.
        group: process group; ``None`` (default) is the default group.

    Returns:
        Shape (sum_r B_r, ...), on ``tensor``'s device, connected to the graph.

    Raises:
        ValueError: trailing shapes or dtypes differ between ranks (on every rank), or
            ``tensor`` is 0-d.
        TypeError: ``tensor`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> all_gather_concat_with_grad(x).sum().backward()
        >>> x.grad
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    tensor = _check_batch_tensor("tensor", tensor)
    if not tensor.is_floating_point():
        raise TypeError(
            f"tensor must be floating point to be gathered with gradient, got dtype "
            f"{tensor.dtype}; use all_gather_concat for labels"
        )
    if not active(group):
        return tensor
    rows = _gather_layout(tensor, group, "tensor")
    if max(rows) == 0:  # nothing anywhere (the same answer on every rank)
        return tensor
    device = comm_device(group, tensor.device)
    local = _pad_rows(tensor.to(device), max(rows))
    out = all_gather_autograd(local, group)
    return torch.cat([o[:n] for o, n in zip(out, rows, strict=True)]).to(tensor.device)


def _flat_groups(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def all_reduce_mean(
    tensors: Sequence[Tensor | None], group: dist.ProcessGroup | None = None
) -> list[Tensor | None]:
    """The element-wise mean over ranks of each tensor, differentiable.

    Meant for the meta-train gradient of M3L: with ``grads_r = autograd.grad(loss_r,
    params, create_graph=True)`` on each rank, ``all_reduce_mean(grads_r)`` is the global
    gradient, identical on every rank, and it stays in the graph: the backward of a later
    loss through it reaches every rank's ``grads_r`` (a sum all-reduce of the incoming
    gradients, divided by the world size), so the second-order path of ``Theta'`` crosses
    ranks exactly. Built on ``torch.distributed.nn.functional.all_reduce`` (SUM, then
    division, as gloo has no AVG); tensors of one dtype and device are flattened into one
    collective.

    ``None`` entries (gradients of unused parameters) stay ``None``; they must be ``None``
    on every rank, as must the shapes and dtypes agree.

    Without a process group, or with one rank, it returns the tensors themselves.

    Args:
        tensors: this rank's tensors (any shapes), or ``None``.
        group: process group; ``None`` (default) is the default group.

    Returns:
        One tensor (or ``None``) per input, on the input's device.

    Raises:
        ValueError: the list length, shapes, dtypes or ``None`` positions differ between
            ranks (raised on every rank).
        TypeError: an entry is neither a tensor nor ``None``.

    Example:
        >>> import torch
        >>> all_reduce_mean([torch.tensor([1.0, 2.0]), None])
        [tensor([1., 2.]), None]
    """
    items = list(tensors)
    for i, t in enumerate(items):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor or None, got {describe(t)}")
    if not active(group):
        return items
    signature = [None if t is None else (tuple(t.shape), str(t.dtype)) for t in items]
    mismatch, _ = agree(group, signature)
    if mismatch is not None:
        raise ValueError(
            "tensors must have the same length, shapes, dtypes and None entries on every "
            f"rank to be averaged, got {_describe_ranks(mismatch)}"
        )
    world = group_size(group)
    present = [t for t in items if t is not None]
    means: list[Tensor] = list(present)
    for (device, _dtype), index in _flat_groups(present).items():
        parts = [present[i] for i in index]
        flat = torch.cat([p.reshape(-1) for p in parts]).to(comm_device(group, device))
        total = all_reduce_sum_autograd(flat, group).to(device) / world
        for i, piece in zip(index, total.split([p.numel() for p in parts]), strict=True):
            means[i] = piece.view_as(present[i])
    it = iter(means)
    return [None if t is None else next(it) for t in items]


def _describe_ranks(signatures: Sequence[object]) -> str:
    text = "; ".join(f"rank {r}: {s}" for r, s in enumerate(signatures))
    return text if len(text) < 2000 else text[:2000] + " ..."


def all_reduce_grads_(
    params: Iterable[Tensor],
    group: dist.ProcessGroup | None = None,
    bucket_cap_mb: float = 25.0,
) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks, in place (the outer step).

    Equivalent to what ``DistributedDataParallel`` does after ``backward``: call it after
    :meth:`metareid.MetaLearner.meta_backward` (or any ``backward``) and before
    ``optimizer.step()``. Gradients are flattened into buckets of at most
    ``bucket_cap_mb`` megabytes per dtype and device, one collective per bucket, and
    copied back. A parameter whose ``.grad`` is ``None`` on some ranks but not on others
    counts as zero there (it receives the mean of the others' gradients divided by the
    world size); one that has no gradient on any rank keeps ``None``.

    Without a process group, or with one rank, it does nothing.

    Args:
        params: the parameters, in the same order on every rank (e.g.
            ``model.parameters()``).
        group: process group; ``None`` (default) is the default group.
        bucket_cap_mb: largest bucket, in MiB, > 0. Default 25 (DDP's default).

    Raises:
        ValueError: the number, shapes or dtypes of the parameters differ between ranks
            (raised on every rank), or ``bucket_cap_mb`` is not > 0.
        TypeError: an entry is not a tensor.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> w.sum().backward()
        >>> all_reduce_grads_([w])  # one process: unchanged
        >>> w.grad
        tensor([1., 1.])
    """
    plist = list(params)
    for i, p in enumerate(plist):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {describe(p)}")
    if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)):
        raise TypeError(f"bucket_cap_mb must be a number > 0, got {describe(bucket_cap_mb)}")
    if not bucket_cap_mb > 0:
        raise ValueError(f"bucket_cap_mb must be a number > 0, got {bucket_cap_mb!r}")
    if not active(group):
        return
    signature = [(tuple(p.shape), str(p.dtype)) for p in plist]
    mismatch, _ = agree(group, signature)
    if mismatch is not None:
        raise ValueError(
            "params must have the same number, shapes and dtypes on every rank, got "
            f"{_describe_ranks(mismatch)}"
        )
    has_grad = torch.tensor([p.grad is not None for p in plist], dtype=torch.uint8)
    has_grad = has_grad.to(comm_device(group, has_grad.device))
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX, group=group)
    any_grad = has_grad.cpu().bool().tolist()
    with torch.no_grad():
        for p, needed in zip(plist, any_grad, strict=True):
            if needed and p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [cast(Tensor, p.grad) for p, needed in zip(plist, any_grad, strict=True) if needed]
        world = group_size(group)
        cap = int(bucket_cap_mb * 2**20)
        for (device, _dtype), index in _flat_groups(grads).items():
            for bucket in _buckets([grads[i] for i in index], cap):
                flat = torch.cat([g.reshape(-1) for g in bucket]).to(comm_device(group, device))
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
                flat = flat.to(device).div_(world)
                for g, piece in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                    g.copy_(piece.view_as(g))


def _buckets(tensors: Sequence[Tensor], cap_bytes: int) -> list[list[Tensor]]:
    """Consecutive runs of tensors of at most ``cap_bytes`` (a larger tensor is alone)."""
    out: list[list[Tensor]] = []
    current: list[Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > cap_bytes:
            out.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    if current:
        out.append(current)
    return out


def broadcast_object(obj: T, src: int = 0, group: dist.ProcessGroup | None = None) -> T:
    """Rank ``src``'s ``obj`` (any picklable object), returned on every rank.

    Use it for decisions that must agree across ranks, such as the meta-test domain drawn
    on rank 0. The other ranks' ``obj`` is ignored. Without a process group, or with one
    rank, it returns ``obj``.

    Args:
        obj: the value on rank ``src``; anything on the other ranks.
        src: the sending rank within ``group``, in [0, world_size). Default 0.
        group: process group; ``None`` (default) is the default group.

    Returns:
        Rank ``src``'s object.

    Raises:
        ValueError: ``src`` is not a rank of the group.

    Example:
        >>> broadcast_object({"meta_test": 2})
        {'meta_test': 2}
    """
    if isinstance(src, bool) or not isinstance(src, int):
        raise TypeError(f"src must be an int rank, got {describe(src)}")
    world = group_size(group)
    if not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src}")
    if not active(group):
        return obj
    box: list[object] = [obj if group_rank(group) == src else None]
    device = comm_device(group, torch.device("cpu"))
    global_src = src if group is None else dist.get_global_rank(group, src)
    dist.broadcast_object_list(box, src=global_src, group=group, device=device)
    return box[0]  # type: ignore[return-value]
