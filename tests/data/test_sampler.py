"""Invariants of the identity-balanced sampler."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from metareid.data import IdentityBalancedSampler, ImageRecord


def toy_data(seed: int = 0, num_ids: int = 12) -> tuple[list[int], list[int]]:
    """Ids with 1 to 9 images over 1 to 3 cameras, shuffled."""
    rng = np.random.default_rng(seed)
    pids, cams = [], []
    for pid in range(num_ids):
        count = 1 + pid % 9
        num_cams = 1 + pid % 3
        pids += [pid] * count
        cams += [int(c) for c in rng.integers(0, num_cams, size=count)]
    order = rng.permutation(len(pids))
    return [pids[i] for i in order], [cams[i] for i in order]


def groups(batch: list[int], k: int) -> list[list[int]]:
    return [batch[i : i + k] for i in range(0, len(batch), k)]


@pytest.mark.parametrize(("p", "k"), [(4, 4), (3, 2), (12, 1), (2, 5)])
def test_batches_are_p_identities_times_k(p: int, k: int) -> None:
    pids, cams = toy_data()
    sampler = IdentityBalancedSampler(pids, cams, num_identities=p, num_instances=k, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12 // p
    seen = []
    for batch in batches:
        assert len(batch) == p * k
        group_pids = [{pids[i] for i in g} for g in groups(batch, k)]
        assert all(len(g) == 1 for g in group_pids)  # K consecutive images of one identity
        ids = [g.pop() for g in group_pids]
        assert len(set(ids)) == p  # P distinct identities
        assert Counter(pids[i] for i in batch) == dict.fromkeys(ids, k)
        seen += ids
    assert len(set(seen)) == len(seen)  # a pass visits each identity at most once


def test_replacement_only_when_an_identity_has_fewer_than_k_images() -> None:
    pids, cams = toy_data()
    k = 4
    sampler = IdentityBalancedSampler(pids, cams, num_identities=4, num_instances=k, infinite=True)
    count = Counter(pids)
    for batch in itertools.islice(sampler, 30):
        for g in groups(batch, k):
            pid = pids[g[0]]
            if count[pid] >= k:
                assert len(set(g)) == k
            else:  # all its images, some twice
                assert set(g) == {i for i, p in enumerate(pids) if p == pid}


def test_partners_come_from_other_cameras_first() -> None:
    pids, cams = toy_data(seed=3)
    k = 4
    sampler = IdentityBalancedSampler(pids, cams, num_identities=4, num_instances=k, infinite=True)
    checked = 0
    for batch in itertools.islice(sampler, 40):
        for g in groups(batch, k):
            anchor, partners = g[0], g[1:]
            pid, cam = pids[anchor], cams[anchor]
            cross = {i for i, (p, c) in enumerate(zip(pids, cams)) if p == pid and c != cam}
            if len(cross) >= k - 1:
                assert all(cams[i] != cam for i in partners)
                checked += 1
            else:  # every other-camera image is used before any same-camera one
                assert cross <= set(partners)
    assert checked > 0


def test_without_camera_preference_same_camera_partners_happen() -> None:
    pids = [p for p in range(4) for _ in range(20)]
    cams = [i % 2 for i in range(80)]
    sampler = IdentityBalancedSampler(
        pids, cams, num_identities=4, num_instances=4, prefer_other_cameras=False, infinite=True
    )
    same = 0
    for batch in itertools.islice(sampler, 20):
        for g in groups(batch, 4):
            same += sum(cams[i] == cams[g[0]] for i in g[1:])
    assert same > 0
    preferring = IdentityBalancedSampler(pids, cams, num_identities=4, num_instances=4)
    for batch in preferring:
        for g in groups(batch, 4):
            assert all(cams[i] != cams[g[0]] for i in g[1:])


def test_deterministic_given_seed_and_epoch() -> None:
    pids, cams = toy_data()

    def run(seed: int) -> list[list[int]]:
        sampler = IdentityBalancedSampler(pids, cams, num_identities=3, num_instances=4, seed=seed)
        return list(sampler) + list(sampler)  # two epochs

    assert run(5) == run(5)
    assert run(5) != run(6)
    first = run(5)
    assert first[:4] != first[4:]  # the second epoch reshuffles
    sampler = IdentityBalancedSampler(pids, cams, num_identities=3, num_instances=4, seed=5)
    sampler.set_epoch(1)
    assert list(sampler) == first[4:]


def test_infinite_keeps_going() -> None:
    pids, cams = toy_data()
    sampler = IdentityBalancedSampler(pids, cams, num_identities=5, num_instances=2, infinite=True)
    batches = list(itertools.islice(sampler, 7))
    assert len(sampler) == 2 and len(batches) == 7


def test_from_records() -> None:
    records = [ImageRecord(f"{i}.jpg", i // 3, i % 3, 0, i // 3) for i in range(12)]
    sampler = IdentityBalancedSampler.from_records(records, num_identities=2, num_instances=3)
    batch = next(iter(sampler))
    for g in groups(batch, 3):
        assert len({records[i].camid for i in g}) == 3


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"num_identities=16 .* only 3 identities"):
        IdentityBalancedSampler([0, 1, 2], [0, 0, 0])
    with pytest.raises(ValueError, match="pids must be >= 0"):
        IdentityBalancedSampler([0, -1], num_identities=1)
    with pytest.raises(ValueError, match="camids must have one entry per item"):
        IdentityBalancedSampler([0, 1], [0], num_identities=1)
    with pytest.raises(ValueError, match="num_instances"):
        IdentityBalancedSampler([0, 1], num_identities=1, num_instances=0)
    with pytest.raises(TypeError, match="num_identities"):
        IdentityBalancedSampler([0, 1], num_identities=1.5)  # type: ignore[arg-type]
