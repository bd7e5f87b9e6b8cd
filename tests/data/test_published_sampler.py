"""PublishedIdentitySampler against a transcription of the published M3L sampling rules.

The rules are those of ``RandomMultipleGallerySampler`` in the authors' repository
HeliosZhao/M3L, ``reid/utils/data/sampler.py`` (``sampler.py:LINE`` below), cut into
batches by ``DataLoader(..., drop_last=True)`` in ``main.py:60-63``.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pytest

import metareid.data
from metareid.data import (
    IdentityBalancedSampler,
    IdentityChunkSampler,
    ImageRecord,
    PublishedIdentitySampler,
    sample_seeds,
)

K = 4
# The cameras of each identity's images (identity i is CASES[i]), one per case of the rule
# with K = 4 (what the published rule does, by anchor camera):
CASES = [
    [0, 1, 1, 1],  # anchor cam 0: exactly K-1 other-camera images, WITH replacement
    [0, 1, 1, 1, 1],  # anchor cam 0: K other-camera images, without; cam 1: 1, with
    [0, 1, 2, 0, 1, 2, 0, 1],  # at least K other-camera images from any anchor, without
    [0, 0, 0, 0, 0],  # one camera, K other images, without
    [0, 0, 0, 0],  # one camera, K-1 other images, with
    [2, 2],  # one camera, one other image, with
    [0, 1],  # one other-camera image, with
    [3],  # a single image: the anchor alone
]


def published_rule(cameras: Sequence[int], anchor: int, k: int) -> tuple[list[int], bool]:
    """Candidate partners of the published rule and whether they are drawn with replacement.

    For one identity whose images have ``cameras``, the anchor being image ``anchor``;
    positions index the identity's images. An empty pool: the anchor comes alone.
    """
    # sampler.py:80: select_cams = No_index(cams, i_cam), the images whose camera differs
    # from the anchor's (which excludes the anchor itself).
    select_cams = [j for j, cam in enumerate(cameras) if cam != cameras[anchor]]
    if select_cams:  # sampler.py:82
        # sampler.py:84-87: without replacement only if len(select_cams) >= num_instances.
        return select_cams, not len(select_cams) >= k
    # sampler.py:93: select_indexes = No_index(index, i), every image but the anchor.
    select_indexes = [j for j in range(len(cameras)) if j != anchor]
    # sampler.py:94: none (a single image): `continue`, the anchor alone.
    # sampler.py:95-98: the same threshold, K (not K-1).
    return select_indexes, not len(select_indexes) >= k


def case_data(seed: int = 0) -> tuple[list[int], list[int]]:
    """The CASES as a dataset, in a shuffled order."""
    pids = [pid for pid, cams in enumerate(CASES) for _ in cams]
    cams = [cam for cams in CASES for cam in cams]
    order = np.random.default_rng(seed).permutation(len(pids))
    return [pids[i] for i in order], [cams[i] for i in order]


def random_data(seed: int, num_ids: int = 12) -> tuple[list[int], list[int]]:
    """Ids with 1 to 9 images over 1 to 3 cameras, shuffled."""
    rng = np.random.default_rng(seed)
    pids, cams = [], []
    for pid in range(num_ids):
        count = 1 + int(rng.integers(9))
        pids += [pid] * count
        cams += [int(c) for c in rng.integers(0, 1 + pid % 3, size=count)]
    order = rng.permutation(len(pids))
    return [pids[i] for i in order], [cams[i] for i in order]


def runs(pids: Sequence[int], stream: Sequence[int]) -> list[list[int]]:
    """Split a stream into its identity groups (an identity comes once per pass)."""
    out: list[list[int]] = []
    for i in stream:
        if out and pids[out[-1][0]] == pids[i]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def expected_length(pids: Sequence[int], k: int) -> int:
    """Stream length of a pass: K per identity with >= 2 images, 1 per single-image one."""
    return sum(k if n >= 2 else 1 for n in Counter(pids).values())


def check_groups(pids, cams, groups, k, stats) -> None:
    """Check complete identity groups against ``published_rule``; tally into ``stats``."""
    members = defaultdict(list)
    for index, pid in enumerate(pids):
        members[pid].append(index)
    for group in groups:
        pid = pids[group[0]]
        own = members[pid]
        anchor = own.index(group[0])
        partners = [own.index(i) for i in group[1:]]
        assert all(pids[i] == pid for i in group)
        pool, with_replacement = published_rule([cams[i] for i in own], anchor, k)
        assert len(group) == (k if pool else 1)
        assert set(partners) <= set(pool)
        repeated = len(set(partners)) < len(partners)
        if not with_replacement:
            assert not repeated
        stats[pid, cams[group[0]], with_replacement].append(repeated)
        stats["anchors", pid].append(anchor)


def check_pass(sampler, pids, cams, batches, stats) -> list[list[int]]:
    """Check the batches of one pass; return its identity groups."""
    k, size = sampler.num_instances, sampler.num_identities * sampler.num_instances
    assert len(batches) == len(sampler) == sampler.pass_length // size
    assert all(len(b) == size for b in batches)
    stream = [i for b in batches for i in b]
    groups = runs(pids, stream)
    assert len({pids[g[0]] for g in groups}) == len(groups)  # each identity once per pass
    complete = groups if len(stream) == sampler.pass_length else groups[:-1]
    check_groups(pids, cams, complete, k, stats)
    return groups


def test_the_transcribed_rule() -> None:
    assert published_rule([0, 1, 1, 1], 0, 4) == ([1, 2, 3], True)  # K-1 is not enough
    assert published_rule([0, 1, 1, 1, 1], 0, 4) == ([1, 2, 3, 4], False)
    assert published_rule([0, 1, 1, 1, 1], 2, 4) == ([0], True)
    assert published_rule([0, 0, 0, 0, 0], 1, 4) == ([0, 2, 3, 4], False)
    assert published_rule([0, 0, 0, 0], 3, 4) == ([0, 1, 2], True)
    assert published_rule([5], 0, 4) == ([], True)


def test_partners_follow_the_published_rule_over_many_seeds() -> None:
    pids, cams = case_data()
    stats: dict = defaultdict(list)
    for seed in range(300):
        sampler = PublishedIdentitySampler(pids, cams, num_identities=2, num_instances=K, seed=seed)
        check_pass(sampler, pids, cams, list(sampler), stats)
    # With replacement repeats partners sometimes: identity 0 anchored on camera 0 has
    # exactly K-1 = 3 images from other cameras, drawn with replacement (P(no repeat) = 2/9).
    assert 0 < sum(stats[0, 0, True]) < len(stats[0, 0, True])
    # Every pool drawn with replacement here holds at most K-1 = 3 images.
    for key, repeats in stats.items():
        if key[0] != "anchors" and key[2] and len(CASES[key[0]]) > 1:
            assert any(repeats), key
    # Every image can be the anchor.
    for pid, cameras in enumerate(CASES):
        assert set(stats["anchors", pid]) == set(range(len(cameras)))


def test_metareid_rule_differs_with_k_minus_one_other_camera_images() -> None:
    """Where the published rule draws with replacement, IdentityBalancedSampler does not."""
    pids, cams = case_data()
    checked = 0
    for seed in range(100):
        sampler = IdentityBalancedSampler(pids, cams, num_identities=2, num_instances=K, seed=seed)
        for batch in sampler:
            for group in (batch[i : i + K] for i in range(0, len(batch), K)):
                if pids[group[0]] == 0 and cams[group[0]] == 0:
                    assert len(set(group)) == K and all(cams[i] == 1 for i in group[1:])
                    checked += 1
    assert checked > 0


@pytest.mark.parametrize("data_seed", range(4))
@pytest.mark.parametrize(("p", "k"), [(3, 4), (2, 2), (4, 3)])
def test_random_data_follows_the_published_rule(data_seed: int, p: int, k: int) -> None:
    pids, cams = random_data(data_seed)
    stats: dict = defaultdict(list)
    sampler = PublishedIdentitySampler(pids, cams, num_identities=p, num_instances=k, seed=7)
    assert sampler.pass_length == expected_length(pids, k)
    for _ in range(20):  # 20 epochs
        check_pass(sampler, pids, cams, list(sampler), stats)


@pytest.mark.parametrize(("p", "k"), [(4, 4), (3, 2), (12, 1), (2, 5)])
def test_without_single_image_identities_batches_are_p_times_k(p: int, k: int) -> None:
    pids = [pid for pid in range(12) for _ in range(2 + pid % 5)]
    cams = [i % 3 for i in range(len(pids))]
    sampler = PublishedIdentitySampler(pids, cams, num_identities=p, num_instances=k, seed=3)
    balanced = IdentityBalancedSampler(pids, cams, num_identities=p, num_instances=k)
    assert sampler.num_single_image_identities == 0
    assert sampler.pass_length == 12 * k
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(balanced) == 12 // p
    seen = []
    for batch in batches:
        groups = [batch[i : i + k] for i in range(0, len(batch), k)]
        ids = [pids[g[0]] for g in groups]
        assert all(pids[i] == pid for g, pid in zip(groups, ids) for i in g)
        assert len(set(ids)) == p
        seen += ids
    assert len(set(seen)) == len(seen)


def test_a_single_image_identity_misaligns_the_stream() -> None:
    # Identity 0 has one image, identities 1-5 three each: a pass is 1 + 5 * 2 = 11
    # indices, 2 batches of 4 and 3 indices dropped.
    pids = [0] + [pid for pid in range(1, 6) for _ in range(3)]
    cams = [0] + [i % 2 for i in range(15)]
    split = wide = 0
    for seed in range(100):
        sampler = PublishedIdentitySampler(pids, cams, num_identities=2, num_instances=2, seed=seed)
        assert sampler.num_single_image_identities == 1
        assert sampler.pass_length == 11 and len(sampler) == 2
        batches = list(sampler)
        groups = check_pass(sampler, pids, cams, batches, defaultdict(list))
        for group in groups:
            if pids[group[0]] == 0:
                assert group == [0]  # the single image, once
        # the stream is cut every 4 indices, whatever the identities: not realigned to K
        assert [len(g) for g in groups[:-1]] == [1 if pids[g[0]] == 0 else 2 for g in groups[:-1]]
        split += pids[batches[0][-1]] == pids[batches[1][0]]  # an identity across batches
        wide += max(len({pids[i] for i in b}) for b in batches) > 2  # more than P identities
    assert split > 0 and wide > 0


def test_len_is_the_full_batches_of_one_pass() -> None:
    # 3 identities with 2+ images and 3 single-image ones, K = 3: 3 * 3 + 3 = 12 indices.
    pids = [0, 0, 1, 1, 1, 2, 2, 3, 4, 5]
    for p, expected in [(1, 4), (2, 2), (3, 1)]:
        sampler = PublishedIdentitySampler(pids, num_identities=p, num_instances=3, infinite=True)
        assert sampler.pass_length == 12 and len(sampler) == expected
        sampler.infinite = False
        assert len(list(sampler)) == expected
    sampler = PublishedIdentitySampler(pids, num_identities=2, num_instances=4)  # 3*4+3 = 15
    assert (sampler.pass_length, len(sampler)) == (15, 1)


def test_deterministic_given_seed_and_epoch() -> None:
    pids, cams = case_data()

    def run(seed: int) -> list[list[int]]:
        sampler = PublishedIdentitySampler(pids, cams, num_identities=2, num_instances=K, seed=seed)
        return list(sampler) + list(sampler)  # two epochs, 3 batches each

    assert run(5) == run(5)
    assert run(5) != run(6)
    first = run(5)
    assert first[:3] != first[3:]  # the second epoch reshuffles
    sampler = PublishedIdentitySampler(pids, cams, num_identities=2, num_instances=K, seed=5)
    assert sampler.epoch == 0
    sampler.set_epoch(1)
    assert list(sampler) == first[3:]
    assert sampler.epoch == 2
    tupled = PublishedIdentitySampler(pids, cams, num_identities=2, num_instances=K, seed=(5,))
    assert list(tupled) == first[:3]


def test_infinite_starts_every_pass_afresh() -> None:
    pids = [0] + [pid for pid in range(1, 6) for _ in range(3)]  # passes of 11, batches of 4
    cams = [0] + [i % 2 for i in range(15)]
    reshuffled = 0
    for seed in range(30):
        finite = PublishedIdentitySampler(pids, cams, num_identities=2, num_instances=2, seed=seed)
        sampler = PublishedIdentitySampler(
            pids, cams, num_identities=2, num_instances=2, infinite=True, seed=seed
        )
        batches = list(itertools.islice(sampler, 3 * len(sampler)))
        assert len(batches) == 6 and batches[:2] == list(finite)
        orders = []
        for n in range(3):  # each pass: its own identity groups, the remainder dropped
            groups = check_pass(sampler, pids, cams, batches[2 * n : 2 * n + 2], defaultdict(list))
            orders.append([pids[g[0]] for g in groups])
        reshuffled += orders[0] != orders[1]
    assert reshuffled > 0
    assert sampler.epoch == 1  # one iter(), however many passes


def test_from_records_and_export() -> None:
    records = [ImageRecord(f"{i:02d}.jpg", i // 4, i % 4, 0, i // 4) for i in range(12)]
    sampler = PublishedIdentitySampler.from_records(records, num_identities=3, num_instances=4)
    assert isinstance(sampler, PublishedIdentitySampler) and sampler.prefer_other_cameras
    assert "PublishedIdentitySampler" in metareid.data.__all__
    batch = next(iter(sampler))
    for group in (batch[i : i + 4] for i in range(0, 12, 4)):
        anchor = records[group[0]]
        # 3 = K-1 images from other cameras: drawn from them, with replacement
        assert all(records[i].camid != anchor.camid for i in group[1:])
        assert all(records[i].pid == anchor.pid for i in group)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (([0, 1, 2], [0, 0, 0]), {}, ValueError, r"num_identities=16 .* only 3 identities"),
        (([0, -1],), {"num_identities": 1}, ValueError, "pids must be >= 0"),
        (([0, 1], [0]), {"num_identities": 1}, ValueError, "camids must have one entry per item"),
        (([0, 1],), {"num_identities": 1, "num_instances": 0}, ValueError, "num_instances"),
        (([0, 1],), {"num_identities": 1.5}, TypeError, "num_identities"),
        (
            ([0, 1, 1, 2],),
            {"num_identities": 2, "num_instances": 3},
            ValueError,
            r"num_identities=2 x num_instances=3 = 6 indices per batch, but a pass over the "
            r"data gives only 5 \(the 2 identities with a single image",
        ),
        (
            ([0, 0, 1, 1],),
            {"num_identities": 2, "prefer_other_cameras": False},
            TypeError,
            "prefer",
        ),
    ],
)
def test_errors(args, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        PublishedIdentitySampler(*args, **kwargs)


def test_chunks_refuse_single_image_identities() -> None:
    sampler = PublishedIdentitySampler([0, 0, 1, 2, 3, 3], num_identities=2, num_instances=2)
    with pytest.raises(
        ValueError,
        match=r"PublishedIdentitySampler whose data has 2 identities with a single image.*"
        r"use IdentityBalancedSampler",
    ):
        IdentityChunkSampler(sampler, 0, 2)
    assert sampler.epoch == 0  # untouched


@pytest.mark.parametrize("num_chunks", [1, 2, 4])
def test_chunks_of_a_published_sampler_are_its_batches(num_chunks: int) -> None:
    pids = [p for p in range(8) for _ in range(3)]
    cams = [i % 2 for i in range(len(pids))]

    def make() -> PublishedIdentitySampler:
        return PublishedIdentitySampler(
            pids, cams, num_identities=4, num_instances=2, infinite=True, seed=(0, 1)
        )

    expected = list(itertools.islice(make(), 5))
    parts = [
        list(itertools.islice(IdentityChunkSampler(make(), r, num_chunks), 5))
        for r in range(num_chunks)
    ]
    assert len(IdentityChunkSampler(make(), 0, num_chunks)) == len(make()) == 2
    for b in range(5):
        joined = [item for r in range(num_chunks) for item in parts[r][b]]
        assert [i for i, _ in joined] == expected[b]
        assert [s for _, s in joined] == sample_seeds((0, 1), 0, b, 8)
        chunk_ids = [{pids[i] for i, _ in parts[r][b]} for r in range(num_chunks)]
        assert all(len(c) == 4 // num_chunks for c in chunk_ids)
