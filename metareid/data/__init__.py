"""Data for multi-source domain-generalizable person ReID.

Datasets (Market-1501, DukeMTMC-reID, CUHK03-NP, CUHK03 old protocol, MSMT17 V1/V2, a
generic folder/list-file dataset and a built-in synthetic benchmark) behind a name registry;
the multi-source view with one id range per domain; the identity-balanced sampler; the train
and test transforms; and the DataLoader helpers. See ``docs/data.md``.
"""

from metareid.data.datasets import (
    CUHK03,
    CUHK03NP,
    JUNK_PID,
    MARKET_NAME_PATTERN,
    MSMT17,
    SYNTHETIC_DOMAIN_DIR,
    BadImageError,
    DatasetFactory,
    DukeMTMCreID,
    GenericDataset,
    ImageRecord,
    Market1501,
    OnBadImage,
    ReIDDataset,
    SplitStats,
    SyntheticReID,
    build_dataset,
    drop_junk,
    list_datasets,
    load_image,
    register_dataset,
    relabel,
    split_stats,
    verify_images,
)
from metareid.data.loader import (
    MultiDomainBatchIterator,
    ReIDImageDataset,
    ReIDSample,
    build_test_loader,
    build_train_loader,
    build_train_loaders,
)
from metareid.data.multi_source import MultiSourceDataset
from metareid.data.sampler import IdentityBalancedSampler
from metareid.data.synthetic import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SyntheticBenchmark,
    SyntheticDomain,
    generate_synthetic_benchmark,
    load_synthetic_manifest,
    prepare_synthetic_benchmark,
)
from metareid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transform,
    build_train_transform,
)

__all__ = [
    "CUHK03",
    "CUHK03NP",
    "GENERATOR_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JUNK_PID",
    "MANIFEST_NAME",
    "MARKET_NAME_PATTERN",
    "MSMT17",
    "SYNTHETIC_DOMAIN_DIR",
    "BadImageError",
    "DatasetFactory",
    "DukeMTMCreID",
    "GenericDataset",
    "IdentityBalancedSampler",
    "ImageRecord",
    "Market1501",
    "MultiDomainBatchIterator",
    "MultiSourceDataset",
    "OnBadImage",
    "ReIDDataset",
    "ReIDImageDataset",
    "ReIDSample",
    "SplitStats",
    "SyntheticBenchmark",
    "SyntheticDomain",
    "SyntheticReID",
    "build_dataset",
    "build_test_loader",
    "build_test_transform",
    "build_train_loader",
    "build_train_loaders",
    "build_train_transform",
    "drop_junk",
    "generate_synthetic_benchmark",
    "list_datasets",
    "load_image",
    "load_synthetic_manifest",
    "prepare_synthetic_benchmark",
    "register_dataset",
    "relabel",
    "split_stats",
    "verify_images",
]
