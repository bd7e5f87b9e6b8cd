"""A tiny synthetic benchmark and one tiny trained checkpoint, shared by the inference tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from metareid.data import prepare_synthetic_benchmark


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions run faster on one thread than on two shared ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def tiny_config(root: Path, out: Path, **overrides: Any) -> Any:
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
        iters_per_epoch=1,
        warmup_epochs=0,
        milestones=(),
        eval_every=0,
        eval_batch_size=8,
        workers=0,
        output_dir=str(out),
        progress=False,
        plots=False,
        log_every=1,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_run(tiny_bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Trainer after one M3L iteration, its checkpoint written (``last.pt``)."""
    from metareid.engine import Trainer, save_checkpoint

    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(tiny_config(tiny_bench, out), log=lambda _: None)
    trainer.init_memories()
    trainer.train_epoch()
    save_checkpoint(trainer.state_dict(), out / "last.pt")
    return trainer


@pytest.fixture(scope="session")
def checkpoint(tiny_run: Any) -> Path:
    return Path(tiny_run.output_dir) / "last.pt"
