"""M3L on several processes (``torchrun``) or several micro-batches, equal to one process.

The foundations of distributed training; see ``docs/distributed.md``:

* set-up from the ``torchrun`` environment: :func:`init_distributed`,
  :class:`DistributedContext`, :func:`destroy_distributed`, :func:`barrier`,
  :func:`is_main_process`, :func:`on_main_process`;
* collectives, each the identity without a process group: :func:`all_gather_concat`,
  :func:`all_gather_concat_with_grad`, :func:`all_reduce_mean` (differentiable, for the
  meta-train gradient), :func:`all_reduce_grads_` (the outer gradient),
  :func:`broadcast_object`;
* agreement checks: :func:`check_config_consistency`, :func:`check_same_across_ranks`;
* ranks, real or emulated: :class:`RankGroup`, :class:`ProcessRanks`,
  :class:`MicroBatchRanks`;
* the batch split by identity: :func:`split_batch_by_identity`, :func:`identity_chunk`,
  :func:`local_chunks`; in batch order, as ``nn.DataParallel``: :func:`split_batch_in_order`;
* sharded evaluation: :func:`extract_features_sharded`, :func:`shard_range`.
"""

from metareid.distributed.checks import check_config_consistency, check_same_across_ranks
from metareid.distributed.collectives import (
    all_gather_concat,
    all_gather_concat_with_grad,
    all_reduce_grads_,
    all_reduce_mean,
    broadcast_object,
)
from metareid.distributed.context import (
    DEFAULT_TIMEOUT,
    DistributedContext,
    barrier,
    destroy_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    on_main_process,
)
from metareid.distributed.evaluation import extract_features_sharded, shard_range
from metareid.distributed.ranks import MicroBatchRanks, ProcessRanks, RankGroup
from metareid.distributed.split import (
    identity_chunk,
    local_chunks,
    split_batch_by_identity,
    split_batch_in_order,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "MicroBatchRanks",
    "ProcessRanks",
    "RankGroup",
    "all_gather_concat",
    "all_gather_concat_with_grad",
    "all_reduce_grads_",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "check_config_consistency",
    "check_same_across_ranks",
    "destroy_distributed",
    "extract_features_sharded",
    "get_rank",
    "get_world_size",
    "identity_chunk",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "local_chunks",
    "on_main_process",
    "shard_range",
    "split_batch_by_identity",
    "split_batch_in_order",
]
