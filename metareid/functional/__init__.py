"""Pure functions behind metareid's modules (torch tensors in, torch tensors out)."""

from metareid.functional.memory import (
    memory_init,
    memory_logits,
    memory_update,
    memory_update_,
)
from metareid.functional.memory_id import memory_id_loss
from metareid.functional.metabn import metabn_mix, metabn_mixtures
from metareid.functional.optim import adam_step, sgd_step
from metareid.functional.triplet import (
    hard_triplet_loss,
    pairwise_euclidean_distance,
    triplet_anchor_mask,
)

__all__ = [
    "adam_step",
    "hard_triplet_loss",
    "memory_id_loss",
    "memory_init",
    "memory_logits",
    "memory_update",
    "memory_update_",
    "metabn_mix",
    "metabn_mixtures",
    "pairwise_euclidean_distance",
    "sgd_step",
    "triplet_anchor_mask",
]
