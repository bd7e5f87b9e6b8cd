"""Person ReID datasets: record type, dataset classes and the name registry."""

from metareid.data.datasets.base import (
    JUNK_PID,
    BadImageError,
    ImageRecord,
    OnBadImage,
    ReIDDataset,
    SplitStats,
    drop_junk,
    load_image,
    relabel,
    split_stats,
    verify_images,
)
from metareid.data.datasets.cuhk03 import CUHK03, CUHK03NP
from metareid.data.datasets.dukemtmc import DukeMTMCreID
from metareid.data.datasets.generic import MARKET_NAME_PATTERN, GenericDataset
from metareid.data.datasets.market1501 import Market1501
from metareid.data.datasets.msmt17 import MSMT17
from metareid.data.datasets.registry import (
    DatasetFactory,
    build_dataset,
    list_datasets,
    register_dataset,
)
from metareid.data.datasets.synthetic import SYNTHETIC_DOMAIN_DIR, SyntheticReID

__all__ = [
    "CUHK03",
    "CUHK03NP",
    "JUNK_PID",
    "MARKET_NAME_PATTERN",
    "MSMT17",
    "SYNTHETIC_DOMAIN_DIR",
    "BadImageError",
    "DatasetFactory",
    "DukeMTMCreID",
    "GenericDataset",
    "ImageRecord",
    "Market1501",
    "OnBadImage",
    "ReIDDataset",
    "SplitStats",
    "SyntheticReID",
    "build_dataset",
    "drop_junk",
    "list_datasets",
    "load_image",
    "register_dataset",
    "relabel",
    "split_stats",
    "verify_images",
]
