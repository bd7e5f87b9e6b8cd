"""Agreement checks between ranks: the same config at start-up, the same state when debugging.

Both raise the same ``ValueError`` on every rank when the ranks disagree, so a job fails
at once and every rank's log names the problem, instead of ranks drifting apart silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from metareid._validation import describe
from metareid.distributed._layout import active, agree, comm_device, group_size

__all__ = ["check_config_consistency", "check_same_across_ranks"]


def _config_text(config: object) -> tuple[str | None, str | None]:
    """The canonical JSON text of ``config``, or the reason it has none."""
    if not isinstance(config, Mapping):
        return (
            None,
            f"config must be a mapping (e.g. TrainConfig.to_dict()), got {describe(config)}",
        )
    try:
        return json.dumps(config, sort_keys=True, allow_nan=True), None
    except (TypeError, ValueError) as exc:
        return None, f"config must be JSON-serialisable: {exc}"


def _value_text(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def check_config_consistency(
    config: Mapping[str, Any], group: dist.ProcessGroup | None = None
) -> None:
    """Refuse to start when the ranks were given different configs.

    Each rank serialises ``config`` to canonical JSON (sorted keys), the ranks compare a
    fingerprint of it (one small all-gather) and, only if they differ, gather the configs
    themselves to name the differing keys. Call it right after
    :func:`~metareid.distributed.init_distributed`, with the run's config as a
    JSON-serialisable dict (``TrainConfig.to_dict()``). Keys that may legitimately differ
    between ranks (a per-rank device, for instance) must be removed first.

    Without a process group, or with one rank, it only checks that ``config`` is a
    JSON-serialisable mapping.

    Args:
        config: the run's settings.
        group: process group; ``None`` (default) is the default group.

    Raises:
        ValueError: the configs differ: on every rank, naming each differing key with its
            value on each rank (a key missing on a rank shows as ``<missing>``).
        TypeError: ``config`` is not a mapping or not JSON-serialisable (on every rank,
            naming the ranks concerned, if any rank's is not).

    Example:
        >>> check_config_consistency({"lr": 3.5e-4, "sources": ["market1501", "msmt17"]})
        >>> check_config_consistency({"device": object()})
        Traceback (most recent call last):
        ...
        TypeError: config must be JSON-serialisable: ...
    """
    text, error = _config_text(config)
    if not active(group):
        if error is not None:
            raise TypeError(error)
        return
    signature = ("error", error) if text is None else ("config", text)
    mismatch, _ = agree(group, signature)
    if mismatch is None:
        if error is not None:  # the same problem on every rank
            raise TypeError(error)
        return
    broken = [(r, msg) for r, (kind, msg) in enumerate(mismatch) if kind == "error"]
    if broken:
        raise TypeError("; ".join(f"rank {r}: {msg}" for r, msg in broken))
    configs = [json.loads(payload) for _, payload in mismatch]
    keys = sorted({key for cfg in configs for key in cfg})
    missing = object()
    lines = []
    for key in keys:
        values = [cfg.get(key, missing) for cfg in configs]
        if all(v == values[0] for v in values[1:]) and all(v is not missing for v in values):
            continue
        shown = ", ".join(
            f"rank {r}: {'<missing>' if v is missing else _value_text(v)}"
            for r, v in enumerate(values)
        )
        lines.append(f"{key} ({shown})")
    raise ValueError(
        "every rank must run with the same config; differing keys: " + "; ".join(lines)
    )


def check_same_across_ranks(
    tensors: Mapping[str, Tensor],
    group: dist.ProcessGroup | None = None,
    atol: float = 0.0,
) -> None:
    """Assert that named tensors (memory banks, weights...) are the same on every rank.

    A debugging check: each tensor is broadcast from rank 0 and compared on every rank;
    the largest absolute difference of every rank is then gathered, so that all ranks
    raise the same error. NaNs count as equal only where both sides are NaN. Costs one
    broadcast per tensor.

    Without a process group, or with one rank, it only checks its arguments.

    Args:
        tensors: name -> tensor, the same names, shapes and dtypes on every rank (e.g.
            ``{f"memory.{d}": bank.features for d, bank in enumerate(banks)}``).
        group: process group; ``None`` (default) is the default group.
        atol: largest tolerated absolute difference, >= 0. Default 0 (bitwise equal
            values).

    Raises:
        ValueError: a tensor differs by more than ``atol`` between rank 0 and another rank
            (naming the tensor, the largest difference and the rank), or the names,
            shapes or dtypes differ between ranks (on every rank).
        TypeError: ``tensors`` is not a mapping of names to tensors.

    Example:
        >>> import torch
        >>> check_same_across_ranks({"memory.0": torch.eye(3)})  # one process: nothing to compare
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of names to tensors, got {describe(tensors)}")
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got {describe(value)}")
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise ValueError(f"atol must be a number >= 0, got {atol!r}")
    if not active(group):
        return
    names = [str(name) for name in tensors]
    signature = [
        (name, tuple(t.shape), str(t.dtype))
        for name, t in zip(names, tensors.values(), strict=True)
    ]
    mismatch, _ = agree(group, signature)
    if mismatch is not None:
        per_rank = "; ".join(f"rank {r}: {sig}" for r, sig in enumerate(mismatch))
        raise ValueError(
            f"tensors must have the same names, shapes and dtypes on every rank, got {per_rank}"
        )
    src = 0 if group is None else dist.get_global_rank(group, 0)
    diffs = []
    for value in tensors.values():
        local = value.detach().to(comm_device(group, value.device))
        reference = local.clone().contiguous()
        if reference.dtype == torch.bool:
            reference = reference.to(torch.uint8)
        dist.broadcast(reference, src=src, group=group)
        a, b = local.double(), reference.to(local.device).double()
        both_nan = torch.isnan(a) & torch.isnan(b)
        diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
        diffs.append(float(torch.nan_to_num(diff, nan=float("inf")).max()) if diff.numel() else 0.0)
    local_diffs = torch.tensor(diffs, dtype=torch.float64)
    local_diffs = local_diffs.to(comm_device(group, local_diffs.device))
    gathered = [torch.empty_like(local_diffs) for _ in range(group_size(group))]
    dist.all_gather(gathered, local_diffs, group=group)
    table = torch.stack([g.cpu() for g in gathered])  # (ranks, tensors)
    problems = []
    for i, name in enumerate(names):
        worst, rank = table[:, i].max(dim=0)
        if float(worst) > atol:
            problems.append(
                f"{name!r} (max |difference| to rank 0: {float(worst):.3g} on rank {int(rank)})"
            )
    if problems:
        raise ValueError(
            f"tensors must agree across ranks within atol={atol:g}; differing: "
            + ", ".join(problems)
        )
