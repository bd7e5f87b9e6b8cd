"""On-disk cache of the built-in synthetic benchmark: written like Market-1501, then reused.

:func:`generate_synthetic_benchmark` renders every domain in memory with
:class:`~metareid.data.synthetic._render.DomainRenderer` (see there for what is drawn) and
saves the images as JPEG files in the Market-1501 layout and naming, one dataset folder per
domain::

    root/
      synthetic_manifest.json          parameters, counts and content digests
      synth_d0/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/*.jpg
      synth_d1/...
      ...

so that the real loading code reads it (:class:`~metareid.data.Market1501` on
``root/synth_d<k>``, or ``build_dataset("synthetic", root, domain=k)``). File names follow
Market-1501: ``<pid>_c<camera>s1_<frame>_01.jpg`` with a 4-digit id (``0000`` for the
distractors, ``-1`` for junk) and a frame number counted per camera.

:func:`prepare_synthetic_benchmark` reuses the files when the manifest records the same
parameters and generator version and the SHA-256 content digest of every split folder
(over its file names and bytes) still matches; :func:`load_synthetic_manifest` reads the
metadata only.

The files depend only on the parameters (same seed, same bytes, with the same Pillow and
libjpeg), and a domain's files do not depend on ``num_domains``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareid.data.datasets.base import ImageRecord, SplitStats, split_stats
from metareid.data.datasets.synthetic_benchmark import SYNTHETIC_DOMAIN_DIR
from metareid.data.synthetic._render import GENERATOR_VERSION, DomainRenderer, benchmark_params

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SyntheticBenchmark",
    "SyntheticDomain",
    "generate_synthetic_benchmark",
    "load_synthetic_manifest",
    "prepare_synthetic_benchmark",
]

MANIFEST_NAME = "synthetic_manifest.json"
"""File name of the manifest written under the benchmark root."""

_MARKET_DIR = "Market-1501-v15.09.15"
_SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


@dataclass(frozen=True)
class SyntheticDomain:
    """What one generated domain holds.

    Attributes:
        index: domain index ``d``.
        name: folder name, ``synth_d<d>``.
        style: name of the domain's style, e.g. ``"daylight"``.
        root: ``<benchmark root>/synth_d<d>``, a root for :class:`~metareid.data.Market1501`.
        num_cameras: cameras of the domain.
        train: counts of the train split as the loaders report them.
        query: counts of the query split.
        gallery: counts of the gallery split (distractors included, junk excluded).
        num_junk: junk files (id -1) in the gallery folder, dropped by the loaders.

    Example:
        >>> d = SyntheticDomain(0, "synth_d0", "daylight", Path("x/synth_d0"), 4,
        ...                     SplitStats(2, 8, 4), SplitStats(1, 2, 2), SplitStats(1, 4, 2), 0)
        >>> d.train.num_imgs
        8
    """

    index: int
    name: str
    style: str
    root: Path
    num_cameras: int
    train: SplitStats
    query: SplitStats
    gallery: SplitStats
    num_junk: int


@dataclass(frozen=True)
class SyntheticBenchmark:
    """Metadata of a generated benchmark, as stored in its manifest.

    Attributes:
        root: the benchmark root.
        params: the generation parameters (the arguments of
            :func:`generate_synthetic_benchmark` except ``root``).
        domains: one entry per domain.
        generated: True when the call that returned this wrote the files, False when it
            found them already in place.

    Example:
        >>> SyntheticBenchmark(Path("x"), {"seed": 0}, ()).num_domains
        0
    """

    root: Path
    params: dict[str, Any]
    domains: tuple[SyntheticDomain, ...]
    generated: bool = field(default=False, compare=False)

    @property
    def num_domains(self) -> int:
        """Number of domains."""
        return len(self.domains)


# --------------------------------------------------------------------------------------------
# Writing, reading and checking the files.


def _write_domain(root: Path, index: int, params: dict[str, Any]) -> dict[str, Any]:
    """Render domain ``index``, write its files and return its manifest entry."""
    renderer = DomainRenderer(index, params)
    base = root / SYNTHETIC_DOMAIN_DIR.format(index) / _MARKET_DIR
    folders = {split: base / name for split, name in _SPLIT_DIRS.items()}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    frames = [0] * params["num_cameras"]
    records: dict[str, list[ImageRecord]] = {"train": [], "query": [], "gallery": []}
    for item in renderer.images():
        frames[item.camera] += 1
        stem = f"{item.pid:04d}" if item.pid >= 0 else str(item.pid)
        name = f"{stem}_c{item.camera + 1}s1_{frames[item.camera]:06d}_01.jpg"
        path = folders[item.split] / name
        item.image.save(path, format="JPEG", quality=renderer.jpeg_quality)
        records[item.split].append(ImageRecord(str(path), item.pid, item.camera, index, item.pid))

    kept = {split: [r for r in recs if r.pid != -1] for split, recs in records.items()}
    return {
        "index": index,
        "name": SYNTHETIC_DOMAIN_DIR.format(index),
        "style": renderer.style,
        "num_cameras": params["num_cameras"],
        "train": list(split_stats(kept["train"])),
        "query": list(split_stats(kept["query"])),
        "gallery": list(split_stats(kept["gallery"])),
        "num_junk": sum(r.pid == -1 for r in records["gallery"]),
        "num_files": {split: len(recs) for split, recs in records.items()},
    }


def _benchmark(root: Path, manifest: dict[str, Any], generated: bool) -> SyntheticBenchmark:
    domains = tuple(
        SyntheticDomain(
            index=d["index"],
            name=d["name"],
            style=d["style"],
            root=root / d["name"],
            num_cameras=d["num_cameras"],
            train=SplitStats(*d["train"]),
            query=SplitStats(*d["query"]),
            gallery=SplitStats(*d["gallery"]),
            num_junk=d["num_junk"],
        )
        for d in manifest["domains"]
    )
    return SyntheticBenchmark(root, dict(manifest["params"]), domains, generated)


def generate_synthetic_benchmark(
    root: str | Path,
    seed: int = 0,
    num_domains: int = 4,
    train_ids_per_domain: int = 40,
    test_ids_per_domain: int = 24,
    train_images_per_id: int = 8,
    test_images_per_camera: int = 3,
    num_cameras: int = 4,
    num_distractors: int = 10,
    num_junk: int = 5,
    image_size: tuple[int, int] = (64, 32),
) -> SyntheticBenchmark:
    """Write the synthetic multi-domain benchmark under ``root`` (always regenerates).

    See :mod:`metareid.data.synthetic._render` for what is drawn. With the defaults each
    domain has 40 train ids x 8 images (320), 24 test ids seen by 2-4 cameras with 3 images
    per camera (about 70 queries and 140 gallery images), 10 distractors and 5 junk boxes;
    four domains take about 2,300 JPEG files of 64 x 32 pixels (about 3 MB) and a few seconds.

    Existing ``root/synth_d<k>`` folders of the domains written are deleted first, and the
    manifest ``root/synthetic_manifest.json`` is written last.

    Args:
        root: the benchmark root (created if missing).
        seed: seed of everything drawn. Default 0.
        num_domains: number of domains (styles 0-3 are presets). Default 4.
        train_ids_per_domain: training identities per domain. Default 40.
        test_ids_per_domain: test identities per domain (disjoint from train). Default 24.
        train_images_per_id: images per training identity, spread over 2 or more cameras.
            Default 8.
        test_images_per_camera: images of a test identity per camera that sees it; the first
            is the query. Default 3 (>= 2).
        num_cameras: cameras per domain, 2..6. Default 4.
        num_distractors: gallery images of id 0 per domain. Default 10.
        num_junk: gallery images of id -1 per domain (dropped by the loaders). Default 5.
        image_size: (height, width) of the saved images. Default (64, 32).

    Returns:
        The benchmark's metadata; ``generated`` is True.

    Raises:
        ValueError: a parameter out of range (the message names it).

    Example:
        >>> import tempfile
        >>> from metareid.data import Market1501
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     info = generate_synthetic_benchmark(tmp, num_domains=1, train_ids_per_domain=3,
        ...                                         test_ids_per_domain=2, num_junk=1)
        ...     ds = Market1501(info.domains[0].root)
        >>> ds.train_stats == info.domains[0].train, info.domains[0].style
        (True, 'daylight')
    """
    params = benchmark_params(
        seed,
        num_domains,
        train_ids_per_domain,
        test_ids_per_domain,
        train_images_per_id,
        test_images_per_camera,
        num_cameras,
        num_distractors,
        num_junk,
        image_size,
    )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST_NAME
    stale = set(range(num_domains))
    if manifest_path.is_file():
        try:
            stale |= {int(d["index"]) for d in json.loads(manifest_path.read_text())["domains"]}
        except (ValueError, KeyError, TypeError):
            pass
        manifest_path.unlink()
    for index in sorted(stale):
        folder = root / SYNTHETIC_DOMAIN_DIR.format(index)
        if folder.is_dir():
            shutil.rmtree(folder)
    domains = [_write_domain(root, index, params) for index in range(num_domains)]
    for domain in domains:
        domain["sha256"] = _content_digests(root, domain)
    manifest = {
        "format": "metareid-synthetic-reid",
        "generator_version": GENERATOR_VERSION,
        "params": params,
        "layout": f"{SYNTHETIC_DOMAIN_DIR.format('<d>')}/{_MARKET_DIR}/"
        "{bounding_box_train,query,bounding_box_test}/*.jpg",
        "domains": domains,
    }
    tmp_path = manifest_path.with_name(MANIFEST_NAME + ".tmp")
    tmp_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp_path, manifest_path)
    return _benchmark(root, manifest, generated=True)


def load_synthetic_manifest(root: str | Path) -> SyntheticBenchmark:
    """Read the metadata of a benchmark generated under ``root``, without touching the files.

    Args:
        root: the benchmark root.

    Returns:
        The metadata; ``generated`` is False.

    Raises:
        FileNotFoundError: no manifest under ``root``.
        ValueError: the manifest is not a synthetic-benchmark manifest.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = generate_synthetic_benchmark(tmp, num_domains=2, train_ids_per_domain=2,
        ...                                      test_ids_per_domain=1, num_distractors=0,
        ...                                      num_junk=0)
        ...     info = load_synthetic_manifest(tmp)
        >>> [d.name for d in info.domains], info.domains[1].train.num_pids
        (['synth_d0', 'synth_d1'], 2)
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no synthetic benchmark manifest at '{path}'; generate the benchmark with "
            f"metareid.data.prepare_synthetic_benchmark('{root}')"
        )
    try:
        manifest = json.loads(path.read_text())
        return _benchmark(root, manifest, generated=False)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"'{path}' is not a valid synthetic benchmark manifest: {err}") from err


