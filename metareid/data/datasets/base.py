"""The image record, split statistics and the checks every ReID dataset shares.

A dataset is three lists of :class:`ImageRecord` (``train``, ``query``, ``gallery``). The
dataset classes only parse their layout; :class:`ReIDDataset` then applies the rules common to
all of them:

* junk images (person id ``-1``, Market-1501's badly detected boxes) are dropped from every
  split;
* distractors stay in the gallery. Only Market-1501 (and the synthetic benchmark written in
  its layout) and GRID mark distractors with person id ``0``
  (:attr:`ReIDDataset.distractor_pid`); in MSMT17, CUHK03 and the others id ``0`` is a
  person like any other;
* train ids are relabelled to ``0..n-1`` in increasing order of the original id, which stays
  available as :attr:`ImageRecord.orig_pid`;
* optionally (``use="all"``) the query and gallery images join the training split, as the
  sources of Protocols 1 and 3 use them: junk and distractors are left out and the test ids
  get labels after the train ids, so a test person never shares a label with a train person
  even where both splits number their ids from the same start (MSMT17);
* optionally (``check_images=True``) every image is decoded once, and an undecodable file
  raises :class:`BadImageError` naming it, or is dropped with a warning
  (``on_bad_image="skip"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

from PIL import Image

from metareid._validation import check_choice

__all__ = [
    "JUNK_PID",
    "BadImageError",
    "ImageRecord",
    "OnBadImage",
    "ReIDDataset",
    "SplitStats",
    "Use",
    "drop_junk",
    "load_image",
    "merge_test_into_train",
    "relabel",
    "split_stats",
    "verify_images",
]

JUNK_PID = -1
"""Person id of junk images (Market-1501's badly detected boxes); they are always dropped."""

OnBadImage = Literal["raise", "skip"]
"""What to do with an image that cannot be decoded: raise :class:`BadImageError` or skip it."""

_ON_BAD_IMAGE = ("raise", "skip")

Use = Literal["train", "all"]
"""Which images form the training split: the train split only, or train + query + gallery."""

_USES = ("train", "all")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a ReID split.

    Attributes:
        path: path of the image file.
        pid: person id used for training and evaluation. In a train split it is the
            contiguous label ``0..n-1``; in query and gallery splits it is the original id
            (``0`` marks a distractor).
        camid: 0-based camera index (Market-1501's ``c1`` is camid 0).
        domain: index of the source domain the image belongs to. Datasets on their own use
            0; :class:`~metareid.data.MultiSourceDataset` sets it to the source's position.
        orig_pid: the person id as written in the file name, list file or meta file.

    Example:
        >>> record = ImageRecord("0002_c1s1_000451_03.jpg", pid=0, camid=0, domain=0, orig_pid=2)
        >>> record.pid, record.orig_pid
        (0, 2)
    """

    path: str
    pid: int
    camid: int
    domain: int
    orig_pid: int


class SplitStats(NamedTuple):
    """Counts of one split: identities, images and cameras.

    Example:
        >>> SplitStats(num_pids=751, num_imgs=12936, num_cams=6).num_imgs
        12936
    """

    num_pids: int
    num_imgs: int
    num_cams: int


class BadImageError(OSError):
    """An image file that cannot be opened or decoded.

    The message names the file; :attr:`path` holds it too. The constructor also accepts the
    message alone, so the error survives the trip from a ``DataLoader`` worker process.

    Example:
        >>> err = BadImageError("cannot decode image file 'x.jpg': truncated", path="x.jpg")
        >>> err.path
        'x.jpg'
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def split_stats(records: Sequence[ImageRecord]) -> SplitStats:
    """Count the identities, images and cameras of a split.

    Distractors (pid 0) count as one identity, as in the usual Market-1501 tables.

    Args:
        records: the split.

    Returns:
        The counts.

    Example:
        >>> recs = [ImageRecord("a.jpg", 0, 0, 0, 5), ImageRecord("b.jpg", 0, 2, 0, 5)]
        >>> split_stats(recs)
        SplitStats(num_pids=1, num_imgs=2, num_cams=2)
    """
    return SplitStats(
        num_pids=len({r.pid for r in records}),
        num_imgs=len(records),
        num_cams=len({r.camid for r in records}),
    )


def drop_junk(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Remove the junk images (original person id ``-1``).

    Args:
        records: any split.

    Returns:
        The records whose ``orig_pid`` is not :data:`JUNK_PID`, in the same order.

    Example:
        >>> recs = [ImageRecord("a.jpg", -1, 0, 0, -1), ImageRecord("b.jpg", 0, 1, 0, 0)]
        >>> [r.path for r in drop_junk(recs)]
        ['b.jpg']
    """
    return [r for r in records if r.orig_pid != JUNK_PID]


def relabel(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Map the person ids of a split to ``0..n-1`` in increasing order of the original id.

    ``orig_pid`` is left as it is, so the original id stays available.

    Args:
        records: a split; their ``pid`` values are what gets relabelled.

    Returns:
        New records with contiguous ``pid``, in the same order.

    Example:
        >>> recs = [ImageRecord(f"{p}.jpg", p, 0, 0, p) for p in (7, 3, 7)]
        >>> [(r.pid, r.orig_pid) for r in relabel(recs)]
        [(1, 7), (0, 3), (1, 7)]
    """
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid]) for r in records]


