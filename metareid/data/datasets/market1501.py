"""Market-1501 (Zheng et al., ICCV 2015)."""

from __future__ import annotations

import re
from typing import ClassVar

from metareid.data.datasets._market_layout import MarketLayoutDataset

__all__ = ["Market1501"]


class Market1501(MarketLayoutDataset):
    """Market-1501: 751 train ids / 12,936 images, 6 cameras, 750 test ids.

    File names are ``PPPP_cCsS_FFFFFF_BB.jpg``: person id (``-1`` junk, ``0000``
    distractor), camera ``C`` in 1..6 (stored 0-based), sequence, frame and box index, e.g.
    ``0002_c1s1_000451_03.jpg``. Junk images are dropped, distractors stay in the gallery,
    train ids are relabelled to ``0..750``. Files that are not ``.jpg`` (``Thumbs.db``) are
    ignored.

    Layout (``root`` is e.g. ``<data-dir>/market1501``)::

        root/
          Market-1501-v15.09.15/
            bounding_box_train/   0002_c1s1_000451_03.jpg ...
            query/                0001_c1s1_001051_00.jpg ...
            bounding_box_test/    0000_c1s1_000151_01.jpg  -1_c1s1_000401_03.jpg ...

    ``root`` may also be the ``Market-1501-v15.09.15`` folder itself. Under a data directory
    :func:`~metareid.data.build_dataset_from_spec` finds it as ``<data-dir>/market1501/``
    (metareid, torchreid) or directly in ``<data-dir>/`` (fast-reid).

    Id ``0`` marks distractors here (:attr:`distractor_pid`), one of the two datasets where it
    does (GRID is the other).

    Args:
        root: the dataset root.
        use: ``"train"`` (default) or ``"all"``: train + query + gallery form the training
            split (1,501 ids; junk and distractors left out, test ids labelled after the
            751 train ids), query and gallery are empty. Protocols 1 and 3 train on this.
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root`` or a split folder is missing (the message shows the
            layout above).
        ValueError: a split folder holds no ``.jpg``, or a file name does not parse.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     base = Path(tmp) / "Market-1501-v15.09.15"
        ...     for split, name in [("bounding_box_train", "0002_c1s1_000451_03.jpg"),
        ...                         ("query", "0001_c1s1_001051_00.jpg"),
        ...                         ("bounding_box_test", "0001_c2s1_000301_01.jpg")]:
        ...         (base / split).mkdir(parents=True)
        ...         (base / split / name).touch()
        ...     ds = Market1501(tmp)
        >>> ds.train[0].pid, ds.train[0].orig_pid, ds.gallery[0].camid
        (0, 2, 1)
    """

    name: ClassVar[str] = "market1501"
    layout: ClassVar[str] = (
        "  Market-1501-v15.09.15/\n"
        "    bounding_box_train/   0002_c1s1_000451_03.jpg ...\n"
        "    query/                0001_c1s1_001051_00.jpg ...\n"
        "    bounding_box_test/    0000_c1s1_000151_01.jpg ...\n"
        "  (or the three split folders directly under root)"
    )
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"(-?\d+)_c(\d)s\d+_\d+_\d+")
    example_name: ClassVar[str] = "0002_c1s1_000451_03.jpg"
    num_cameras: ClassVar[int | None] = 6
    folder_names: ClassVar[tuple[str, ...]] = ("market1501", "")
    distractor_pid: int | None = 0

    def dataset_dir_candidates(self) -> list[str]:
        """``Market-1501-v15.09.15`` under ``root``, else ``root`` itself."""
        return ["Market-1501-v15.09.15", ""]
