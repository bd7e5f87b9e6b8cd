"""metareid: memory-based multi-source meta-learning (M3L) for generalizable person ReID.

The five building blocks of the method:

* :class:`MetaBN` (Eq. 5-7), :func:`metabn_phase` and :func:`mixture_count`,
* :class:`MemoryBank` (Eq. 2),
* :class:`MemoryIDLoss` (Eq. 3),
* :class:`HardTripletLoss` (Eq. 4),
* :class:`MetaLearner` (Algorithm 1).

To use a trained model, :class:`FeatureExtractor` maps images to embeddings
(:mod:`metareid.inference`). ``import metareid`` loads the building blocks and what they
need; the trainer (:mod:`metareid.engine`), distributed training, inference and pictures
load when first used (``metareid.FeatureExtractor`` resolves lazily).

Pure-function twins live in :mod:`metareid.functional`.
"""

from typing import Any

from metareid._validation import set_value_checks, value_checks
from metareid.layers.metabn import MetaBN, metabn_phase, mixture_count
from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss
from metareid.memory.bank import MemoryBank
from metareid.meta.learner import MetaLearner, MetaStepResult
from metareid.meta.phase import Phase

__version__ = "0.1.0.dev0"

#: Names resolved on first use, from modules that ``import metareid`` does not load.
_LAZY = {"FeatureExtractor": "metareid.inference.extractor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metareid' has no attribute {name!r}")


__all__ = [
    "FeatureExtractor",
    "HardTripletLoss",
    "MemoryBank",
    "MemoryIDLoss",
    "MetaBN",
    "MetaLearner",
    "MetaStepResult",
    "Phase",
    "__version__",
    "metabn_phase",
    "mixture_count",
    "set_value_checks",
    "value_checks",
]
