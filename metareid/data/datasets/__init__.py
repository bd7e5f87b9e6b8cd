"""Person ReID datasets: record type, dataset classes and the name registry."""

from metareid.data.datasets._splits import SPLIT_FILE_NAME, SPLIT_SEED
from metareid.data.datasets.base import (
    JUNK_PID,
    BadImageError,
    ImageRecord,
    OnBadImage,
    ReIDDataset,
    SplitStats,
    Use,
    drop_junk,
    load_image,
    merge_test_into_train,
    relabel,
    split_stats,
    verify_images,
)
from metareid.data.datasets.cuhk02 import CUHK02
from metareid.data.datasets.cuhk03 import CUHK03, CUHK03NP
from metareid.data.datasets.cuhksysu import CUHKSYSU
from metareid.data.datasets.dukemtmc import DukeMTMCreID
from metareid.data.datasets.generic import MARKET_NAME_PATTERN, GenericDataset
from metareid.data.datasets.grid import GRID
from metareid.data.datasets.ilids import ILIDS
from metareid.data.datasets.market1501 import Market1501
from metareid.data.datasets.msmt17 import MSMT17
from metareid.data.datasets.prid import PRID
from metareid.data.datasets.registry import (
    DatasetFactory,
    build_dataset,
    dataset_factory,
    list_datasets,
    register_dataset,
)
from metareid.data.datasets.synthetic_benchmark import SYNTHETIC_DOMAIN_DIR, SyntheticReID
from metareid.data.datasets.viper import VIPeR

__all__ = [
    "CUHK02",
    "CUHK03",
    "CUHK03NP",
    "CUHKSYSU",
    "GRID",
    "ILIDS",
    "JUNK_PID",
    "MARKET_NAME_PATTERN",
    "MSMT17",
    "PRID",
    "SPLIT_FILE_NAME",
    "SPLIT_SEED",
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
    "Use",
    "VIPeR",
    "build_dataset",
    "dataset_factory",
    "drop_junk",
    "list_datasets",
    "load_image",
    "merge_test_into_train",
    "register_dataset",
    "relabel",
    "split_stats",
    "verify_images",
]
