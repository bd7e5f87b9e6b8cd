"""Dataset reader of the built-in synthetic benchmark: one domain, in the Market-1501 layout."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from metareid.data.datasets.base import OnBadImage, Use
from metareid.data.datasets.market1501 import Market1501

__all__ = ["SYNTHETIC_DOMAIN_DIR", "SyntheticReID"]

SYNTHETIC_DOMAIN_DIR = "synth_d{}"
"""Folder of domain ``d`` under the benchmark root, formatted with the domain index."""


class SyntheticReID(Market1501):
    """One domain of the synthetic benchmark of :func:`~metareid.data.generate_synthetic_benchmark`.

    Domain ``d`` lives in ``root/synth_d<d>/Market-1501-v15.09.15/`` and is read by the
    :class:`Market1501` code, so it has the same rules: junk (``-1``) dropped, distractors
    (``0``) kept in the gallery, train ids relabelled.

    Args:
        root: the benchmark root given to the generator.
        domain: which domain to read. Default 0.
        use: ``"train"`` (default) or ``"all"`` (train + query + gallery, see
            :class:`~metareid.data.ReIDDataset`).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: the domain was not generated under ``root``; the message says how
            to generate it.
        ValueError: a negative ``domain``, or the Market-1501 errors.

    Example:
        >>> import tempfile
        >>> from metareid.data import generate_synthetic_benchmark
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = generate_synthetic_benchmark(tmp, num_domains=2, train_ids_per_domain=4,
        ...                                      test_ids_per_domain=2, num_distractors=0,
        ...                                      num_junk=0)
        ...     ds = SyntheticReID(tmp, domain=1)
        >>> ds.num_train_pids, ds.num_query_pids
        (4, 2)
    """

    name: ClassVar[str] = "synthetic"

    def __init__(
        self,
        root: str | Path,
        domain: int = 0,
        *,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        if isinstance(domain, bool) or not isinstance(domain, int) or domain < 0:
            raise ValueError(f"domain must be an int >= 0, got {domain!r}")
        self.domain = domain
        self.benchmark_root = Path(root)
        domain_root = self.benchmark_root / SYNTHETIC_DOMAIN_DIR.format(domain)
        if not domain_root.is_dir():
            raise FileNotFoundError(
                f"SyntheticReID: domain {domain} not found: '{domain_root}' does not exist. "
                f"Generate the benchmark first, e.g. "
                f"metareid.data.prepare_synthetic_benchmark('{self.benchmark_root}')"
            )
        super().__init__(domain_root, use=use, check_images=check_images, on_bad_image=on_bad_image)
