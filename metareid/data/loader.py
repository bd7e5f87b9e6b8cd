"""Torch dataset over image records and the DataLoader setup for training and testing."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypedDict, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from metareid._validation import check_choice, check_positive_int
from metareid.data.datasets.base import BadImageError, ImageRecord, OnBadImage, load_image
from metareid.data.sampler import (
    IdentityBalancedSampler,
    IdentityChunkSampler,
    PublishedIdentitySampler,
)

#: Accepted values of ``sampler`` in :func:`build_train_loader`.
SAMPLERS = ("balanced", "published")

__all__ = [
    "MultiDomainBatchIterator",
    "ReIDImageDataset",
    "ReIDSample",
    "build_test_loader",
    "build_train_loader",
    "build_train_loaders",
]

T = TypeVar("T")


class ReIDSample(TypedDict):
    """One item of :class:`ReIDImageDataset`.

    After the default collate of a ``DataLoader``: ``img`` (B, 3, H, W) float32, ``pid``,
    ``camid``, ``domain`` and ``index`` int64 tensors of shape (B,), ``path`` a list of B
    strings. ``img`` is whatever the transform returns, a uint8 tensor (3, H, W) without one.
    """

    img: Any
    pid: int
    camid: int
    domain: int
    index: int
    path: str


class ReIDImageDataset(Dataset[ReIDSample]):
    """A ``torch.utils.data.Dataset`` over image records.

    Item ``i`` is the dict ``{"img", "pid", "camid", "domain", "index", "path"}`` (see
    :class:`ReIDSample`): the transformed image of ``records[i]``, its person id (the
    contiguous train label in a train split, the original id in query/gallery), 0-based
    camera, source domain, ``i`` itself and the file path. Feature extraction for evaluation
    needs only ``img``, ``pid`` and ``camid``.

    Item ``(i, seed)`` (what :class:`~metareid.data.IdentityChunkSampler` yields) is item
    ``i`` with the transform run under ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng``: the augmentation depends on the seed only, and torch's
    global random state is left as it was.

    Args:
        records: the images.
        transform: applied to the decoded RGB PIL image, e.g.
            :func:`~metareid.data.build_train_transform`. None (default): the image is
            returned as a uint8 tensor of shape (3, H, W).
        on_bad_image: ``"raise"`` (default) raises :class:`~metareid.data.BadImageError`
            naming the file that cannot be decoded; ``"skip"`` warns, naming it, and returns
            another decodable image of the same identity and domain instead (and raises if
            there is none).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from metareid.data import ImageRecord
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("RGB", (2, 4)).save(Path(tmp) / "0001_c1s1_000001_01.jpg")
        ...     ds = ReIDImageDataset([ImageRecord(str(Path(tmp) / "0001_c1s1_000001_01.jpg"),
        ...                                        0, 0, 0, 1)])
        ...     item = ds[0]
        >>> item["img"].shape, item["pid"], item["index"]
        (torch.Size([3, 4, 2]), 0, 0)
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Any], Any] | None = None,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.on_bad_image = check_choice("on_bad_image", on_bad_image, ("raise", "skip"))
        self._same_identity: dict[tuple[int, int], list[int]] | None = None
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | tuple[int, int]) -> ReIDSample:
        seed: int | None = None
        if isinstance(index, tuple):
            if len(index) != 2:
                raise ValueError(f"index must be an int or (index, seed), got {index!r}")
            index, seed = index
        image, used = self._load(index)
        record = self.records[used]
        if self.transform is None:
            img = pil_to_tensor(image)
        elif seed is None:
            img = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                img = self.transform(image)
        return {
            "img": img,
            "pid": record.pid,
            "camid": record.camid,
            "domain": record.domain,
            "index": used,
            "path": record.path,
        }

    def _load(self, index: int) -> tuple[Any, int]:
        """The decoded image of ``index`` or, when skipping, of a replacement."""
        try:
            return load_image(self.records[index].path), index
        except BadImageError as err:
            if self.on_bad_image == "raise":
                raise
            self._bad.add(index)
            warnings.warn(f"{err}; using another image of the same identity", stacklevel=3)
        for other in self._candidates(index):
            try:
                return load_image(self.records[other].path), other
            except BadImageError:
                self._bad.add(other)
        record = self.records[index]
        raise BadImageError(
            f"cannot decode image file '{record.path}' and no other image of person "
            f"{record.pid} (domain {record.domain}) decodes",
            path=record.path,
        )

    def _candidates(self, index: int) -> list[int]:
        """Other items with the same (domain, pid), not known to be bad."""
        if self._same_identity is None:
            groups: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, r in enumerate(self.records):
                groups[(r.domain, r.pid)].append(i)
            self._same_identity = dict(groups)
        record = self.records[index]
        group = self._same_identity[(record.domain, record.pid)]
        return [i for i in group if i != index and i not in self._bad]


