"""The built-in synthetic benchmark: determinism, layout, counts, caching."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from metareid.data import (
    MANIFEST_NAME,
    Market1501,
    MultiSourceDataset,
    build_dataset,
    generate_synthetic_benchmark,
    load_synthetic_manifest,
    prepare_synthetic_benchmark,
)

SMALL: dict[str, Any] = dict(
    num_domains=2,
    train_ids_per_domain=4,
    test_ids_per_domain=3,
    train_images_per_id=3,
    num_distractors=2,
    num_junk=2,
    image_size=(32, 16),
)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate_synthetic_benchmark(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic_benchmark(tmp_path / "b", seed=3, **SMALL)
    c = generate_synthetic_benchmark(tmp_path / "c", seed=4, **SMALL)
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db and len(da) > 0
    assert a.domains == tuple(replace(d, root=tmp_path / "a" / d.name) for d in b.domains)
    manifest = (tmp_path / "a" / MANIFEST_NAME).read_bytes()
    assert manifest == (tmp_path / "b" / MANIFEST_NAME).read_bytes()
    assert da != dc
    shared = set(da) & set(dc)  # same file names, different pixels
    assert shared and all(da[k] != dc[k] for k in shared)
    assert c.params["seed"] == 4


def test_domain_content_does_not_depend_on_num_domains(tmp_path: Path) -> None:
    generate_synthetic_benchmark(tmp_path / "two", **SMALL)
    generate_synthetic_benchmark(tmp_path / "one", **{**SMALL, "num_domains": 1})
    one, two = digest(tmp_path / "one"), digest(tmp_path / "two")
    assert one == {k: v for k, v in two.items() if k.startswith("synth_d0")}


def test_loads_through_market1501_with_expected_counts(tmp_path: Path) -> None:
    info = generate_synthetic_benchmark(tmp_path, **SMALL)
    assert info.num_domains == 2 and info.generated
    for domain in info.domains:
        ds = Market1501(domain.root)
        assert (ds.train_stats, ds.query_stats, ds.gallery_stats) == (
            domain.train,
            domain.query,
            domain.gallery,
        )
        assert domain.train.num_pids == 4 and domain.train.num_imgs == 12
        assert domain.query.num_pids == 3
        # one query per id per camera
        per_id_cam = [(r.pid, r.camid) for r in ds.query]
        assert len(per_id_cam) == len(set(per_id_cam))
        # gallery: the test ids plus distractor id 0, several cameras, junk dropped
        gallery_ids = {r.pid for r in ds.gallery}
        assert gallery_ids == {r.pid for r in ds.query} | {0}
        assert domain.gallery.num_cams >= 2
        assert domain.num_junk == 2
        files = list((domain.root / "Market-1501-v15.09.15" / "bounding_box_test").iterdir())
        assert sum(p.name.startswith("-1_") for p in files) == 2
        # every query has a match from another camera in the gallery
        for q in ds.query:
            assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
        # train and test ids are disjoint
        assert {r.orig_pid for r in ds.train}.isdisjoint(gallery_ids)
    d1 = build_dataset("synthetic", tmp_path, domain=1)
    assert d1.train_stats == info.domains[1].train
    assert {Path(r.path).stat().st_size > 0 for r in d1.train} == {True}


def test_images_decode_at_the_requested_size(tmp_path: Path) -> None:
    info = generate_synthetic_benchmark(tmp_path, **{**SMALL, "num_domains": 1})
    ds = Market1501(info.domains[0].root, check_images=True)
    from PIL import Image

    with Image.open(ds.train[0].path) as img:
        assert img.size == (16, 32) and img.format == "JPEG"


def test_prepare_skips_regeneration_and_detects_changes(tmp_path: Path) -> None:
    first = prepare_synthetic_benchmark(tmp_path, **SMALL)
    assert first.generated
    before = digest(tmp_path)
    mtime = (tmp_path / MANIFEST_NAME).stat().st_mtime_ns
    again = prepare_synthetic_benchmark(tmp_path, **SMALL)
    assert not again.generated and again == first
    assert (tmp_path / MANIFEST_NAME).stat().st_mtime_ns == mtime
    # a missing file triggers regeneration, with the same bytes
    next(iter((tmp_path / "synth_d1").rglob("*.jpg"))).unlink()
    repaired = prepare_synthetic_benchmark(tmp_path, **SMALL)
    assert repaired.generated and digest(tmp_path) == before
    # other parameters regenerate and remove stale domains
    changed = prepare_synthetic_benchmark(tmp_path, **{**SMALL, "num_domains": 1})
    assert changed.generated and changed.num_domains == 1
    assert not (tmp_path / "synth_d1").exists()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["params"]["num_domains"] == 1
    assert load_synthetic_manifest(tmp_path) == changed


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare_synthetic_benchmark"):
        load_synthetic_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ValueError, match="not a valid synthetic benchmark manifest"):
        load_synthetic_manifest(tmp_path)
    # a broken manifest is regenerated by prepare
    assert prepare_synthetic_benchmark(tmp_path, **{**SMALL, "num_domains": 1}).generated


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_cameras", 7),
        ("num_cameras", 1),
        ("test_images_per_camera", 1),
        ("train_ids_per_domain", 0),
        ("num_junk", -1),
        ("image_size", (8, 8)),
        ("seed", -1),
    ],
)
def test_bad_parameters_are_named(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        generate_synthetic_benchmark(tmp_path, **{**SMALL, name: value})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_default_benchmark(tmp_path: Path) -> None:
    info = generate_synthetic_benchmark(tmp_path)
    assert info.num_domains == 4
    assert [d.style for d in info.domains] == [
        "daylight",
        "indoor-warm",
        "night-cold",
        "overcast-park",
    ]
    for d in info.domains:
        assert d.train.num_pids == 40 and d.train.num_imgs == 320 and d.num_cameras == 4
        assert d.query.num_pids == 24 and 48 <= d.query.num_imgs <= 96
        assert d.gallery.num_imgs == 2 * d.query.num_imgs + 10
    sources = MultiSourceDataset([build_dataset("synthetic", tmp_path, domain=d) for d in range(3)])
    assert sources.num_classes_per_domain == (40, 40, 40)


def test_prepare_verifies_content_hashes_before_reusing(tmp_path):
    import hashlib
    import json

    from metareid.data import prepare_synthetic_benchmark

    small = dict(num_domains=1, train_ids_per_domain=2, test_ids_per_domain=1, num_junk=0)
    first = prepare_synthetic_benchmark(tmp_path, **small)
    manifest = json.loads((tmp_path / "synthetic_manifest.json").read_text())
    assert set(manifest["domains"][0]["sha256"]) == {"train", "query", "gallery"}
    victim = sorted((tmp_path / "synth_d0").rglob("*.jpg"))[0]
    original = hashlib.sha256(victim.read_bytes()).hexdigest()
    assert prepare_synthetic_benchmark(tmp_path, **small).generated is False
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")  # same count, other bytes
    again = prepare_synthetic_benchmark(tmp_path, **small)
    assert again.generated is True and again == first.__class__(
        **{**first.__dict__, "generated": True}
    )
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == original
    # A manifest without hashes (older metareid) is not trusted either.
    del manifest["domains"][0]["sha256"]
    (tmp_path / "synthetic_manifest.json").write_text(json.dumps(manifest))
    assert prepare_synthetic_benchmark(tmp_path, **small).generated is True
