"""Top-k search: the order of evaluate_rank, exactly, in chunks; the rankings files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from metareid.evaluation import compute_distance, evaluate_rank
from metareid.inference import names_to_ids, save_rankings, search_grid, topk_search


def _features(num_q=7, num_g=40, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    qf = torch.nn.functional.normalize(torch.randn(num_q, dim, generator=g), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(num_g, dim, generator=g), dim=1)
    gf[10] = gf[3]  # exact duplicates: ties that topk alone would order arbitrarily
    gf[25] = gf[3]
    gf[30:34] = qf[1]  # four entries tied at the top of query 1
    return qf, gf


def _stable_order(dist):
    return np.argsort(dist.numpy(), axis=1, kind="stable")


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 100])
@pytest.mark.parametrize("k", [1, 2, 5, 40, 100])
def test_topk_equals_a_stable_sort_of_the_evaluation_distances(chunk_size, k):
    qf, gf = _features()
    res = topk_search(qf, gf, topk=k, chunk_size=chunk_size)
    # the same chunks as the search (BLAS may round differently for other shapes)
    dist = compute_distance(qf, gf, chunk_size=chunk_size or 1024)
    order = _stable_order(dist)[:, :k]
    assert res.indices.tolist() == order.tolist()
    assert torch.equal(res.distances, torch.gather(dist, 1, res.indices))


def test_cosine_and_numpy_inputs():
    qf, gf = _features()
    res = topk_search(qf.numpy(), gf.numpy(), topk=6, metric="cosine")
    order = _stable_order(compute_distance(qf, gf, metric="cosine"))[:, :6]
    assert res.indices.tolist() == order.tolist()


def test_full_ranking_reproduces_evaluate_rank():
    """The CMC and mAP of the search lists (junk removed) equal evaluate_rank's."""
    qf, gf = _features(num_q=12, num_g=60, seed=1)
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 5, 12), rng.integers(0, 5, 60)
    q_cams, g_cams = rng.integers(0, 3, 12), rng.integers(0, 3, 60)
    ranked = topk_search(qf, gf, topk=60).indices.numpy()
    hits, aps = np.zeros(60), []
    for q in range(12):
        row = [g for g in ranked[q] if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        match = np.array([g_pids[g] == q_pids[q] for g in row])
        if not match.any():
            continue
        hits[int(np.argmax(match)) :] += 1
        positions = np.flatnonzero(match)
        aps.append(np.mean((np.arange(len(positions)) + 1) / (positions + 1)))
    ref = evaluate_rank(compute_distance(qf, gf), q_pids, g_pids, q_cams, g_cams, max_rank=60)
    assert ref.num_valid == len(aps)
    np.testing.assert_allclose(hits / len(aps), ref.cmc)
    assert ref.mAP == pytest.approx(float(np.mean(aps)), abs=1e-12)


def test_bad_search_inputs():
    qf, gf = _features()
    with pytest.raises(ValueError, match="topk must be an int >= 1"):
        topk_search(qf, gf, topk=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        topk_search(qf, gf, metric="manhattan")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        topk_search(qf, gf, chunk_size=0)
    bad = gf.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        topk_search(qf, bad)
    with pytest.raises(ValueError):
        topk_search(qf, gf[:, :3])


def test_rankings_files(tmp_path):
    q_names, g_names = ["q0.jpg", "q1.jpg"], [f"g{i}.jpg" for i in range(4)]
    idx, dist = torch.tensor([[2, 0], [1, 3]]), torch.tensor([[0.1, 0.5], [0.25, 2.0]])
    out = save_rankings(tmp_path / "r.csv", q_names, g_names, idx, dist)
    rows = list(csv.DictReader(out.open()))
    assert rows[0] == {
        "query": "q0.jpg",
        "rank": "1",
        "gallery": "g2.jpg",
        "distance": repr(0.1)[:3],
    } or (rows[0]["gallery"] == "g2.jpg" and float(rows[0]["distance"]) == pytest.approx(0.1))
    assert [r["gallery"] for r in rows] == ["g2.jpg", "g0.jpg", "g1.jpg", "g3.jpg"]
    data = json.loads(save_rankings(tmp_path / "r.json", q_names, g_names, idx, dist).read_text())
    assert data[1]["query"] == "q1.jpg" and data[1]["results"][1] == {
        "rank": 2,
        "gallery": "g3.jpg",
        "distance": 2.0,
    }
    with pytest.raises(ValueError, match="file_format must be"):
        save_rankings(tmp_path / "r.txt", q_names, g_names, idx, dist, file_format="xml")
    with pytest.raises(ValueError, match=r"shape \(Q, k\) with Q = 2"):
        save_rankings(tmp_path / "r2.csv", q_names, g_names, idx[:1], dist)
    assert not (tmp_path / "r2.csv").exists()


def test_names_to_ids():
    assert names_to_ids(["a/0003_c2_x.jpg", "0000_c6.png"])[1].tolist() == [1, 5]
    assert names_to_ids(["0003_c2.jpg", "frame.jpg"]) is None


@pytest.mark.parametrize("labelled", [True, False])
def test_search_grid(tmp_path, labelled):
    names = [f"{i % 3:04d}_c{1 + i % 2}_{i}.png" if labelled else f"crop{i}.png" for i in range(6)]
    files = []
    for i, name in enumerate(names):
        files.append(tmp_path / name)
        Image.new("RGB", (8, 16), (40 * i, 0, 0)).save(files[-1])
    feats = torch.eye(6)
    out = search_grid(
        feats[:2], feats, files[:2], files, tmp_path / "grid.png", topk=3, image_size=(16, 8)
    )
    image = Image.open(out)
    assert image.size[0] == 4 + 4 * (8 + 8 + 4) + 12
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    grey = (pixels == (150, 150, 150)).all(1).any()
    assert grey != labelled  # unlabelled grids use grey frames, labelled ones green/red
