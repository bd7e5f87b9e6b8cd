"""The synthetic benchmark's renderer (in memory, deterministic) and the cache built on it."""

from __future__ import annotations

import builtins
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metareid.data import (
    MANIFEST_NAME,
    generate_synthetic_benchmark,
    load_synthetic_manifest,
    prepare_synthetic_benchmark,
)
from metareid.data.synthetic._render import DomainRenderer, RenderedImage, benchmark_params

SMALL: dict[str, Any] = dict(
    seed=0,
    num_domains=2,
    train_ids_per_domain=3,
    test_ids_per_domain=2,
    train_images_per_id=3,
    test_images_per_camera=3,
    num_cameras=3,
    num_distractors=2,
    num_junk=2,
    image_size=(32, 16),
)


def rendered(index: int, **overrides: Any) -> list[RenderedImage]:
    return list(DomainRenderer(index, benchmark_params(**{**SMALL, **overrides})).images())


def as_arrays(images: list[RenderedImage]) -> list[tuple[str, int, int, np.ndarray]]:
    return [(i.split, i.pid, i.camera, np.asarray(i.image)) for i in images]


def same(a: list[RenderedImage], b: list[RenderedImage]) -> bool:
    return len(a) == len(b) and all(
        x[:3] == y[:3] and np.array_equal(x[3], y[3]) for x, y in zip(as_arrays(a), as_arrays(b))
    )


@pytest.mark.parametrize("index", [0, 5])  # a preset style and a seeded random one
def test_renderer_is_deterministic(index: int) -> None:
    renderer = DomainRenderer(index, benchmark_params(**SMALL))
    first, again = list(renderer.images()), list(renderer.images())
    assert same(first, again) and same(first, rendered(index))
    other = rendered(index, seed=1)
    assert not np.array_equal(np.asarray(first[0].image), np.asarray(other[0].image))


def test_a_domain_does_not_depend_on_num_domains() -> None:
    assert same(rendered(1, num_domains=2), rendered(1, num_domains=5))


def test_renderer_touches_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_open(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the renderer opened a file: {args}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", no_open)
    images = rendered(4)
    assert images and list(tmp_path.iterdir()) == []


def test_labels_follow_the_split_rules() -> None:
    images = rendered(0)
    assert {i.image.size for i in images} == {(16, 32)}
    assert {i.image.mode for i in images} == {"RGB"}
    train = [i for i in images if i.split == "train"]
    assert Counter(i.pid for i in train) == {1: 3, 2: 3, 3: 3}
    for pid in (1, 2, 3):
        assert len({i.camera for i in train if i.pid == pid}) >= 2
    query = [(i.pid, i.camera) for i in images if i.split == "query"]
    assert len(query) == len(set(query)) and {p for p, _ in query} == {4, 5}
    assert len({c for p, c in query if p == 4}) >= 2
    gallery = Counter((i.pid, i.camera) for i in images if i.split == "gallery" and i.pid > 0)
    assert gallery == {key: 2 for key in query}  # test_images_per_camera - 1 per camera
    others = Counter(i.pid for i in images if i.split == "gallery" and i.pid <= 0)
    assert others == {0: 2, -1: 2}
    assert {i.camera for i in images} <= {0, 1, 2}
    assert DomainRenderer(0, benchmark_params(**SMALL)).style == "daylight"


@pytest.mark.parametrize("index", [-1, 1.0, True])
def test_bad_domain_index_is_named(index: Any) -> None:
    with pytest.raises(ValueError, match="index"):
        DomainRenderer(index, benchmark_params(**SMALL))


def test_cache_writes_the_rendered_images_and_round_trips(tmp_path: Path) -> None:
    params = {**SMALL, "num_domains": 5}  # domain 4 has a seeded random style
    info = generate_synthetic_benchmark(tmp_path, **params)
    assert info.params == benchmark_params(**params)
    for domain in info.domains:
        renderer = DomainRenderer(domain.index, info.params)
        assert domain.style == renderer.style
        images = list(renderer.images())
        folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
        base = domain.root / "Market-1501-v15.09.15"
        written = {
            split: sorted(p.name for p in (base / folder).iterdir())
            for split, folder in folders.items()
        }
        assert sum(map(len, written.values())) == len(images)
        frames = Counter[int]()
        for image in images:  # names in Market-1501 form, frames counted per camera
            frames[image.camera] += 1
            stem = f"{image.pid:04d}" if image.pid >= 0 else str(image.pid)
            name = f"{stem}_c{image.camera + 1}s1_{frames[image.camera]:06d}_01.jpg"
            assert name in written[image.split]
            encoded = io.BytesIO()
            image.image.save(encoded, format="JPEG", quality=renderer.jpeg_quality)
            assert (base / folders[image.split] / name).read_bytes() == encoded.getvalue()
    assert load_synthetic_manifest(tmp_path) == info
    again = prepare_synthetic_benchmark(tmp_path, **params)
    assert again == info and again.generated is False
    assert (tmp_path / MANIFEST_NAME).is_file()
