"""Tiny fake dataset trees in the real layouts, with the real file names.

Each builder writes one dataset under its root (``<data-dir>/<name>``) and returns the
counts it wrote, so tests can check parsers against the structure of the release scaled
down (e.g. PRID's "half of the paired ids train, the other half query, gallery = their
cam_b images + the cam_b-only ids"). ``images=False`` writes empty files (enough where
nothing is decoded); ``images=True`` writes 16 x 8 images for end-to-end runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def put(path: Path, images: bool = False, seed: int = 0) -> None:
    """One file: empty, or a small random image in the format of its extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not images:
        path.touch()
        return
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, size=(16, 8, 3), dtype=np.uint8)
    fmt = {".png": "PNG", ".bmp": "BMP"}.get(path.suffix, "JPEG")
    Image.fromarray(array).save(path, format=fmt)


def market1501(
    root: Path,
    train_ids: tuple[int, ...] = (2, 7, 9),
    test_ids: tuple[int, ...] = (11, 12),
    distractors: int = 2,
    junk: int = 1,
    images: bool = False,
    folder: str = "Market-1501-v15.09.15",
) -> dict[str, tuple[int, int]]:
    """Market-1501: 2 images per train id per camera 1-2; test ids query c1, gallery c2-c3."""
    base = root / folder if folder else root
    n = 0

    def name(pid: int, cam: int, i: int) -> str:
        return f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{i:06d}_00.jpg"

    for pid in train_ids:
        for cam in (1, 2):
            for _ in range(2):
                n += 1
                put(base / "bounding_box_train" / name(pid, cam, n), images, n)
    for pid in test_ids:
        n += 1
        put(base / "query" / name(pid, 1, n), images, n)
        for cam in (2, 3):
            n += 1
            put(base / "bounding_box_test" / name(pid, cam, n), images, n)
    for k in range(distractors):
        put(base / "bounding_box_test" / name(0, 4, 900 + k), images, 900 + k)
    for k in range(junk):
        put(base / "bounding_box_test" / name(-1, 5, 950 + k), images, 950 + k)
    t = len(test_ids)
    return {
        "train": (len(train_ids), 4 * len(train_ids)),
        "query": (t, t),
        "gallery": (t + (distractors > 0), 2 * t + distractors),
    }


def dukemtmc(root: Path, folder: str = "DukeMTMC-reID", images: bool = False) -> None:
    """DukeMTMC-reID: 2 train ids, 2 test ids (cameras 1-8)."""
    base = root / folder if folder else root
    for split, names in (
        (
            "bounding_box_train",
            ["0005_c2_f0046985.jpg", "0005_c5_f0046990.jpg", "0012_c8_f0000001.jpg"],
        ),
        ("query", ["0020_c1_f0000100.jpg", "0021_c3_f0000200.jpg"]),
        ("bounding_box_test", ["0020_c4_f0000300.jpg", "0021_c6_f0000400.jpg"]),
    ):
        for k, n in enumerate(names):
            put(base / split / n, images, k)


def cuhk03np(
    root: Path,
    subset: str = "detected",
    train_ids: tuple[int, ...] = (1, 2, 4),
    test_ids: tuple[int, ...] = (5, 6),
    images: bool = False,
) -> None:
    """CUHK03-NP: per train id 2 images per camera; test ids query c1, gallery c2 (2 images)."""
    base = root / subset
    n = 0
    for pid in train_ids:
        for cam in (1, 2):
            for i in range(1, 3):
                n += 1
                put(base / "bounding_box_train" / f"{pid:04d}_c{cam}_{i}.png", images, n)
    for pid in test_ids:
        n += 1
        put(base / "query" / f"{pid:04d}_c1_1.png", images, n)
        for i in range(1, 3):
            n += 1
            put(base / "bounding_box_test" / f"{pid:04d}_c2_{i}.png", images, n)


