"""A tiny synthetic benchmark and one tiny trained checkpoint, shared by the inference tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_setup import make_tiny_bench, one_thread, tiny_train_config  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bench(tmp_path_factory.mktemp("synthetic"))


def tiny_config(root: Path, out: Path, **overrides: Any) -> Any:
    base: dict[str, Any] = dict(iters_per_epoch=1, eval_batch_size=8, device="cpu")
    return tiny_train_config(root, out, **{**base, **overrides})


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
