"""The built-in synthetic multi-domain person ReID benchmark.

Two parts, one job each:

* :mod:`metareid.data.synthetic._render` draws a domain's images and labels in memory,
  from the parameters and a seed (people, cameras, domain styles; no file I/O);
* :mod:`metareid.data.synthetic.cache` writes them to disk in the Market-1501 layout with a
  manifest of parameters, counts and content digests, and reuses the files while they match.

The dataset reader is :class:`~metareid.data.SyntheticReID`
(:mod:`metareid.data.datasets.synthetic_benchmark`). Users import the names below from
:mod:`metareid.data`.
"""

from metareid.data.synthetic.cache import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SyntheticBenchmark,
    SyntheticDomain,
    generate_synthetic_benchmark,
    load_synthetic_manifest,
    prepare_synthetic_benchmark,
)

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SyntheticBenchmark",
    "SyntheticDomain",
    "generate_synthetic_benchmark",
    "load_synthetic_manifest",
    "prepare_synthetic_benchmark",
]
