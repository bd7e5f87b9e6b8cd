"""The tiny synthetic benchmark and training config shared by the engine, inference and
distributed tests (importable because ``pythonpath`` includes ``tests``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

#: Arguments of ``prepare_synthetic_benchmark`` for a benchmark that builds in a second.
TINY_BENCH: dict[str, Any] = dict(
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


def make_tiny_bench(root: Path) -> Path:
    """Write (or reuse) the tiny benchmark under ``root``."""
    from metareid.data import prepare_synthetic_benchmark

    prepare_synthetic_benchmark(root, **TINY_BENCH)
    return root


def tiny_train_config(root: Path | str, out: Path | str, **overrides: Any) -> Any:
    """A ``TrainConfig`` on the tiny benchmark that trains in seconds; overrides win."""
    from metareid.engine import TrainConfig

    base: dict[str, Any] = dict(
        data_dir=str(root),
        sources=("synthetic:0", "synthetic:1"),
        target="synthetic:2",
        arch="resnet10",
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


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions run faster on one thread than on two shared ones (autouse where
    imported: ``from tiny_setup import one_thread``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
