"""examples/reproduce_m3l.py: the synthetic smoke run and the real-data path on fake trees."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reproduce_m3l.py"


def load_example():
    spec = importlib.util.spec_from_file_location("reproduce_m3l", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_a_table_3_like_table(tmp_path, capsys):
    example = load_example()
    out = tmp_path / "results.json"
    summary = example.main(
        [
            "--smoke",
            "--synthetic-dir",
            str(tmp_path / "synthetic"),
            "--output-dir",
            str(tmp_path / "runs"),
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    for row in (
        "| Untrained (same init) |",
        "| Baseline |",
        "| + Meta |",
        "| + Meta + MetaBN (M3L) |",
    ):
        assert row in printed
    assert "mean mAP | mean R1 | mean R5 | mean R10" in printed
    assert json.loads(out.read_text())["targets"] == summary["targets"] == ["D3"]
    assert summary["seeds"] == [0] and summary["preset"] == ["none"]
    for per_seed in summary["final"].values():
        for rows in per_seed:
            assert all(0 <= r["mAP"] <= 100 for r in rows)
    assert "| M3L − Baseline (paired) |" in printed
    runs = tmp_path / "runs"  # logs and configs, no checkpoints (--save-checkpoints: kept)
    assert not list(runs.rglob("*.pt"))
    assert sorted(p.name for p in (runs / "seed0" / "D3" / "m3l").iterdir()) == [
        "config.json",
        "log.jsonl",
    ]


def test_checkpoints_are_kept_only_when_asked(tmp_path):
    example = load_example()
    cases = (
        ([], False),  # the synthetic demo
        (["--save-checkpoints"], True),
        (["--data-dir", str(tmp_path), "--target", "market1501"], True),  # real data: kept
        (["--data-dir", str(tmp_path), "--target", "market1501", "--no-save-checkpoints"], False),
    )
    for argv, kept in cases:
        args, extra = example.parse_args(argv)
        assert m3l_config(example, args, extra, tmp_path, seed=0).save_checkpoints is kept
    args, extra = example.parse_args(["--", "--save-checkpoints"])  # a train flag after --
    assert m3l_config(example, args, extra, tmp_path, seed=0).save_checkpoints is True


def _r(mAP, r1, r5=0.0, r10=0.0):
    from metareid.engine import EvalResult

    return EvalResult(1, mAP, r1, r5, r10, 0.0)


def test_table_reports_mean_std_over_seeds_and_paired_differences():
    example = load_example()
    rows = {
        "Baseline": [[_r(10, 20), _r(30, 40)], [_r(14, 20), _r(30, 44)]],
        "M3L": [[_r(13, 21), _r(30, 40)], [_r(15, 25), _r(36, 44)]],
    }
    text = example.table(rows, ["D0", "D1"], {"M3L − Baseline": ("M3L", "Baseline")})
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    # Baseline D0 mAP over seeds: 10, 14 -> mean 12, sample std 2.83
    assert lines["Baseline"].startswith("| Baseline | 12.0 ± 2.8 | 20.0 ± 0.0 | 30.0 ± 0.0 |")
    # Paired differences per seed, by hand. Seed 0: D0 (3, 1), D1 (0, 0), means (1.5, 0.5);
    # seed 1: D0 (1, 5), D1 (6, 0), means (3.5, 2.5). Mean ± sample std over the 2 seeds:
    assert lines["M3L − Baseline"].split(" | ")[1:7] == [
        "2.0 ± 1.4",
        "3.0 ± 2.8",
        "3.0 ± 4.2",
        "0.0 ± 0.0",
        "2.5 ± 1.4",
        "1.5 ± 1.4",
    ]
    one = example.table({"Baseline": [rows["Baseline"][0]]}, ["D0", "D1"])
    assert "| Baseline | 10.0 | 20.0 | 30.0 | 40.0 | 20.0 | 30.0 |" in one  # no ± for 1 seed


def m3l_config(example, args, extra, tmp_path: Path, seed: int):
    """The example's M3L config for synthetic D0 + D1 -> D2 from parsed arguments."""
    sources = ("synthetic:0", "synthetic:1")
    return example.config_for(
        args, extra, "m3l", sources, "synthetic:2", str(tmp_path), example.SYNTHETIC,
        tmp_path / "out", seed=seed,
    )  # fmt: skip