def _content_digests(root: Path, domain: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each split folder: over the sorted file names and their contents."""
    base = root / domain["name"] / _MARKET_DIR
    out: dict[str, str] = {}
    for split, folder in _SPLIT_DIRS.items():
        digest = hashlib.sha256()
        for path in sorted((base / folder).iterdir()):
            if path.is_file():
                digest.update(path.name.encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        out[split] = digest.hexdigest()
    return out


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    """Whether every split folder holds exactly the files (names and bytes) of the manifest."""
    for domain in manifest["domains"]:
        base = root / domain["name"] / _MARKET_DIR
        for split, folder in _SPLIT_DIRS.items():
            if not (base / folder).is_dir():
                return False
            count = sum(1 for p in (base / folder).iterdir() if p.suffix == ".jpg")
            if count != domain["num_files"][split]:
                return False
        if domain.get("sha256") != _content_digests(root, domain):
            return False
    return True


def prepare_synthetic_benchmark(
    root: str | Path,
    seed: int = 0,
    num_domains: int = 4,
    train_ids_per_domain: int = 40,
    test_ids_per_domain: int = 24,
    train_images_per_id: int = 8,
    test_images_per_camera: int = 3,
    num_cameras: int = 4,
    num_distractors: int = 10,
    num_junk: int = 5,
    image_size: tuple[int, int] = (64, 32),
) -> SyntheticBenchmark:
    """The benchmark under ``root``, generated only if it is not already there.

    The files are reused when ``root/synthetic_manifest.json`` records the same parameters
    and generator version and every split folder holds exactly the files the manifest's
    SHA-256 content hashes describe (names and bytes); otherwise
    :func:`generate_synthetic_benchmark` runs (it only replaces the benchmark's own domain
    folders). Arguments and defaults are those of
    :func:`generate_synthetic_benchmark`.

    Returns:
        The metadata; ``generated`` tells whether files were written.

    Example:
        >>> import tempfile
        >>> small = dict(num_domains=1, train_ids_per_domain=2, test_ids_per_domain=1)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     first = prepare_synthetic_benchmark(tmp, **small)
        ...     again = prepare_synthetic_benchmark(tmp, **small)
        >>> first.generated, again.generated, first == again
        (True, False, True)
    """
    args = (
        seed,
        num_domains,
        train_ids_per_domain,
        test_ids_per_domain,
        train_images_per_id,
        test_images_per_camera,
        num_cameras,
        num_distractors,
        num_junk,
        image_size,
    )
    params = benchmark_params(*args)
    root = Path(root)
    path = root / MANIFEST_NAME
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            current = (
                manifest.get("generator_version") == GENERATOR_VERSION
                and manifest.get("params") == params
                and _is_complete(root, manifest)
            )
            if current:
                return _benchmark(root, manifest, generated=False)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    return generate_synthetic_benchmark(root, *args)
