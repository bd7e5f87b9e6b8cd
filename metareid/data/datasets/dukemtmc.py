"""DukeMTMC-reID (Ristani et al., ECCVW 2016; Zheng et al., ICCV 2017)."""

from __future__ import annotations

import re
from typing import ClassVar

from metareid.data.datasets._market_layout import MarketLayoutDataset

__all__ = ["DukeMTMCreID"]


class DukeMTMCreID(MarketLayoutDataset):
    """DukeMTMC-reID: 702 train ids / 16,522 images, 8 cameras, 2,228 query images.

    File names are ``PPPP_cC_fFFFFFFF.jpg``: person id, camera ``C`` in 1..8 (stored
    0-based) and frame, e.g. ``0005_c2_f0046985.jpg``. Train ids are relabelled to
    ``0..701``; ids ``-1`` (absent from the release) would be dropped as junk.

    Layout (``root`` is e.g. ``<data-dir>/dukemtmc``)::

        root/
          DukeMTMC-reID/
            bounding_box_train/   0005_c2_f0046985.jpg ...
            query/                0005_c2_f0046985.jpg ...
            bounding_box_test/    0002_c1_f0044158.jpg ...

    ``root`` may also be the ``DukeMTMC-reID`` folder itself. Under a data directory
    :func:`~metareid.data.build_dataset_from_spec` finds it as ``<data-dir>/dukemtmc/``
    (metareid), ``<data-dir>/dukemtmc-reid/`` (torchreid) or directly in ``<data-dir>/``
    (fast-reid).

    Args:
        root: the dataset root.
        use: ``"train"`` (default) or ``"all"``: train + query + gallery form the training
            split (test ids labelled after the train ids), query and gallery are empty.
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
        ...     base = Path(tmp) / "DukeMTMC-reID"
        ...     for split in ("bounding_box_train", "query", "bounding_box_test"):
        ...         (base / split).mkdir(parents=True)
        ...         (base / split / "0005_c8_f0046985.jpg").touch()
        ...     ds = DukeMTMCreID(tmp)
        >>> ds.train[0].pid, ds.train[0].orig_pid, ds.train[0].camid
        (0, 5, 7)
    """

    name: ClassVar[str] = "dukemtmc"
    layout: ClassVar[str] = (
        "  DukeMTMC-reID/\n"
        "    bounding_box_train/   0005_c2_f0046985.jpg ...\n"
        "    query/                0005_c2_f0046985.jpg ...\n"
        "    bounding_box_test/    0002_c1_f0044158.jpg ...\n"
        "  (or the three split folders directly under root)"
    )
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"(-?\d+)_c(\d)_f\d+")
    example_name: ClassVar[str] = "0005_c2_f0046985.jpg"
    num_cameras: ClassVar[int | None] = 8
    folder_names: ClassVar[tuple[str, ...]] = ("dukemtmc", "dukemtmc-reid", "")

    def dataset_dir_candidates(self) -> list[str]:
        """``DukeMTMC-reID`` under ``root``, else ``root`` itself."""
        return ["DukeMTMC-reID", ""]
