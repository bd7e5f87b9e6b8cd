"""Sharded feature extraction on 2 gloo ranks equals one-process extraction (tiny images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from metareid.data import ImageRecord, build_test_loader, build_test_transform
from metareid.distributed import MicroBatchRanks, extract_features_sharded, shard_range
from metareid.evaluation import extract_features

pytestmark = pytest.mark.distributed


def tiny_records(root: Path, count: int = 7) -> list[ImageRecord]:
    """``count`` tiny JPEGs in Market-1501 naming, distinct colours, 3 identities, 2 cameras."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        pid, cam = 1 + i % 3, i % 2
        path = root / f"{pid:04d}_c{cam + 1}s1_{i:06d}_01.jpg"
        if not path.exists():
            Image.new("RGB", (8, 16), (30 * i % 256, 90, 255 - 20 * i)).save(path)
        records.append(ImageRecord(str(path), pid, cam, 0, pid))
    return records


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
    )


def loader(records):
    return build_test_loader(records, build_test_transform((16, 8)), batch_size=2, num_workers=0)


def _evaluation(ctx, out, root):
    records = tiny_records(Path(root))
    model = tiny_model()
    for flip in (False, True):
        feats, pids, camids = extract_features_sharded(model, records, loader, flip=flip)
        ref = extract_features(model, loader(records), flip=flip)
        torch.testing.assert_close(feats, ref[0], rtol=1e-6, atol=1e-6)
        assert torch.equal(pids, ref[1]) and torch.equal(camids, ref[2])
        torch.save(feats, out / f"feats{ctx.rank}_{flip}.pt")
    with pytest.raises(ValueError, match=r"at least one item per rank \(2\), got 1"):
        extract_features_sharded(model, records[:1], loader)


def test_sharded_extraction_equals_one_process(run_ranks, tmp_path):
    tiny_records(tmp_path / "images")  # written once, read by both ranks
    out = run_ranks(_evaluation, root=str(tmp_path / "images"))
    for flip in (False, True):
        assert torch.equal(
            torch.load(out / f"feats0_{flip}.pt"), torch.load(out / f"feats1_{flip}.pt")
        )


def test_micro_batch_shards_and_shard_ranges(tmp_path):
    records = tiny_records(tmp_path)
    model = tiny_model()
    feats, pids, _ = extract_features_sharded(model, records, loader, MicroBatchRanks(3))
    ref = extract_features(model, loader(records))
    torch.testing.assert_close(feats, ref[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(pids, ref[1])
    assert [len(shard_range(7, 3, r)) for r in range(3)] == [3, 2, 2]
    assert [i for r in range(3) for i in shard_range(7, 3, r)] == list(range(7))
    assert list(shard_range(0, 2, 1)) == []
    with pytest.raises(ValueError, match=r"index must be a shard in \[0, 3\), got 3"):
        shard_range(7, 3, 3)
    with pytest.raises(TypeError, match="build_loader must be callable"):
        extract_features_sharded(model, records, 3)  # type: ignore[arg-type]
