"""split_batch_by_identity on the sampler's layout, and its errors (one process)."""

from __future__ import annotations

import pytest
import torch

from metareid.data import IdentityBalancedSampler
from metareid.distributed import (
    MicroBatchRanks,
    ProcessRanks,
    identity_chunk,
    local_chunks,
    split_batch_by_identity,
)

pytestmark = pytest.mark.distributed


def sampler_batch(num_identities: int = 4, num_instances: int = 3) -> dict:
    """A batch laid out as IdentityBalancedSampler draws it, with every kind of value."""
    pids = [i // 5 for i in range(40)]  # 8 identities, 5 images each
    cams = [i % 2 for i in range(40)]
    sampler = IdentityBalancedSampler(pids, cams, num_identities, num_instances, seed=3)
    indices = next(iter(sampler))
    return {
        "img": torch.arange(len(indices) * 2.0).view(len(indices), 2),
        "pid": torch.tensor([pids[i] for i in indices]),
        "camid": torch.tensor([cams[i] for i in indices]),
        "index": torch.tensor(indices),
        "path": [f"{i}.jpg" for i in indices],
        "domain": 1,
    }


@pytest.mark.parametrize("num_chunks", [1, 2, 4])
def test_chunks_are_whole_identities_in_batch_order(num_chunks):
    batch = sampler_batch()
    chunks = split_batch_by_identity(batch, num_chunks)
    assert len(chunks) == num_chunks
    per_chunk = 4 // num_chunks
    batch_order = list(dict.fromkeys(batch["pid"].tolist()))
    for r, chunk in enumerate(chunks):
        assert set(chunk) == set(batch)
        assert (
            list(dict.fromkeys(chunk["pid"].tolist()))
            == batch_order[r * per_chunk : (r + 1) * per_chunk]
        )
        assert chunk["img"].shape == (per_chunk * 3, 2) and len(chunk["path"]) == per_chunk * 3
        assert chunk["domain"] == 1
        alone = identity_chunk(batch, num_chunks, r)
        assert all(torch.equal(chunk[k], alone[k]) for k in ("img", "pid", "camid", "index"))
        assert alone["path"] == chunk["path"]
    for key in ("img", "pid", "camid", "index"):
        assert torch.equal(torch.cat([c[key] for c in chunks]), batch[key])
    assert [p for c in chunks for p in c["path"]] == batch["path"]


def test_local_chunks_follow_the_group():
    batch = sampler_batch()
    (whole,) = local_chunks(batch)  # no process group: one rank, the whole batch
    assert torch.equal(whole["pid"], batch["pid"])
    assert len(local_chunks(batch, ProcessRanks())) == 1
    chunks = local_chunks(batch, MicroBatchRanks(2))
    assert [c["pid"].tolist() for c in chunks] == [
        c["pid"].tolist() for c in split_batch_by_identity(batch, 2)
    ]
    with pytest.raises(TypeError, match="ranks must be a RankGroup"):
        local_chunks(batch, 2)  # type: ignore[arg-type]


def test_uneven_identities_give_uneven_chunks():
    batch = {"pid": torch.tensor([1, 1, 1, 2, 3, 3, 4])}
    assert [c["pid"].tolist() for c in split_batch_by_identity(batch, 2)] == [
        [1, 1, 1, 2],
        [3, 3, 4],
    ]


def test_errors_name_the_problem_and_change_nothing():
    batch = sampler_batch()
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with pytest.raises(
        ValueError, match=r"num_chunks=3 must divide the number of identities of the batch \(P=4\)"
    ):
        split_batch_by_identity(batch, 3)
    with pytest.raises(ValueError, match=r"ids \[1\] appear in several runs"):
        split_batch_by_identity({"pid": torch.tensor([1, 1, 2, 2, 1, 1, 3, 3])}, 2)
    with pytest.raises(
        ValueError, match=r"batch\['camid'\] must have 4 rows like batch's ids, got shape \(3,\)"
    ):
        split_batch_by_identity({"pid": torch.tensor([1, 1, 2, 2]), "camid": torch.zeros(3)}, 2)
    with pytest.raises(
        ValueError, match=r"batch\['path'\] must have 4 entries like batch's ids, got 1"
    ):
        split_batch_by_identity({"pid": torch.tensor([1, 1, 2, 2]), "path": ["a"]}, 2)
    with pytest.raises(ValueError, match="batch has no key 'pid'"):
        split_batch_by_identity({"img": torch.zeros(2)}, 1)
    with pytest.raises(ValueError, match="one integer id per sample"):
        split_batch_by_identity({"pid": torch.zeros(4)}, 1)
    with pytest.raises(ValueError, match="at least one sample"):
        split_batch_by_identity({"pid": torch.zeros(0, dtype=torch.long)}, 1)
    with pytest.raises(TypeError, match="batch must be a mapping"):
        split_batch_by_identity([1, 2], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_chunks must be an int >= 1"):
        split_batch_by_identity(batch, 0)
    with pytest.raises(ValueError, match=r"index must be a chunk in \[0, 2\), got 2"):
        identity_chunk(batch, 2, 2)
    for key, value in before.items():
        assert (
            torch.equal(batch[key], value)
            if isinstance(value, torch.Tensor)
            else batch[key] == value
        )