def merge_test_into_train(
    train: Sequence[ImageRecord],
    test: Sequence[ImageRecord],
    distractor_pid: int | None = None,
) -> list[ImageRecord]:
    """One training split from a dataset's train and test images (``use="all"``).

    Junk (original id ``-1``) and, where the dataset has them, distractors (original id
    ``distractor_pid``) are left out. Train ids get the labels ``0..n-1`` and test ids the
    labels ``n..n+m-1``, both in increasing order of the original id, so a test person
    never shares a label with a train person, even where the two splits number their ids
    from the same start (MSMT17's list files both start at 0). A test image listed twice
    (in the query and in the gallery) is kept once.

    Args:
        train: the train split, original ids in ``pid``.
        test: the query and gallery splits together, original ids in ``pid``.
        distractor_pid: the id that marks distractors (``0`` in Market-1501 and GRID), or
            None when the dataset has none.

    Returns:
        The train records followed by the test records, relabelled; ``orig_pid`` is kept.

    Example:
        >>> train = [ImageRecord("a.jpg", 0, 0, 0, 0), ImageRecord("b.jpg", 4, 1, 0, 4)]
        >>> test = [ImageRecord("c.jpg", 0, 0, 0, 0), ImageRecord("d.jpg", -1, 1, 0, -1)]
        >>> [(r.pid, r.orig_pid) for r in merge_test_into_train(train, test)]
        [(0, 0), (1, 4), (2, 0)]
    """
    train = [r for r in train if r.orig_pid != JUNK_PID and r.orig_pid != distractor_pid]
    seen: set[str] = set()
    kept: list[ImageRecord] = []
    for r in test:
        if r.orig_pid in (JUNK_PID, distractor_pid) or r.path in seen:
            continue
        seen.add(r.path)
        kept.append(r)
    train_part = relabel(train)
    offset = len({r.pid for r in train_part})
    test_part = [replace(r, pid=r.pid + offset) for r in relabel(kept)]
    return train_part + test_part


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB.

    Args:
        path: the image file.

    Returns:
        The decoded RGB image.

    Raises:
        BadImageError: the file is missing or cannot be decoded; the message names it.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("L", (2, 4)).save(Path(tmp) / "a.png")
        ...     load_image(Path(tmp) / "a.png").size
        (2, 4)
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot decode image file '{path}': {err}", path=str(path)) from err


def verify_images(
    records: Sequence[ImageRecord], on_bad_image: OnBadImage = "raise"
) -> list[ImageRecord]:
    """Decode every image of ``records`` once and deal with the ones that fail.

    Args:
        records: the records to check.
        on_bad_image: ``"raise"`` (default) raises :class:`BadImageError` naming the first
            bad file; ``"skip"`` drops the bad files and warns once, naming them.

    Returns:
        The records whose image decodes, in the same order.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     bad = Path(tmp) / "0001_c1s1_000001_01.jpg"
        ...     _ = bad.write_bytes(b"not a jpeg")
        ...     recs = [ImageRecord(str(bad), 1, 0, 0, 1)]
        ...     with warnings.catch_warnings(record=True):
        ...         verify_images(recs, on_bad_image="skip")
        []
    """
    check_choice("on_bad_image", on_bad_image, _ON_BAD_IMAGE)
    good: list[ImageRecord] = []
    bad: list[str] = []
    for record in records:
        try:
            load_image(record.path)
        except BadImageError:
            if on_bad_image == "raise":
                raise
            bad.append(record.path)
        else:
            good.append(record)
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in total)" if len(bad) > 5 else "")
        warnings.warn(f"skipped {len(bad)} undecodable image(s): {shown}", stacklevel=2)
    return good