def _pin_memory(pin_memory: bool | None) -> bool:
    return torch.cuda.is_available() if pin_memory is None else pin_memory


def _seed_generator(seed: Sequence[int]) -> torch.Generator:
    """A torch generator seeded from a tuple of ints (for the workers' base seed)."""
    state = np.random.SeedSequence(list(seed)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def build_train_loader(
    records: Sequence[ImageRecord],
    transform: Callable[[Any], Any] | None,
    *,
    num_identities: int = 16,
    num_instances: int = 4,
    prefer_other_cameras: bool = True,
    infinite: bool = True,
    num_workers: int = 4,
    pin_memory: bool | None = None,
    seed: int | tuple[int, ...] = 0,
    on_bad_image: OnBadImage = "raise",
    identity_chunk: tuple[int, int] | None = None,
    sampler: str = "balanced",
) -> DataLoader[ReIDSample]:
    """A training loader over one domain's records with identity-balanced batches.

    Batches hold P = ``num_identities`` identities x K = ``num_instances`` images (64 by
    default) drawn by :class:`~metareid.data.IdentityBalancedSampler`; every batch is full
    (the sampler drops the identities left over at the end of a pass, the equivalent of
    ``drop_last``). ``persistent_workers`` is on whenever ``num_workers > 0``.

    Args:
        records: training records of one domain (or the combined view, for a baseline).
        transform: training transform, e.g. :func:`~metareid.data.build_train_transform`.
        num_identities: P. Default 16.
        num_instances: K. Default 4.
        prefer_other_cameras: the sampler's camera preference. Default True.
        infinite: the loader never ends (one ``iter()`` per training run). Default True.
        num_workers: loading processes. Default 4; 0 loads in the main process.
        pin_memory: page-locked batches for fast host-to-GPU copies. Default None: on when
            CUDA is available.
        seed: seed of the sampler and of the workers' random streams. Default 0.
        on_bad_image: see :class:`ReIDImageDataset`. Default ``"raise"``.
        identity_chunk: ``(index, N)``: load only identity chunk ``index`` of N of every
            global batch, each sample's augmentation seeded by its place in the global
            batch (:class:`~metareid.data.IdentityChunkSampler`); what rank ``index`` of N
            processes loads. ``(0, 1)`` loads whole batches with those seeds. Default
            ``None``: whole batches, augmentations from torch's global generator (or the
            workers').
        sampler: the batch sampling rules: ``"balanced"`` (default,
            :class:`~metareid.data.IdentityBalancedSampler`) or ``"published"``
            (:class:`~metareid.data.PublishedIdentitySampler`, the authors' rules; always
            prefers other cameras).

    Returns:
        The ``DataLoader``; its batches are dicts as described in :class:`ReIDSample`.

    Example:
        >>> from metareid.data import ImageRecord
        >>> recs = [ImageRecord(f"{i}.jpg", i % 4, i % 2, 0, i % 4) for i in range(8)]
        >>> loader = build_train_loader(recs, None, num_identities=2, num_instances=2,
        ...                             num_workers=0)
        >>> batch = next(iter(loader.batch_sampler))
        >>> len(batch)
        4
    """
    check_positive_int("num_identities", num_identities)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    seed_tuple = (seed,) if isinstance(seed, int) else tuple(seed)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    options: dict[str, Any] = {"prefer_other_cameras": prefer_other_cameras}
    cls: type[IdentityBalancedSampler] = IdentityBalancedSampler
    if sampler == "published":
        if not prefer_other_cameras:
            raise ValueError(
                "sampler='published' always prefers other cameras (the authors' rules); got "
                "prefer_other_cameras=False"
            )
        cls, options = PublishedIdentitySampler, {}
    base = cls.from_records(
        records,
        num_identities=num_identities,
        num_instances=num_instances,
        infinite=infinite,
        seed=seed_tuple,
        **options,
    )
    batch_sampler: IdentityBalancedSampler | IdentityChunkSampler = base
    if identity_chunk is not None:
        if not (isinstance(identity_chunk, tuple) and len(identity_chunk) == 2):
            raise TypeError(
                f"identity_chunk must be a pair (index, num_chunks) or None, got {identity_chunk!r}"
            )
        batch_sampler = IdentityChunkSampler(base, *identity_chunk)
    return DataLoader(
        ReIDImageDataset(records, transform, on_bad_image=on_bad_image),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=_pin_memory(pin_memory),
        persistent_workers=num_workers > 0,
        generator=_seed_generator(seed_tuple),
    )


def build_train_loaders(
    sources: Sequence[Sequence[ImageRecord]],
    transform: Callable[[Any], Any] | None,
    *,
    num_identities: int = 16,
    num_instances: int = 4,
    prefer_other_cameras: bool = True,
    infinite: bool = True,
    num_workers: int = 4,
    pin_memory: bool | None = None,
    seed: int = 0,
    on_bad_image: OnBadImage = "raise",
) -> list[DataLoader[ReIDSample]]:
    """One infinite training loader per source domain (see :func:`build_train_loader`).

    Domain ``d`` uses the seed ``(seed, d)``. Wrap the result in
    :class:`MultiDomainBatchIterator` to draw one batch per domain per meta-iteration.
    ``num_workers`` is per loader.

    Args:
        sources: one list of training records per domain, e.g.
            :attr:`~metareid.data.MultiSourceDataset.per_domain_train`.
        transform: training transform.
        num_identities: P per batch. Default 16.
        num_instances: K per identity. Default 4.
        prefer_other_cameras: the sampler's camera preference. Default True.
        infinite: loaders never end. Default True.
        num_workers: loading processes per domain. Default 4.
        pin_memory: default None: on when CUDA is available.
        seed: base seed. Default 0.
        on_bad_image: see :class:`ReIDImageDataset`. Default ``"raise"``.

    Returns:
        The loaders, in domain order.

    Example:
        >>> from metareid.data import ImageRecord
        >>> src = [[ImageRecord(f"{d}_{i}.jpg", i % 2, 0, d, i % 2) for i in range(4)]
        ...        for d in range(3)]
        >>> loaders = build_train_loaders(src, None, num_identities=2, num_instances=2,
        ...                               num_workers=0)
        >>> len(loaders)
        3
    """
    return [
        build_train_loader(
            records,
            transform,
            num_identities=num_identities,
            num_instances=num_instances,
            prefer_other_cameras=prefer_other_cameras,
            infinite=infinite,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=(seed, domain),
            on_bad_image=on_bad_image,
        )
        for domain, records in enumerate(sources)
    ]


def build_test_loader(
    records: Sequence[ImageRecord],
    transform: Callable[[Any], Any] | None,
    *,
    batch_size: int = 128,
    num_workers: int = 4,
    pin_memory: bool | None = None,
    on_bad_image: OnBadImage = "raise",
) -> DataLoader[ReIDSample]:
    """A loader for feature extraction: records in order, the last batch kept.

    Args:
        records: e.g. ``dataset.query + dataset.gallery``.
        transform: test transform, e.g. :func:`~metareid.data.build_test_transform`.
        batch_size: images per batch. Default 128.
        num_workers: loading processes. Default 4; ``persistent_workers`` is on when > 0.
        pin_memory: default None: on when CUDA is available.
        on_bad_image: see :class:`ReIDImageDataset`. Default ``"raise"``.

    Returns:
        The ``DataLoader`` (no shuffling, ``drop_last=False``).

    Example:
        >>> from metareid.data import ImageRecord
        >>> recs = [ImageRecord(f"{i}.jpg", i, 0, 0, i) for i in range(5)]
        >>> len(build_test_loader(recs, None, batch_size=2, num_workers=0))
        3
    """
    check_positive_int("batch_size", batch_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    return DataLoader(
        ReIDImageDataset(records, transform, on_bad_image=on_bad_image),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=_pin_memory(pin_memory),
        persistent_workers=num_workers > 0,
    )


class MultiDomainBatchIterator(Generic[T]):
    """Draws one batch from every domain at each step: ``next()`` returns a list, in order.

    A finite loader is restarted when it runs out, so the iterator never ends; with the
    infinite loaders of :func:`build_train_loaders` each loader is iterated once.

    Args:
        loaders: one iterable of batches per domain.

    Example:
        >>> it = MultiDomainBatchIterator([[1, 2], ["a"]])
        >>> [next(it) for _ in range(3)]
        [[1, 'a'], [2, 'a'], [1, 'a']]
    """

    def __init__(self, loaders: Sequence[Iterable[T]]) -> None:
        if len(loaders) == 0:
            raise ValueError("loaders must hold at least one loader, got none")
        self.loaders = list(loaders)
        self._iterators: list[Iterator[T] | None] = [None] * len(self.loaders)

    @property
    def num_domains(self) -> int:
        """Number of domains, the length of every list returned by ``next()``."""
        return len(self.loaders)

    def __iter__(self) -> MultiDomainBatchIterator[T]:
        return self

    def __next__(self) -> list[T]:
        return [self._next_of(domain) for domain in range(len(self.loaders))]

    def _next_of(self, domain: int) -> T:
        iterator = self._iterators[domain]
        if iterator is not None:
            try:
                return next(iterator)
            except StopIteration:
                pass
        iterator = iter(self.loaders[domain])
        self._iterators[domain] = iterator
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(f"the loader of domain {domain} yields no batch") from None
