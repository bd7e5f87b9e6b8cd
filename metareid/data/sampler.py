"""Identity-balanced batch sampler: P identities x K images per batch, other cameras first.

:class:`PublishedIdentitySampler` follows the published M3L code's rules instead
(``RandomMultipleGallerySampler``). :class:`IdentityChunkSampler` keeps one identity chunk
of each of their batches, with a random seed per sample, so that N processes load disjoint
parts of one global batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from metareid._validation import check_int, check_positive_int, describe
from metareid.data.datasets.base import ImageRecord

__all__ = [
    "IdentityBalancedSampler",
    "IdentityChunkSampler",
    "PublishedIdentitySampler",
    "sample_seeds",
]

# Tags the augmentation stream in the seed sequence (ASCII "aug").
_AUGMENTATION_STREAM = 0x617567


class IdentityBalancedSampler(Sampler[list[int]]):
    """Batches of ``num_identities`` (P) identities x ``num_instances`` (K) images.

    A batch sampler: each item is the list of P*K dataset indices of one batch, laid out as
    K consecutive indices per identity (``[a, a', a'', a''', b, b', ...]``). Pass it as
    ``batch_sampler`` of a ``DataLoader``; build one per source domain so that batches
    never mix domains.

    Identities are visited in a random order, P distinct ones per batch; a pass over the
    identities drops the last ``n_ids mod P`` of them (like ``drop_last``) and the next pass
    reshuffles. For each identity an anchor image is drawn at random, then the K-1 partners:

    1. images of the identity from **other cameras** than the anchor, without replacement;
    2. if fewer than K-1 exist, the remaining images from the anchor's camera, without
       replacement;
    3. only if the identity has fewer than K images in total, the missing partners are drawn
       **with replacement** from all its images.

    The published M3L code (``RandomMultipleGallerySampler``) prefers other cameras in the
    same way but draws them with replacement as soon as fewer than K (not K-1) exist, and
    emits a single image for an identity with one image, which breaks the P x K layout of
    the batch; this sampler always emits exactly K per identity.
    :class:`PublishedIdentitySampler` follows the published rules.

    Randomness comes from a NumPy generator seeded by ``(seed, epoch)``; the epoch counter
    starts at 0 and advances at every ``iter()`` (or is set by :meth:`set_epoch`), so the
    same seed gives the same batches.

    Args:
        pids: person id of every dataset item, shape (N,). Ids must be >= 0.
        camids: camera of every item, shape (N,). None: all from one camera (no camera
            preference possible).
        num_identities: P, identities per batch. Default 16 (batch 64 with K = 4).
        num_instances: K, images per identity. Default 4, as in the published code.
        prefer_other_cameras: draw the K-1 partners from other cameras first. Default True.
        infinite: never stop; each pass reshuffles. Default False (one pass per ``iter()``).
        seed: seed of the generator, an int or a tuple of ints (e.g. ``(seed, domain)``).
            Default 0.

    Raises:
        ValueError: lengths differ, a negative id, or fewer than P identities.

    Example:
        >>> sampler = IdentityBalancedSampler([0, 0, 1, 1, 1, 2], [0, 1, 0, 1, 1, 0],
        ...                                   num_identities=2, num_instances=2, seed=0)
        >>> len(sampler)
        1
        >>> batch = next(iter(sampler))
        >>> len(batch), len({[0, 0, 1, 1, 1, 2][i] for i in batch})
        (4, 2)
    """

    def __init__(
        self,
        pids: Sequence[int],
        camids: Sequence[int] | None = None,
        num_identities: int = 16,
        num_instances: int = 4,
        *,
        prefer_other_cameras: bool = True,
        infinite: bool = False,
        seed: int | tuple[int, ...] = 0,
    ) -> None:
        check_positive_int("num_identities", num_identities)
        check_positive_int("num_instances", num_instances)
        pid_array = np.asarray(pids, dtype=np.int64).reshape(-1)
        cam_array = (
            np.zeros_like(pid_array)
            if camids is None
            else np.asarray(camids, dtype=np.int64).reshape(-1)
        )
        if cam_array.shape != pid_array.shape:
            raise ValueError(
                f"camids must have one entry per item ({pid_array.size}), got {cam_array.size}"
            )
        if pid_array.size and pid_array.min() < 0:
            raise ValueError(
                f"pids must be >= 0 (drop junk images first), got {int(pid_array.min())}"
            )
        groups: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pid_array.tolist()):
            groups[pid].append(index)
        if len(groups) < num_identities:
            raise ValueError(
                f"num_identities={num_identities} identities per batch, but the data holds "
                f"only {len(groups)} identities"
            )
        self.pid_list: list[int] = sorted(groups)
        self._indices = [np.asarray(groups[p], dtype=np.int64) for p in self.pid_list]
        self._cameras = [cam_array[idx] for idx in self._indices]
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.prefer_other_cameras = prefer_other_cameras
        self.infinite = infinite
        self.seed: tuple[int, ...] = (seed,) if isinstance(seed, int) else tuple(seed)
        self.epoch = 0

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord], **kwargs: Any) -> IdentityBalancedSampler:
        """Sampler over ``records``, reading their ``pid`` and ``camid``.

        Args:
            records: the training split of one domain.
            **kwargs: the other arguments of the constructor.

        Example:
            >>> from metareid.data import ImageRecord
            >>> recs = [ImageRecord(f"{i}.jpg", i % 3, i % 2, 0, i % 3) for i in range(9)]
            >>> len(IdentityBalancedSampler.from_records(recs, num_identities=3))
            1
        """
        return cls([r.pid for r in records], [r.camid for r in records], **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed the next ``iter()``.

        Example:
            >>> s = IdentityBalancedSampler([0, 0, 1, 1], num_identities=2, num_instances=2)
            >>> s.set_epoch(3); s.epoch
            3
        """
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per pass over the identities (the length of one pass when ``infinite``)."""
        return len(self.pid_list) // self.num_identities

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([*self.seed, self.epoch])
        self.epoch += 1
        while True:
            order = rng.permutation(len(self.pid_list))
            for start in range(0, len(self) * self.num_identities, self.num_identities):
                batch: list[int] = []
                for group in order[start : start + self.num_identities]:
                    batch.extend(self._draw(int(group), rng))
                yield batch
            if not self.infinite:
                return

    def _draw(self, group: int, rng: np.random.Generator) -> list[int]:
        """Anchor then K-1 partners of identity ``self.pid_list[group]``."""
        indices, cameras = self._indices[group], self._cameras[group]
        k = self.num_instances
        anchor = int(rng.integers(len(indices)))
        others = np.arange(len(indices)) != anchor
        if self.prefer_other_cameras:
            cross = others & (cameras != cameras[anchor])
            same = others & (cameras == cameras[anchor])
            pool = np.concatenate([rng.permutation(indices[cross]), rng.permutation(indices[same])])
        else:
            pool = rng.permutation(indices[others])
        partners = pool[: k - 1]
        if len(partners) < k - 1:  # fewer than K images: only now with replacement
            extra = rng.choice(indices, size=k - 1 - len(partners), replace=True)
            partners = np.concatenate([partners, extra])
        return [int(indices[anchor]), *(int(i) for i in partners)]


class PublishedIdentitySampler(IdentityBalancedSampler):
    """The published M3L code's batches: a flat stream of identity groups cut every P*K.

    Follows ``RandomMultipleGallerySampler`` (``reid/utils/data/sampler.py:46-100`` of the
    authors' repository HeliosZhao/M3L, ``sampler.py`` below) as ``main.py:54-63`` uses it:
    behind ``DataLoader(..., sampler=sampler, batch_size=64, drop_last=True)`` wrapped in an
    ``IterLoader`` that restarts the loader when it is exhausted. A batch sampler with the
    interface of :class:`IdentityBalancedSampler`: each item is a list of P*K dataset indices.

    A pass visits every identity once, in a random order (``sampler.py:67,70``), and
    appends to a flat stream of indices:

    1. an anchor image of the identity, drawn at random (``sampler.py:71,75``);
    2. if the identity has images from **other cameras** than the anchor's
       (``sampler.py:80,82``), K-1 partners drawn from those, **with replacement unless at
       least K** (not K-1) of them exist (``sampler.py:84-90``);
    3. otherwise K-1 partners drawn from its other images (all from the anchor's camera),
       with replacement unless at least K exist (``sampler.py:93,95-101``);
    4. for an identity with a single image, nothing more: it contributes that one index
       (``sampler.py:94``).

    The stream of a pass is cut into consecutive batches of P*K indices, the last partial
    batch dropped (``drop_last=True``, ``main.py:60-63``); with ``infinite`` the next pass
    reshuffles with the same generator (the ``IterLoader`` restart). When every identity
    has at least 2 images each contributes exactly K consecutive indices, so a batch is P
    identities x K images, as with :class:`IdentityBalancedSampler`. **With single-image
    identities it is not**: the stream is no longer a multiple of K, the K indices of an
    identity can be split across two batches (or dropped in part at the end of a pass), and
    a batch can hold more than P identities. :class:`IdentityChunkSampler` refuses such a
    sampler.

    Differences from the published code, none in the rules: one NumPy generator seeded by
    ``(*seed, epoch)`` replaces the global ``torch``, ``random`` and ``np.random`` streams;
    negative ids are refused rather than skipped (``sampler.py:55``); ``len()`` is the number
    of full batches of a pass, where ``sampler.py:63-64`` reports ``num_pids * K`` indices
    whatever the single-image identities; and a batch holds P*K indices rather than an
    arbitrary ``batch_size``. Pass the records sorted (``main.py:54`` sorts
    ``dataset.train``) to get the published index order.

    Args:
        pids: person id of every dataset item, shape (N,). Ids must be >= 0.
        camids: camera of every item, shape (N,). None: all from one camera (partners then
            always follow rule 3).
        num_identities: P; a batch holds P*K indices. Default 16 (the published batch of
            64 with K = 4, ``main.py:238,243``).
        num_instances: K, the anchor and its K-1 partners. Default 4.
        infinite: never stop; each pass reshuffles. Default False (one pass per ``iter()``).
        seed: seed of the generator, an int or a tuple of ints (e.g. ``(seed, domain)``).
            Default 0.

    Attributes:
        pass_length: indices in the stream of one pass, the same at every pass: K per
            identity with at least 2 images, plus 1 per single-image identity.
        num_single_image_identities: identities with a single image.

    Raises:
        ValueError: lengths differ, a negative id, fewer than P identities, or a pass
            shorter than one batch of P*K indices.

    Example:
        >>> pids = [0, 0, 1, 1, 1, 2]  # identity 2 has a single image
        >>> sampler = PublishedIdentitySampler(pids, [0, 1, 0, 1, 1, 0], num_identities=2,
        ...                                    num_instances=2, seed=0)
        >>> sampler.pass_length, len(sampler)  # 2 + 2 + 1 indices: one batch of 4
        (5, 1)
        >>> len(next(iter(sampler)))
        4
    """

    def __init__(
        self,
        pids: Sequence[int],
        camids: Sequence[int] | None = None,
        num_identities: int = 16,
        num_instances: int = 4,
        *,
        infinite: bool = False,
        seed: int | tuple[int, ...] = 0,
    ) -> None:
        # The published rule always prefers other cameras (sampler.py:80-82).
        super().__init__(
            pids,
            camids,
            num_identities,
            num_instances,
            prefer_other_cameras=True,
            infinite=infinite,
            seed=seed,
        )
        singles = sum(len(indices) == 1 for indices in self._indices)
        length = num_instances * (len(self._indices) - singles) + singles
        batch = num_identities * num_instances
        if length < batch:
            raise ValueError(
                f"num_identities={num_identities} x num_instances={num_instances} = {batch} "
                f"indices per batch, but a pass over the data gives only {length} (the "
                f"{singles} identities with a single image contribute one index each)"
            )
        self.num_single_image_identities: int = singles
        self.pass_length: int = length

    @classmethod
    def from_records(
        cls, records: Sequence[ImageRecord], **kwargs: Any
    ) -> PublishedIdentitySampler:
        """Sampler over ``records``, reading their ``pid`` and ``camid``.

        Args:
            records: the training split of one domain (sorted, for the published order).
            **kwargs: the other arguments of the constructor.

        Example:
            >>> from metareid.data import ImageRecord
            >>> recs = [ImageRecord(f"{i}.jpg", i % 3, i % 2, 0, i % 3) for i in range(9)]
            >>> len(PublishedIdentitySampler.from_records(sorted(recs, key=lambda r: r.path),
            ...                                           num_identities=3))
            1
        """
        return cls([r.pid for r in records], [r.camid for r in records], **kwargs)

    def __len__(self) -> int:
        """Full batches per pass: ``pass_length // (P*K)`` (one pass when ``infinite``).

        Example:
            >>> len(PublishedIdentitySampler([0, 0, 1, 2, 3, 3], num_identities=2,
            ...                              num_instances=2))  # 2 + 1 + 1 + 2 = 6 indices
            1
        """
        return self.pass_length // (self.num_identities * self.num_instances)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([*self.seed, self.epoch])
        self.epoch += 1
        size = self.num_identities * self.num_instances
        while True:
            stream: list[int] = []
            # Every identity once, in a random order (sampler.py:67,70).
            for group in rng.permutation(len(self.pid_list)):
                stream.extend(self._draw(int(group), rng))
            # The DataLoader cuts the stream into batches, dropping the last partial one
            # (main.py:60-63, drop_last=True).
            for start in range(0, len(self) * size, size):
                yield stream[start : start + size]
            if not self.infinite:  # IterLoader restarts an exhausted loader: a new pass
                return

    def _draw(self, group: int, rng: np.random.Generator) -> list[int]:
        """Anchor then 0 or K-1 partners of identity ``self.pid_list[group]``."""
        indices, cameras = self._indices[group], self._cameras[group]
        k = self.num_instances
        anchor = int(rng.integers(len(indices)))  # sampler.py:71
        # Positions of the identity's images from another camera (sampler.py:80); the
        # anchor's own camera excludes the anchor.
        pool = np.flatnonzero(cameras != cameras[anchor])
        if pool.size == 0:  # none: the identity's other images (sampler.py:92-93)
            pool = np.flatnonzero(np.arange(len(indices)) != anchor)
            if pool.size == 0:  # a single image: the anchor alone (sampler.py:94)
                return [int(indices[anchor])]
        # With replacement unless at least K (not K-1) candidates (sampler.py:84-87, 95-98).
        partners = rng.choice(pool, size=k - 1, replace=bool(pool.size < k))
        return [int(indices[anchor]), *(int(i) for i in indices[partners])]


def sample_seeds(seed: Sequence[int], epoch: int, batch: int, count: int) -> list[int]:
    """One 63-bit seed per position of batch ``batch`` of epoch ``epoch`` of sampler ``seed``.

    The seeds depend only on these numbers, never on which process loads the sample, so
    an image's augmentation is the same wherever it is loaded.

    Example:
        >>> sample_seeds((0, 1), 0, 0, 3) == sample_seeds((0, 1), 0, 0, 3)
        True
        >>> len(set(sample_seeds((0, 1), 0, 0, 64)))
        64
    """
    entropy = [*(int(s) for s in seed), _AUGMENTATION_STREAM, int(epoch), int(batch)]
    state = np.random.SeedSequence(entropy).generate_state(count, dtype=np.uint64)
    return [int(v) & (2**63 - 1) for v in state]


class IdentityChunkSampler(Sampler[list[tuple[int, int]]]):
    """Chunk ``index`` of ``num_chunks`` of every batch of an :class:`IdentityBalancedSampler`.

    A :class:`PublishedIdentitySampler` is accepted too, provided that no identity of its
    data has a single image (its batches are then P x K as well).

    The wrapped sampler draws the global P x K batch, the same in every process; this one
    keeps identities ``index * P/N`` to ``(index + 1) * P/N - 1`` of it, with their K
    samples (the chunk of :func:`metareid.distributed.split_batch_by_identity`), so that N
    processes load disjoint parts whose concatenation in ``index`` order is the global
    batch. Each item is ``(dataset_index, seed)``; :class:`~metareid.data.ReIDImageDataset`
    runs the transform of that sample under ``seed`` (:func:`sample_seeds`: a function of
    the wrapped sampler's seed, the epoch, the batch number and the position in the global
    batch), so augmentations do not depend on the number of chunks, the process or the
    loader workers. ``num_chunks=1`` keeps whole batches, with those seeds.

    Args:
        sampler: the global batches (its ``epoch`` advances as usual).
        index: the chunk to keep, in [0, num_chunks).
        num_chunks: N >= 1, dividing ``sampler.num_identities``.

    Raises:
        ValueError: ``num_chunks`` does not divide P, ``index`` is out of range, or
            ``sampler`` is a :class:`PublishedIdentitySampler` whose data has single-image
            identities.
        TypeError: ``sampler`` is not an :class:`IdentityBalancedSampler`.

    Example:
        >>> base = IdentityBalancedSampler([0, 0, 1, 1, 2, 2, 3, 3], num_identities=4,
        ...                                num_instances=2, seed=0)
        >>> chunks = [next(iter(IdentityChunkSampler(IdentityBalancedSampler(
        ...     [0, 0, 1, 1, 2, 2, 3, 3], num_identities=4, num_instances=2, seed=0), r, 2)))
        ...     for r in range(2)]
        >>> [i for c in chunks for i, _ in c] == next(iter(base))
        True
    """

    def __init__(self, sampler: IdentityBalancedSampler, index: int, num_chunks: int) -> None:
        if not isinstance(sampler, IdentityBalancedSampler):
            raise TypeError(f"sampler must be an IdentityBalancedSampler, got {describe(sampler)}")
        num_chunks = check_positive_int("num_chunks", num_chunks)
        index = check_int("index", index, 0)
        if index >= num_chunks:
            raise ValueError(f"index must be a chunk in [0, {num_chunks}), got {index}")
        if sampler.num_identities % num_chunks:
            raise ValueError(
                f"num_chunks={num_chunks} must divide the sampler's num_identities="
                f"{sampler.num_identities}, so that every chunk holds whole identities"
            )
        if isinstance(sampler, PublishedIdentitySampler) and sampler.num_single_image_identities:
            raise ValueError(
                f"sampler is a PublishedIdentitySampler whose data has "
                f"{sampler.num_single_image_identities} identities with a single image; each "
                "contributes one index, so its batches are not P identities x K images and "
                "cannot be cut into identity chunks: drop those identities or use "
                "IdentityBalancedSampler (K images for every identity)"
            )
        self.sampler = sampler
        self.index = index
        self.num_chunks = num_chunks

    def set_epoch(self, epoch: int) -> None:
        """Set the wrapped sampler's epoch (see :meth:`IdentityBalancedSampler.set_epoch`)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch  # the epoch the wrapped iterator is about to use
        size = self.sampler.num_identities // self.num_chunks * self.sampler.num_instances
        lo, hi = self.index * size, (self.index + 1) * size
        for number, batch in enumerate(self.sampler):
            seeds = sample_seeds(self.sampler.seed, epoch, number, len(batch))
            yield list(zip(batch[lo:hi], seeds[lo:hi], strict=True))
