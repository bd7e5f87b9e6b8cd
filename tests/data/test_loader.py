"""ReIDImageDataset items, bad images, and the train/test loader helpers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from PIL import Image

from metareid.data import (
    BadImageError,
    ImageRecord,
    MultiDomainBatchIterator,
    ReIDImageDataset,
    build_test_loader,
    build_test_transform,
    build_train_loader,
    build_train_loaders,
    build_train_transform,
)


@pytest.fixture
def records(tmp_path: Path) -> list[list[ImageRecord]]:
    """Two domains, 4 identities x 3 images over 2 cameras each, real 8x4 images."""
    out = []
    for domain in range(2):
        recs = []
        for pid in range(4):
            for k in range(3):
                path = tmp_path / f"d{domain}_{pid:04d}_c{k % 2 + 1}_{k}.png"
                Image.new("RGB", (4, 8), (40 * pid, 100 * domain, 10 * k)).save(path)
                recs.append(ImageRecord(str(path), pid, k % 2, domain, 100 + pid))
        out.append(recs)
    return out


def test_item_dict(records: list[list[ImageRecord]]) -> None:
    ds = ReIDImageDataset(records[1], build_test_transform((16, 8)))
    item = ds[4]
    assert set(item) == {"img", "pid", "camid", "domain", "index", "path"}
    assert item["img"].shape == (3, 16, 8) and item["img"].dtype == torch.float32
    assert (item["pid"], item["camid"], item["domain"], item["index"]) == (1, 1, 1, 4)
    assert item["path"] == records[1][4].path
    raw = ReIDImageDataset(records[0])[0]["img"]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 8, 4)


def test_bad_image_raise_or_replace_by_same_identity(
    records: list[list[ImageRecord]], tmp_path: Path
) -> None:
    bad_path = tmp_path / "broken.png"
    bad_path.write_bytes(b"not a png")
    recs = list(records[0])
    recs[3] = ImageRecord(str(bad_path), recs[3].pid, 0, 0, recs[3].orig_pid)
    with pytest.raises(BadImageError, match=r"broken\.png"):
        ReIDImageDataset(recs)[3]
    ds = ReIDImageDataset(recs, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"broken\.png"):
        item = ds[3]
    assert item["pid"] == recs[3].pid and item["index"] != 3 and item["path"] != str(bad_path)
    lonely = [ImageRecord(str(bad_path), 9, 0, 0, 9)]
    with pytest.warns(UserWarning), pytest.raises(BadImageError, match="no other image"):
        ReIDImageDataset(lonely, on_bad_image="skip")[0]


def test_train_loader_batches(records: list[list[ImageRecord]]) -> None:
    loader = build_train_loader(
        records[0],
        build_train_transform((16, 8), padding=2),
        num_identities=2,
        num_instances=3,
        num_workers=0,
        pin_memory=False,
    )
    batch = next(iter(loader))
    assert batch["img"].shape == (6, 3, 16, 8)
    assert batch["pid"].dtype == torch.int64 and batch["pid"].shape == (6,)
    assert len(batch["path"]) == 6
    assert loader.persistent_workers is False and loader.pin_memory is False


def test_train_loader_with_a_worker(records: list[list[ImageRecord]]) -> None:
    loader = build_train_loader(
        records[0], None, num_identities=2, num_instances=2, num_workers=1, pin_memory=False
    )
    assert loader.persistent_workers is True
    first = [b["index"].tolist() for b in itertools.islice(iter(loader), 3)]
    assert all(len(b) == 4 for b in first)


def test_multi_domain_iterator_never_mixes_domains(records: list[list[ImageRecord]]) -> None:
    loaders = build_train_loaders(
        records, None, num_identities=2, num_instances=2, num_workers=0, seed=3
    )
    it = MultiDomainBatchIterator(loaders)
    assert it.num_domains == 2
    for step in itertools.islice(it, 5):  # more steps than one pass (2 batches) per domain
        assert len(step) == 2
        for domain, batch in enumerate(step):
            assert batch["domain"].tolist() == [domain] * 4
            assert batch["pid"].view(2, 2).unique(dim=1).shape == (2, 1)


def test_train_loaders_are_deterministic(records: list[list[ImageRecord]]) -> None:
    def first_indices(seed: int) -> list[list[int]]:
        loaders = build_train_loaders(
            records, None, num_identities=2, num_instances=2, num_workers=0, seed=seed
        )
        return [b["index"].tolist() for b in next(MultiDomainBatchIterator(loaders))]

    assert first_indices(0) == first_indices(0)
    assert any(first_indices(s) != first_indices(0) for s in (1, 2, 3))


def test_multi_domain_iterator_restarts_finite_loaders() -> None:
    finite: list[list[object]] = [[1, 2, 3], ["a", "b"]]
    it = MultiDomainBatchIterator(finite)
    assert [next(it) for _ in range(4)] == [[1, "a"], [2, "b"], [3, "a"], [1, "b"]]
    with pytest.raises(ValueError, match="at least one"):
        MultiDomainBatchIterator([])
    with pytest.raises(ValueError, match="domain 1 yields no batch"):
        next(MultiDomainBatchIterator([[1], []]))


def test_test_loader_keeps_order_and_last_batch(records: list[list[ImageRecord]]) -> None:
    recs = records[0] + records[1]
    loader = build_test_loader(recs, build_test_transform((16, 8)), batch_size=5, num_workers=0)
    batches = list(loader)
    assert [len(b["pid"]) for b in batches] == [5, 5, 5, 5, 4]
    indices = torch.cat([b["index"] for b in batches]).tolist()
    assert indices == list(range(len(recs)))
    with pytest.raises(ValueError, match="num_workers"):
        build_test_loader(recs, None, num_workers=-1)
    with pytest.raises(ValueError, match="batch_size"):
        build_test_loader(recs, None, batch_size=0)


def test_the_sampler_switch_picks_the_published_rules():
    from metareid.data import ImageRecord, PublishedIdentitySampler, build_train_loader

    recs = [ImageRecord(f"{i}.jpg", i % 4, i % 2, 0, i % 4) for i in range(16)]
    loader = build_train_loader(
        recs, None, num_identities=2, num_instances=2, num_workers=0, sampler="published"
    )
    assert isinstance(loader.batch_sampler, PublishedIdentitySampler)
    chunked = build_train_loader(
        recs,
        None,
        num_identities=2,
        num_instances=2,
        num_workers=0,
        sampler="published",
        identity_chunk=(0, 2),
    )
    assert isinstance(chunked.batch_sampler.sampler, PublishedIdentitySampler)
    with pytest.raises(ValueError, match="sampler must be one of"):
        build_train_loader(recs, None, num_workers=0, sampler="random")
    with pytest.raises(ValueError, match="always prefers other cameras"):
        build_train_loader(
            recs, None, num_workers=0, sampler="published", prefer_other_cameras=False
        )
