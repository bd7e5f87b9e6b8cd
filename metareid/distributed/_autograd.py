"""The two differentiable collectives metareid uses, from ``torch.distributed.nn``.

``torch.distributed.nn.functional.all_gather`` and ``all_reduce`` are autograd functions
whose backward is itself a collective built from autograd functions, so gradients of any
order cross ranks: the backward of an all-gather sums, on every rank, the gradients that
all ranks computed for that rank's slice; the backward of a sum all-reduce is a sum
all-reduce of the gradients.

PyTorch 2.x marks them deprecated in favour of ``torch.distributed._functional_collectives``,
a private module without a differentiable all-reduce, and warns (``FutureWarning``) at
every call. This module is the only place that calls them and silences that one warning,
so a later replacement touches one file.
"""

from __future__ import annotations

import warnings

import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor

__all__ = ["all_gather_autograd", "all_reduce_sum_autograd"]

_DEPRECATION = r"torch\.distributed\.nn\.functional\.\w+ is deprecated"


def all_gather_autograd(tensor: Tensor, group: dist.ProcessGroup | None) -> list[Tensor]:
    """One tensor per rank, in rank order; every rank's tensor must have the same shape."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        if group is None:
            return list(dist_nn.all_gather(tensor))
        return list(dist_nn.all_gather(tensor, group=group))


def all_reduce_sum_autograd(tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """The element-wise sum over ranks, as a new tensor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        if group is None:
            return dist_nn.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return dist_nn.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
