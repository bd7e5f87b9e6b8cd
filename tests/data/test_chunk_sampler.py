"""IdentityChunkSampler, per-sample seeds and ``build_train_loader(identity_chunk=...)``.

What N processes load of one global batch must be the global batch: the chunks, in
order, give the wrapped sampler's batch, and every image's augmentation depends only on
its place in the global batch, not on N, the chunk or the loader workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metareid.data import (
    IdentityBalancedSampler,
    IdentityChunkSampler,
    ImageRecord,
    ReIDImageDataset,
    build_train_loader,
    build_train_transform,
    sample_seeds,
)

PIDS = [p for p in range(8) for _ in range(3)]
CAMS = [i % 2 for i in range(len(PIDS))]


def base(seed=(0, 1), **kw) -> IdentityBalancedSampler:
    return IdentityBalancedSampler(
        PIDS, CAMS, num_identities=4, num_instances=2, infinite=True, seed=seed, **kw
    )


def first_batches(sampler, count: int) -> list:
    it = iter(sampler)
    return [next(it) for _ in range(count)]


@pytest.mark.parametrize("num_chunks", [1, 2, 4])
def test_chunks_in_order_are_the_global_batch_with_the_same_seeds(num_chunks: int) -> None:
    expected = first_batches(base(), 5)
    parts = [
        first_batches(IdentityChunkSampler(base(), r, num_chunks), 5) for r in range(num_chunks)
    ]
    whole = first_batches(IdentityChunkSampler(base(), 0, 1), 5)
    for b in range(5):
        joined = [item for r in range(num_chunks) for item in parts[r][b]]
        assert [i for i, _ in joined] == expected[b]
        assert joined == whole[b]  # the seeds of a position do not depend on N
        # each chunk holds whole identities
        chunk_ids = [{PIDS[i] for i, _ in parts[r][b]} for r in range(num_chunks)]
        assert all(len(c) == 4 // num_chunks for c in chunk_ids)
        assert len(set().union(*chunk_ids)) == 4


def test_seeds_differ_across_positions_batches_epochs_and_domains() -> None:
    a = sample_seeds((0, 1, 0), 0, 0, 8)
    assert len(set(a)) == 8 and all(0 <= s < 2**63 for s in a)
    for other in (
        sample_seeds((0, 1, 0), 0, 1, 8),
        sample_seeds((0, 1, 0), 1, 0, 8),
        sample_seeds((0, 2, 0), 0, 0, 8),
    ):
        assert not set(a) & set(other)
    assert sample_seeds((0, 1, 0), 0, 0, 3) == a[:3]  # a prefix: independent of the count


def test_epochs_advance_like_the_wrapped_sampler() -> None:
    sampler = IdentityChunkSampler(base(), 1, 2)
    reference = base()
    for _ in range(2):  # two iter() calls: epochs 0 and 1
        got = [i for i, _ in next(iter(sampler))]
        assert got == next(iter(reference))[4:]
    sampler.set_epoch(0)
    reference.set_epoch(0)
    assert [i for i, _ in next(iter(sampler))] == next(iter(reference))[4:]
    assert len(sampler) == len(reference)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, 3), ValueError, "num_chunks=3 must divide the sampler's num_identities=4"),
        ((2, 2), ValueError, r"index must be a chunk in \[0, 2\), got 2"),
        ((-1, 2), ValueError, "index"),
        ((0, 0), ValueError, "num_chunks"),
    ],
)
def test_bad_chunks_are_refused(args, error, message) -> None:
    with pytest.raises(error, match=message):
        IdentityChunkSampler(base(), *args)


def test_only_identity_balanced_samplers_are_wrapped() -> None:
    with pytest.raises(TypeError, match="sampler must be an IdentityBalancedSampler, got list"):
        IdentityChunkSampler([[0, 1]], 0, 1)  # type: ignore[arg-type]


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    """8 identities x 3 noise images (so that flips and crops change pixels)."""
    rng = np.random.default_rng(0)
    out = []
    for i, (pid, cam) in enumerate(zip(PIDS, CAMS, strict=True)):
        path = tmp_path / f"{pid:04d}_c{cam + 1}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(path)
        out.append(ImageRecord(str(path), pid, cam, 0, pid))
    return out


def test_a_seeded_item_depends_on_the_seed_only_and_keeps_the_global_state(records) -> None:
    ds = ReIDImageDataset(records, build_train_transform((16, 8), random_erasing_prob=0.5))
    state = torch.get_rng_state()
    a, b = ds[(5, 123)]["img"], ds[(5, 123)]["img"]
    assert torch.equal(torch.get_rng_state(), state)  # fork_rng: the global stream untouched
    assert torch.equal(a, b)
    with torch.random.fork_rng(devices=[]):  # the documented meaning of the seed
        torch.manual_seed(123)
        assert torch.equal(a, ds.transform(Image.open(records[5].path).convert("RGB")))
    others = [ds[(5, s)]["img"] for s in range(8)]
    assert any(not torch.equal(a, o) for o in others)  # the seed matters
    assert ds[(5, 123)]["index"] == 5


def test_a_malformed_item_index_is_refused(records) -> None:
    ds = ReIDImageDataset(records)
    with pytest.raises(
        ValueError, match=r"index must be an int or \(index, seed\), got \(1, 2, 3\)"
    ):
        ds[(1, 2, 3)]  # type: ignore[index]


@pytest.mark.parametrize("workers", [0, 2])
def test_loaded_chunks_are_the_global_batch_pixel_for_pixel(records, workers: int) -> None:
    transform = build_train_transform((16, 8), random_erasing_prob=0.5)

    def batches(chunk, num_workers=0):
        loader = build_train_loader(
            records,
            transform,
            num_identities=4,
            num_instances=2,
            num_workers=num_workers,
            seed=(0, 0, 0),
            identity_chunk=chunk,
        )
        it = iter(loader)
        return [next(it) for _ in range(3)]

    whole = batches((0, 1))
    halves = [batches((r, 2), workers) for r in range(2)]
    for b in range(3):
        assert torch.equal(torch.cat([h[b]["img"] for h in halves]), whole[b]["img"])
        assert torch.equal(torch.cat([h[b]["pid"] for h in halves]), whole[b]["pid"])
    plain = build_train_loader(
        records, transform, num_identities=4, num_instances=2, num_workers=0, seed=(0, 0, 0)
    )
    assert torch.equal(next(iter(plain))["index"], whole[0]["index"])  # same sampler draws


def test_identity_chunk_must_be_a_pair(records) -> None:
    with pytest.raises(TypeError, match=r"identity_chunk must be a pair \(index, num_chunks\)"):
        build_train_loader(
            records, None, num_identities=4, num_instances=2, num_workers=0, identity_chunk=[0, 1]
        )  # type: ignore[arg-type]
