"""Evaluate a checkpoint on a target dataset: only the checkpoint and the target are read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from metareid.config import config_value
from metareid.engine.trainer import EvalResult, build_dataset_from_spec
from metareid.evaluation import evaluate_features
from metareid.inference.extractor import FeatureExtractor
from metareid.inference.trained_model import read_checkpoint

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    target: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    flip: bool | None = None,
    rerank: bool | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
) -> tuple[EvalResult, str]:
    """Retrieval accuracy of a checkpoint on a target's query and gallery.

    Computes what :meth:`metareid.engine.Trainer.evaluate` computes (evaluation transform,
    Market protocol, squared Euclidean distance on L2-normalised features, optional flip
    and re-ranking), but builds only the model, from the checkpoint, and only the target
    dataset: the run's source datasets need not exist, and no weights are downloaded.
    Options left at ``None`` take the run's config values (``target``, ``data_dir``,
    ``flip_eval``, ``rerank``, ``workers``, ``eval_batch_size``, ``amp``).

    Args:
        checkpoint: a checkpoint path (``last.pt``) or the loaded dict.
        target: dataset spec, e.g. ``"market1501"`` or ``"synthetic:2"``.
        data_dir: the data directory.
        device: where the model runs; ``None``: CUDA when available.
        flip: flip-averaged features.
        rerank: k-reciprocal re-ranking.
        workers: image-loading processes.
        batch_size: images per forward pass.

    Returns:
        ``(result, target)``: the accuracy in percent (``epoch``: the checkpoint's) and the
        target spec evaluated.

    Raises:
        ValueError: bad checkpoint (see :func:`~metareid.inference.read_checkpoint`) or
            dataset spec.

    Example:
        >>> evaluate_checkpoint({"format": 2, "config": {}, "model": {}})
        Traceback (most recent call last):
        ...
        ValueError: checkpoint <dict> has format 2, but this metareid reads formats up to 1: ...
    """
    state = read_checkpoint(checkpoint)
    cfg = state["config"]
    spec = target if target is not None else str(config_value(cfg, "target"))
    root = Path(data_dir if data_dir is not None else config_value(cfg, "data_dir"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    amp_setting = config_value(cfg, "amp")
    amp = amp_setting == "on" or (
        amp_setting not in ("on", "off") and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    extractor = FeatureExtractor(
        state,
        device=dev,
        batch_size=batch_size if batch_size is not None else config_value(cfg, "eval_batch_size"),
        flip=flip if flip is not None else bool(config_value(cfg, "flip_eval")),
        num_workers=workers if workers is not None else config_value(cfg, "workers"),
        progress=False,
        amp=amp,
    )
    dataset = build_dataset_from_spec(spec, root)
    qf = extractor([r.path for r in dataset.query])
    gf = extractor([r.path for r in dataset.gallery])
    res = evaluate_features(
        qf,
        gf,
        torch.tensor([r.pid for r in dataset.query], dtype=torch.int64),
        torch.tensor([r.pid for r in dataset.gallery], dtype=torch.int64),
        torch.tensor([r.camid for r in dataset.query], dtype=torch.int64),
        torch.tensor([r.camid for r in dataset.gallery], dtype=torch.int64),
        metric="euclidean",
        rerank=rerank if rerank is not None else bool(config_value(cfg, "rerank")),
    )
    cmc = res.cmc

    def rank(k: int) -> float:
        return 100.0 * float(cmc[min(k, len(cmc)) - 1])

    result = EvalResult(
        int(state.get("epoch", 0)),
        100.0 * res.mAP,
        rank(1),
        rank(5),
        rank(10),
        100.0 * res.mINP,
    )
    return result, spec