def test_seeds_and_preset_reach_the_configs(tmp_path):
    example = load_example()
    args, extra = example.parse_args(
        ["--seeds", "3", "--preset", "published", "--", "--lr", "1e-3"]
    )
    assert args.seeds == 3 and extra[:2] == ["--preset", "published"]
    cfg = m3l_config(example, args, extra, tmp_path, seed=5)
    assert cfg.seed == 5 and cfg.preset == "published" and cfg.lr == 1e-3
    assert (cfg.memory_update_rule, cfg.memory_update_timing, cfg.sample_scale) == (
        "sequential",
        "after",
        "var",
    )
    assert (cfg.meta_test_grad, cfg.meta_test_bn_stats, cfg.inner_eps_root) == (
        "second_order_only",
        "update",
        1e-5,
    )
    assert (cfg.stem_relu, cfg.freeze_neck_bias, cfg.sampler, cfg.dataparallel) == (
        False,
        False,
        "published",
        3,
    )
    args, extra = example.parse_args(
        ["--preset", "published", "--", "--memory-update-rule", "mean"]
    )
    cfg = m3l_config(example, args, extra, tmp_path, seed=0)
    assert cfg.memory_update_rule == "mean" and cfg.sample_scale == "var"


# ---------------------------------------------------------------------------- fake trees
def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(16, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def make_market_like(base: Path, name_fn) -> None:
    n = 0
    for split, pids, cams in (
        ("bounding_box_train", (2, 7, 9), (1, 2)),
        ("query", (11, 12), (1,)),
        ("bounding_box_test", (11, 12, 0), (2, 3)),
    ):
        for pid in pids:
            for cam in cams:
                for i in range(2):
                    n += 1
                    _img(base / split / name_fn(pid, cam, i), n)
    _img(base / "bounding_box_test" / name_fn(-1, 1, 0), 999)  # junk


def make_real_trees(root: Path) -> None:
    make_market_like(
        root / "market1501" / "Market-1501-v15.09.15",
        lambda p, c, i: f"{p:04d}_c{c}s1_{i:06d}_00.jpg" if p >= 0 else f"-1_c{c}s1_{i:06d}_00.jpg",
    )
    make_market_like(
        root / "dukemtmc" / "DukeMTMC-reID",
        lambda p, c, i: f"{max(p, 0):04d}_c{c}_f{i:07d}.jpg",
    )
    # CUHK03 old protocol: images + meta.json + splits.json
    base = root / "cuhk03" / "cuhk03_release"
    identities = [
        [[f"{p:08d}_{c:02d}_{i:04d}.jpg" for i in range(2)] for c in range(2)] for p in range(4)
    ]
    for k, name in enumerate(n for cams in identities for names in cams for n in names):
        _img(base / "images" / name, 100 + k)
    meta = {"name": "cuhk03", "shot": "multiple", "num_cameras": 2, "identities": identities}
    (base / "meta.json").write_text(json.dumps(meta))
    (base / "splits.json").write_text(
        json.dumps([{"trainval": [0, 1], "query": [2, 3], "gallery": [2, 3]}])
    )
    # MSMT17 V2: folders per id, list files "relpath pid"
    base = root / "msmt17" / "MSMT17_V2"
    lines: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    k = 0
    for split, pids, cams, folder in (
        ("train", (0, 1), (1, 5), "mask_train_v2"),
        ("query", (2, 3), (2,), "mask_test_v2"),
        ("gallery", (2, 3), (7, 9), "mask_test_v2"),
    ):
        for pid in pids:
            for cam in cams:
                for i in range(2):
                    k += 1
                    rel = f"{pid:04d}/{pid:04d}_{k:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
                    _img(base / folder / rel, 200 + k)
                    lines[split].append(f"{rel} {pid}")
    for split, ls in lines.items():
        (base / f"list_{split}.txt").write_text("".join(line + "\n" for line in ls))


def test_real_data_protocol_end_to_end_on_fake_trees(tmp_path, capsys):
    data = tmp_path / "data"
    make_real_trees(data)
    example = load_example()
    tiny = [
        "--pretrained",
        "none",
        "--height",
        "32",
        "--width",
        "16",
        "--num-identities",
        "2",
        "--num-instances",
        "2",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "1",
        "--workers",
        "0",
        "--eval-batch-size",
        "8",
        "--warmup-epochs",
        "0",
        "--milestones",
        "5",
        "--no-plots",
        "--no-progress",
    ]
    summary = example.main(
        [
            "--data-dir",
            str(data),
            "--target",
            "market1501",
            "--arch",
            "resnet18",
            "--methods",
            "baseline",
            "m3l",
            "--output-dir",
            str(tmp_path / "runs"),
            "--",
            *tiny,
        ]
    )
    printed = capsys.readouterr().out
    assert "msmt17:V2 + dukemtmc + cuhk03 -> market1501" in printed
    assert summary["targets"] == ["market1501"]
    cfg = json.loads(
        (tmp_path / "runs" / "seed0" / "market1501" / "m3l" / "config.json").read_text()
    )
    assert cfg["sources"] == ["msmt17:V2", "dukemtmc", "cuhk03"]
    assert cfg["arch"] == "resnet18" and cfg["epochs"] == 1
