"""A tiny synthetic benchmark shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from metareid.data import prepare_synthetic_benchmark


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic_benchmark(
        root,
        seed=0,
        num_domains=3,
        train_ids_per_domain=6,
        test_ids_per_domain=4,
        train_images_per_id=4,
        test_images_per_camera=2,
        num_cameras=2,
        num_distractors=2,
        num_junk=1,
        image_size=(32, 16),
    )
    return root


@pytest.fixture
def tiny_config():
    """``tiny_config(root, out, **overrides)``: a TrainConfig that trains in seconds."""
    return _tiny_config


def _tiny_config(root: Path, out: Path, **overrides):
    from metareid.engine import TrainConfig

    base = dict(
        data_dir=str(root),
        sources=("synthetic:0", "synthetic:1"),
        target="synthetic:2",
        arch="resnet18",
        pretrained="none",
        height=32,
        width=16,
        num_identities=2,
        num_instances=2,
        epochs=1,
        iters_per_epoch=2,
        warmup_epochs=0,
        milestones=(),
        eval_every=0,
        eval_batch_size=16,
        workers=0,
        output_dir=str(out),
        progress=False,
        plots=False,
        log_every=1,
    )
    base.update(overrides)
    return TrainConfig(**base)