def msmt17(
    root: Path,
    version: str = "V2",
    train_ids: tuple[int, ...] = (0, 1),
    test_ids: tuple[int, ...] = (0, 2),
    val: bool = True,
    images: bool = False,
) -> Path:
    """MSMT17 release layout; train and test ids both start at 0, as in the lists."""
    folder, train_dir, test_dir = {
        "V1": ("MSMT17_V1", "train", "test"),
        "V2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    }[version]
    base = root / folder
    lines: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    k = 0
    for split, pids, cams, image_dir in (
        ("train", train_ids, (1, 5), train_dir),
        ("val", train_ids[:1], (9,), train_dir),
        ("query", test_ids, (2,), test_dir),
        ("gallery", test_ids, (7, 15), test_dir),
    ):
        for pid in pids:
            for cam in cams:
                k += 1
                rel = f"{pid:04d}/{pid:04d}_{k:03d}_{cam:02d}_0303morning_{k:04d}_0.jpg"
                put(base / image_dir / rel, images, k)
                lines[split].append(f"{rel} {pid}")
    for split, ls in lines.items():
        if split == "val" and not val:
            continue
        (base / f"list_{split}.txt").write_text("".join(line + "\n" for line in ls))
    return base


def cuhk02(
    root: Path,
    ids_per_pair: tuple[int, ...] = (3, 2, 2, 2, 2),
    images_per_camera: int = 2,
    images: bool = False,
) -> None:
    """CUHK02: each pair numbers its ids from 1 (unique only within the pair)."""
    n = 0
    for k, count in enumerate(ids_per_pair, start=1):
        for cam in ("cam1", "cam2"):
            for pid in range(1, count + 1):
                for i in range(1, images_per_camera + 1):
                    n += 1
                    put(root / "Dataset" / f"P{k}" / cam / f"{pid:04d}_{i}.png", images, n)


def cuhksysu(
    root: Path,
    ids: tuple[int, ...] = (11001, 11002, 11005),
    images_per_id: int = 2,
    layout: str = "cropped_images",
    images: bool = False,
) -> int:
    """CUHK-SYSU crops ``p<pid>_s<scene>_<k>.jpg``; returns the number of images."""
    folder = root / ("bounding_box_train" if layout == "market" else layout)
    n = 0
    for pid in ids:
        for k in range(1, images_per_id + 1):
            n += 1
            put(folder / f"p{pid}_s{15000 + n % 3}_{k}.jpg", images, n)
    return n


def prid(
    root: Path, num_paired: int = 20, cam_a: int = 38, cam_b: int = 75, images: bool = False
) -> None:
    """PRID single shot: ids 1..cam_a in cam_a, 1..cam_b in cam_b (real: 385 / 749, 200 paired)."""
    base = root / "prid_2011" / "single_shot"
    for offset, (cam, count) in enumerate((("cam_a", cam_a), ("cam_b", cam_b))):
        for pid in range(1, count + 1):
            put(base / cam / f"person_{pid:04d}.png", images, 1000 * offset + pid)


def grid(
    root: Path,
    paired: int = 20,
    distractors: int = 62,
    train_per_split: int = 10,
    images: bool = False,
) -> list[list[int]]:
    """GRID probe/gallery + ``features_and_partitions.mat`` (real: 250, 775, 125).

    The ``.mat`` holds ``trainIdxAll``, a 1 x 10 cell of structs whose third field is the
    row vector of train ids, as the release. Returns the train ids of each split.
    """
    base = root / "underground_reid"
    for pid in range(1, paired + 1):
        cam = 1 + pid % 8
        put(base / "probe" / f"{pid:04d}_{cam}_25004_107_32_130.jpeg", images, pid)
        put(
            base / "gallery" / f"{pid:04d}_{1 + (cam % 8)}_25004_107_32_130.jpeg", images, 500 + pid
        )
    for k in range(distractors):
        put(base / "gallery" / f"0000_{1 + k % 8}_{k:05d}_1_1_1.jpeg", images, 1000 + k)
    rng = np.random.default_rng(7)
    cells = np.empty((1, 10), dtype=object)
    splits = []
    for i in range(10):
        train = sorted(int(v) for v in rng.permutation(np.arange(1, paired + 1))[:train_per_split])
        splits.append(train)
        cells[0, i] = {
            "idxProbe": np.arange(1, paired + 1, dtype=np.float64)[None],
            "idxGallery": np.arange(1, paired + 1, dtype=np.float64)[None],
            "idxTrain": np.asarray(train, dtype=np.float64)[None],
        }
    savemat(
        base / "features_and_partitions.mat", {"trainIdxAll": cells, "features": np.zeros((2, 2))}
    )
    return splits


def viper(root: Path, ids: tuple[int, ...] = tuple(range(0, 24, 2)), images: bool = False) -> None:
    """VIPeR: one image per id in cam_a (``<id>_<angle>.bmp``) and one in cam_b."""
    for pid in ids:
        put(root / "VIPeR" / "cam_a" / f"{pid:03d}_45.bmp", images, pid)
        put(root / "VIPeR" / "cam_b" / f"{pid:03d}_90.bmp", images, 500 + pid)


def ilids(root: Path, num_ids: int = 12, images: bool = False) -> int:
    """iLIDS: ids 1..num_ids with 2-4 images each (``<id:04d><k:03d>.jpg``); returns images."""
    n = 0
    for pid in range(1, num_ids + 1):
        for k in range(1, 2 + pid % 3 + 1):
            n += 1
            put(root / "i-LIDS_Pedestrian" / "Persons" / f"{pid:04d}{k:03d}.jpg", images, n)
    return n


def cuhk03_old(root: Path, num_ids: int = 4, images: bool = False) -> None:
    """CUHK03 old protocol: images + meta.json + splits.json (open-reid format)."""
    base = root / "cuhk03_release"
    identities = [
        [[f"{p:08d}_{c:02d}_{i:04d}.jpg" for i in range(2)] for c in range(2)]
        for p in range(num_ids)
    ]
    k = 0
    for cams in identities:
        for names in cams:
            for name in names:
                k += 1
                put(base / "images" / name, images, k)
    (base / "meta.json").write_text(json.dumps({"identities": identities}))
    half = num_ids // 2
    split = {
        "trainval": list(range(half)),
        "query": list(range(half, num_ids)),
        "gallery": list(range(half, num_ids)),
    }
    (base / "splits.json").write_text(json.dumps([split]))