class ReIDDataset:
    """A person ReID dataset: ``train``, ``query`` and ``gallery`` lists of records.

    The constructor applies the common rules: it drops junk images (original id ``-1``) from
    every split, keeps distractors in the gallery, relabels the train ids to ``0..n-1``
    (original id kept in ``orig_pid``) and optionally decodes every image. Subclasses parse
    a layout on disk and call this constructor; it can also wrap records built in memory.

    Args:
        train: training records; ``pid`` holds the original id (it is relabelled here).
        query: query records (original ids).
        gallery: gallery records (original ids).
        use: ``"train"`` (default): the train split is ``train``. ``"all"``: the train
            split is train + query + gallery (see :func:`merge_test_into_train`: junk and
            distractors left out, test ids labelled after the train ids), as the sources of
            Protocols 1 and 3 use them; query and gallery are then empty, so a dataset
            trained on this way cannot be evaluated by mistake.
        check_images: decode every image once at construction (slow on full datasets).
            Default False: a bad file then surfaces when it is loaded.
        on_bad_image: with ``check_images``, ``"raise"`` (default) raises
            :class:`BadImageError` naming the file, ``"skip"`` drops it with a warning.

    Attributes:
        train: the training split, ids ``0..num_train_pids-1``.
        query: the query split.
        gallery: the gallery split.
        use: the ``use`` it was built with.

    Example:
        >>> recs = [ImageRecord(f"{p}_{c}.jpg", p, c, 0, p) for p in (4, 9, -1) for c in (0, 1)]
        >>> ds = ReIDDataset(recs, [], [])
        >>> ds.train_stats, sorted({r.pid for r in ds.train})
        (SplitStats(num_pids=2, num_imgs=4, num_cams=2), [0, 1])
    """

    name: ClassVar[str] = "custom"
    """Short name of the dataset, as registered in :func:`~metareid.data.build_dataset`."""

    layout: ClassVar[str] = ""
    """The expected directory layout, shown in the errors about a missing or wrong layout."""

    folder_names: ClassVar[tuple[str, ...]] = ()
    """Names of the dataset's folder under a data directory, tried in this order by
    :func:`~metareid.data.build_dataset_from_spec` (``""``: the data directory itself, as in
    fast-reid); empty: :attr:`name` only."""

    num_splits: ClassVar[int] = 1
    """Number of evaluation splits (``split_id``); the small Protocol-1 targets have 10."""

    distractor_pid: int | None = None
    """Person id that marks gallery distractors (``0`` in Market-1501 and GRID only), or None:
    in the other datasets id ``0`` is an ordinary person."""

    def __init__(
        self,
        train: Sequence[ImageRecord],
        query: Sequence[ImageRecord],
        gallery: Sequence[ImageRecord],
        *,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        check_choice("on_bad_image", on_bad_image, _ON_BAD_IMAGE)
        check_choice("use", use, _USES)
        self.use: Use = use
        splits = [drop_junk(train), drop_junk(query), drop_junk(gallery)]
        if check_images:
            splits = [verify_images(split, on_bad_image) for split in splits]
        if use == "all":
            merged = merge_test_into_train(splits[0], splits[1] + splits[2], self.distractor_pid)
            splits = [merged, [], []]
        self.train: list[ImageRecord] = relabel(splits[0])
        self.query: list[ImageRecord] = splits[1]
        self.gallery: list[ImageRecord] = splits[2]
        self.train_stats = split_stats(self.train)
        self.query_stats = split_stats(self.query)
        self.gallery_stats = split_stats(self.gallery)

    @property
    def num_train_pids(self) -> int:
        """Number of training identities, the size of a per-domain memory."""
        return self.train_stats.num_pids

    @property
    def num_train_imgs(self) -> int:
        """Number of training images."""
        return self.train_stats.num_imgs

    @property
    def num_train_cams(self) -> int:
        """Number of cameras in the training split."""
        return self.train_stats.num_cams

    @property
    def num_query_pids(self) -> int:
        """Number of query identities."""
        return self.query_stats.num_pids

    @property
    def num_query_imgs(self) -> int:
        """Number of query images."""
        return self.query_stats.num_imgs

    @property
    def num_query_cams(self) -> int:
        """Number of cameras in the query split."""
        return self.query_stats.num_cams

    @property
    def num_gallery_pids(self) -> int:
        """Number of gallery identities (distractors count as one)."""
        return self.gallery_stats.num_pids

    @property
    def num_gallery_imgs(self) -> int:
        """Number of gallery images (junk excluded, distractors included)."""
        return self.gallery_stats.num_imgs

    @property
    def num_gallery_cams(self) -> int:
        """Number of cameras in the gallery split."""
        return self.gallery_stats.num_cams

    def summary(self) -> str:
        """A small table of the counts per split.

        Example:
            >>> print(ReIDDataset([ImageRecord("a.jpg", 3, 0, 0, 3)], [], []).summary())
            custom   | # ids | # images | # cameras
            train    |     1 |        1 |         1
            query    |     0 |        0 |         0
            gallery  |     0 |        0 |         0
        """
        lines = [f"{self.name:<8} | # ids | # images | # cameras"]
        for split, stats in (
            ("train", self.train_stats),
            ("query", self.query_stats),
            ("gallery", self.gallery_stats),
        ):
            lines.append(
                f"{split:<8} | {stats.num_pids:5d} | {stats.num_imgs:8d} | {stats.num_cams:9d}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={tuple(self.train_stats)}, "
            f"query={tuple(self.query_stats)}, gallery={tuple(self.gallery_stats)})"
        )
