"""Retrieval grid on a tiny fake set of solid-colour images: layout, ranking, colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metareid.viz import retrieval_grid

# Layout as documented: BORDER 4, LABEL_HEIGHT 14, PAD 4, SEPARATOR 12.
H, W = 32, 16
CELL_W, CELL_H = W + 8, H + 8
WHITE = (255, 255, 255)
BLUE, GREEN, RED = (30, 100, 220), (0, 170, 0), (220, 0, 0)

# gallery: (pid, camid)
G_PIDS = [1, 1, 2, 3, 2, 1, 5]
G_CAMS = [0, 1, 1, 0, 0, 2, 1]
# queries: q0 (pid 1, cam 0) and q1 (pid 2, cam 0) have matches; q2 (pid 5, cam 1) has
# only a same-camera gallery image of its id, so it is never drawn.
Q_PIDS = [1, 2, 5]
Q_CAMS = [0, 0, 1]
DIST = np.array(
    [
        # g0 is q0's junk (same id, same camera) and the closest; g1 and g5 tie.
        [0.0, 0.2, 0.5, 0.1, 0.6, 0.2, 0.9],
        # g4 is q1's junk and the closest.
        [0.4, 0.5, 0.3, 0.6, 0.0, 0.7, 0.1],
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
    ]
)
# expected ranking after removing the junk (ties by gallery index)
EXPECTED = {0: [3, 1, 5, 2, 4, 6], 1: [6, 2, 0, 1, 3, 5]}


def query_color(i: int) -> tuple[int, int, int]:
    return (200, 40 * i, 60)


def gallery_color(j: int) -> tuple[int, int, int]:
    return (20 + 30 * j, 120, 140)


@pytest.fixture
def fake_set(tmp_path):
    def make(size=(W, H)):
        folder = tmp_path / f"images_{size[0]}x{size[1]}"
        folder.mkdir(exist_ok=True)
        queries, gallery = [], []
        for i in range(len(Q_PIDS)):
            queries.append(folder / f"{Q_PIDS[i]:04d}_c{Q_CAMS[i]}_q{i}.jpg.png")
            Image.new("RGB", size, query_color(i)).save(queries[-1])
        for j in range(len(G_PIDS)):
            gallery.append(str(folder / f"{G_PIDS[j]:04d}_c{G_CAMS[j]}_g{j}.png"))
            Image.new("RGB", size, gallery_color(j)).save(gallery[-1])
        return queries, gallery

    return make


def draw(fake_set, tmp_path, name="grid.png", **kwargs):
    queries, gallery = fake_set()
    args = {
        "distmat": DIST,
        "query_paths": queries,
        "gallery_paths": gallery,
        "q_pids": Q_PIDS,
        "g_pids": G_PIDS,
        "q_camids": Q_CAMS,
        "g_camids": G_CAMS,
        "path": tmp_path / name,
        "image_size": (H, W),
    }
    args.update(kwargs)
    out = retrieval_grid(**args)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return out, np.asarray(image)


def origin(row: int, col: int) -> tuple[int, int]:
    return 4 + col * (CELL_W + 4) + (12 if col else 0), 4 + row * (CELL_H + 14 + 4)


def centre(pixels, row, col):
    x, y = origin(row, col)
    return tuple(pixels[y + 4 + H // 2, x + 4 + W // 2])


def frame(pixels, row, col):
    """Colours on the four sides of the cell's border (they must all agree)."""
    x, y = origin(row, col)
    sides = {
        tuple(pixels[y + 1, x + CELL_W // 2]),
        tuple(pixels[y + CELL_H - 2, x + CELL_W // 2]),
        tuple(pixels[y + CELL_H // 2, x + 1]),
        tuple(pixels[y + CELL_H // 2, x + CELL_W - 2]),
    }
    assert len(sides) == 1, sides
    return sides.pop()


def test_size_ranking_and_border_colours(fake_set, tmp_path):
    out, pixels = draw(fake_set, tmp_path, topk=4)
    assert out == tmp_path / "grid.png"
    # 2 valid queries; width 4 + 5 * 28 + 12, height 4 + 2 * 58
    assert pixels.shape == (4 + 2 * 58, 4 + 5 * 28 + 12, 3)
    for row, q in enumerate([0, 1]):
        assert centre(pixels, row, 0) == query_color(q)
        assert frame(pixels, row, 0) == BLUE
        for rank, g in enumerate(EXPECTED[q][:4], start=1):
            assert centre(pixels, row, rank) == gallery_color(g)
            expected = GREEN if G_PIDS[g] == Q_PIDS[q] else RED
            assert frame(pixels, row, rank) == expected, (q, rank, g)


def test_same_camera_same_id_images_are_never_shown(fake_set, tmp_path):
    _, pixels = draw(fake_set, tmp_path, topk=10)
    assert pixels.shape[1] == 4 + 8 * 28 + 12  # k = min(topk, G) = 7 gallery columns
    shown = {q: [centre(pixels, row, col) for col in range(1, 8)] for row, q in enumerate([0, 1])}
    assert gallery_color(0) not in shown[0]  # q0's junk
    assert gallery_color(4) not in shown[1]  # q1's junk
    for q in (0, 1):
        assert shown[q][:6] == [gallery_color(g) for g in EXPECTED[q]]
        assert shown[q][6] == WHITE  # only 6 valid gallery images: the last cell is empty
        x, y = origin(0 if q == 0 else 1, 7)
        assert (pixels[y : y + CELL_H + 14, x : x + CELL_W] == 255).all()


def test_labels_are_drawn_below_the_images(fake_set, tmp_path):
    _, pixels = draw(fake_set, tmp_path, topk=2)
    for col in range(3):
        x, y = origin(0, col)
        strip = pixels[y + CELL_H : y + CELL_H + 14, x : x + CELL_W]
        assert (strip < 128).any()  # dark text on the white strip
        assert (strip == 255).any()


def test_images_are_resized(fake_set, tmp_path):
    queries, gallery = fake_set(size=(40, 100))
    out = retrieval_grid(
        DIST, queries, gallery, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, tmp_path / "g.png", topk=3,
        image_size=(H, W),
    )  # fmt: skip
    with Image.open(out) as image:
        pixels = np.asarray(image)
    assert pixels.shape == (4 + 2 * 58, 4 + 4 * 28 + 12, 3)
    np.testing.assert_allclose(centre(pixels, 0, 1), gallery_color(3), atol=1)


def test_default_image_size(fake_set, tmp_path):
    _, pixels = draw(fake_set, tmp_path, topk=1, num_queries=1, image_size=(128, 64))
    assert pixels.shape == (4 + 128 + 8 + 14 + 4, 4 + 2 * (64 + 8 + 4) + 12, 3)


def test_query_selection_is_seeded_and_only_valid(fake_set, tmp_path):
    seen = set()
    for seed in range(8):
        _, a = draw(fake_set, tmp_path, name=f"a{seed}.png", num_queries=1, topk=2, seed=seed)
        _, b = draw(fake_set, tmp_path, name=f"b{seed}.png", num_queries=1, topk=2, seed=seed)
        np.testing.assert_array_equal(a, b)
        assert a.shape[0] == 4 + 58  # one row
        seen.add(centre(a, 0, 0))
    assert seen == {query_color(0), query_color(1)}


def test_torch_inputs_give_the_same_picture(fake_set, tmp_path):
    _, expected = draw(fake_set, tmp_path, name="np.png", topk=5)
    _, actual = draw(
        fake_set,
        tmp_path,
        name="torch.png",
        topk=5,
        distmat=torch.tensor(DIST, dtype=torch.float32),
        q_pids=torch.tensor(Q_PIDS),
        g_pids=torch.tensor(G_PIDS),
        q_camids=np.array(Q_CAMS, dtype=np.int32),
        g_camids=torch.tensor(G_CAMS, dtype=torch.int16),
    )
    np.testing.assert_array_equal(actual, expected)


def test_nan_in_an_undrawn_row_is_ignored(fake_set, tmp_path):
    dist = DIST.copy()
    dist[2] = np.nan  # q2 is never drawn
    draw(fake_set, tmp_path, distmat=dist)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"distmat": DIST.tolist()}, TypeError, "distmat must be a 2-D"),
        ({"distmat": DIST[0]}, ValueError, "distmat must be a 2-D"),
        ({"distmat": DIST.astype(bool)}, TypeError, "distmat must be"),
        ({"distmat": DIST[:2]}, ValueError, r"query_paths must hold 2 paths \(= distmat.shape"),
        ({"gallery_paths": "gallery"}, TypeError, "gallery_paths must be a sequence"),
        ({"gallery_paths": [1] * 7}, TypeError, r"gallery_paths\[0\] must be a str"),
        ({"q_pids": [1, 2]}, ValueError, r"q_pids must have shape \(3,\)"),
        ({"g_pids": [1.0] * 7}, TypeError, "g_pids must be a 1-D integer"),
        ({"q_camids": [[0, 0, 1]]}, ValueError, r"q_camids must have shape \(3,\)"),
        ({"g_camids": [0] * 6}, ValueError, r"g_camids must have shape \(7,\)"),
        ({"num_queries": 0}, ValueError, "num_queries must be an int >= 1"),
        ({"topk": 2.0}, TypeError, "topk must be an int"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
        ({"image_size": (0, 16)}, ValueError, "image_size must be >= 1"),
        ({"image_size": (32,)}, TypeError, "image_size must be a pair"),
        ({"path": None}, TypeError, "path must be"),
        ({"g_camids": [0, 0, 0, 0, 0, 0, 1]}, ValueError, "no query has a gallery image"),
        ({"distmat": np.where(np.eye(3, 7) > 0, np.nan, DIST)}, ValueError, "in row 0"),
    ],
)
def test_bad_arguments_raise(fake_set, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        draw(fake_set, tmp_path, **kwargs)
    assert not (tmp_path / "grid.png").exists()


def test_missing_image_file_raises(fake_set, tmp_path):
    queries, gallery = fake_set()
    gallery[3] = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError):
        retrieval_grid(DIST, queries, gallery, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, tmp_path / "g.png")
