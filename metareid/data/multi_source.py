"""Several source datasets trained on at once, each a domain with its own id range."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from metareid.data.datasets.base import ImageRecord, ReIDDataset, SplitStats, split_stats

__all__ = ["MultiSourceDataset"]


class MultiSourceDataset:
    """The training splits of several source datasets, one domain per source.

    Two views of the same images:

    * :attr:`per_domain_train` (what M3L uses): one list per source, source ``d``'s records
      carry ``domain=d`` and its own contiguous ids ``0..n_d-1``, so each domain gets a
      memory of :attr:`num_classes_per_domain` ``[d]`` slots;
    * :attr:`combined_train` (baselines with one global classifier): all sources in one id
      space, source ``d``'s ids shifted by :attr:`pid_offsets` ``[d]``, the domain kept.

    ``orig_pid`` always keeps the id of the source's files. Query and gallery splits are not
    used here; evaluate on a target dataset's ``query`` and ``gallery``.

    Args:
        datasets: the sources, in domain order (at least one). Each train split must have
            contiguous ids ``0..n-1`` (true for every :class:`ReIDDataset`).
        names: a name per source, for the summary. Default: each dataset's ``name``.

    Raises:
        ValueError: no dataset, ``names`` of the wrong length, or a train split whose ids
            are not ``0..n-1``.

    Example:
        >>> from metareid.data import ImageRecord, ReIDDataset
        >>> a = ReIDDataset([ImageRecord("a.jpg", 5, 0, 0, 5), ImageRecord("b.jpg", 8, 1, 0, 8)], [], [])
        >>> b = ReIDDataset([ImageRecord("c.jpg", 3, 0, 0, 3)], [], [])
        >>> ms = MultiSourceDataset([a, b], names=["A", "B"])
        >>> ms.num_classes_per_domain, ms.num_combined_classes
        ((2, 1), 3)
        >>> [(r.pid, r.domain, r.orig_pid) for r in ms.per_domain_train[1]]
        [(0, 1, 3)]
        >>> [(r.pid, r.domain, r.orig_pid) for r in ms.combined_train]
        [(0, 0, 5), (1, 0, 8), (2, 1, 3)]
    """

    def __init__(self, datasets: Sequence[ReIDDataset], names: Sequence[str] | None = None) -> None:
        if len(datasets) == 0:
            raise ValueError("datasets must hold at least one source dataset, got none")
        if names is None:
            names = [ds.name for ds in datasets]
        if len(names) != len(datasets):
            raise ValueError(
                f"names must have one entry per dataset ({len(datasets)}), got {len(names)}"
            )
        per_domain: list[list[ImageRecord]] = []
        for domain, (name, ds) in enumerate(zip(names, datasets, strict=True)):
            pids = {r.pid for r in ds.train}
            if pids != set(range(len(pids))):
                raise ValueError(
                    f"the train split of source {domain} ({name!r}) must have contiguous ids "
                    f"0..n-1, got {len(pids)} ids between {min(pids, default=None)} and "
                    f"{max(pids, default=None)}"
                )
            per_domain.append([replace(r, domain=domain) for r in ds.train])
        self.datasets: tuple[ReIDDataset, ...] = tuple(datasets)
        self.names: tuple[str, ...] = tuple(names)
        self.per_domain_train: tuple[list[ImageRecord], ...] = tuple(per_domain)
        self.num_classes_per_domain: tuple[int, ...] = tuple(
            len({r.pid for r in train}) for train in per_domain
        )
        offsets = [0]
        for n in self.num_classes_per_domain[:-1]:
            offsets.append(offsets[-1] + n)
        self.pid_offsets: tuple[int, ...] = tuple(offsets)
        self.combined_train: list[ImageRecord] = [
            replace(r, pid=r.pid + self.pid_offsets[r.domain])
            for train in per_domain
            for r in train
        ]

    @property
    def num_domains(self) -> int:
        """Number of source domains."""
        return len(self.datasets)

    @property
    def num_combined_classes(self) -> int:
        """Number of identities over all sources, the size of a global classifier."""
        return sum(self.num_classes_per_domain)

    def domain_stats(self) -> list[SplitStats]:
        """Counts of each source's training split.

        Example:
            >>> from metareid.data import ImageRecord, ReIDDataset
            >>> ds = ReIDDataset([ImageRecord("a.jpg", 2, 0, 0, 2)], [], [])
            >>> MultiSourceDataset([ds]).domain_stats()
            [SplitStats(num_pids=1, num_imgs=1, num_cams=1)]
        """
        return [split_stats(train) for train in self.per_domain_train]

    def summary(self) -> str:
        """A small table of the sources' training splits.

        Example:
            >>> from metareid.data import ImageRecord, ReIDDataset
            >>> ds = ReIDDataset([ImageRecord("a.jpg", 2, 0, 0, 2)], [], [])
            >>> print(MultiSourceDataset([ds], names=["toy"]).summary())
            domain | name       | # ids | # images | # cameras | id offset
                 0 | toy        |     1 |        1 |         1 |         0
             total |            |     1 |        1 |           |
        """
        w = max([10, *(len(n) for n in self.names)])  # the name column fits every name
        lines = [f"domain | {'name':<{w}} | # ids | # images | # cameras | id offset"]
        for domain, (name, stats) in enumerate(zip(self.names, self.domain_stats(), strict=True)):
            lines.append(
                f"{domain:6d} | {name:<{w}} | {stats.num_pids:5d} | {stats.num_imgs:8d} | "
                f"{stats.num_cams:9d} | {self.pid_offsets[domain]:9d}"
            )
        lines.append(
            f" total | {'':<{w}} | {self.num_combined_classes:5d} | "
            f"{len(self.combined_train):8d} | {'':9} |"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"MultiSourceDataset(names={list(self.names)}, "
            f"num_classes_per_domain={list(self.num_classes_per_domain)})"
        )
