"""Protocol presets for a :class:`~metareid.engine.TrainConfig` and the multi-split evaluation.

:func:`apply_protocol` sets a config's sources and targets from
:func:`metareid.data.protocol_plan` (``--protocol m3l|p1|p2|p3``) and says what it chose.
:func:`evaluate_final_targets` evaluates the trained model on every split of every final
target (Protocol 1: PRID, GRID, VIPeR and iLIDS, 10 splits each): the features of each
image are extracted once and every split is scored from them, so nothing is retrained per
split. :func:`format_split_table` and :func:`protocol_table` give the numbers as papers
report them, mean ± standard deviation over the splits and the average over the targets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metareid.config import TrainConfig
from metareid.data import (
    ImageRecord,
    ReIDDataset,
    build_dataset_from_spec,
    build_test_loader,
    parse_dataset_spec,
    protocol_plan,
)
from metareid.data.datasets.registry import dataset_factory, list_datasets
from metareid.engine.results import EvalResult, SplitResults
from metareid.engine.run_view import RunView
from metareid.evaluation import evaluate_features, extract_features

__all__ = [
    "SplitResults",
    "apply_protocol",
    "evaluate_final_targets",
    "format_split_table",
    "protocol_table",
    "target_splits",
]


def apply_protocol(
    cfg: TrainConfig,
    protocol: str | None = None,
    target: str | None = None,
    *,
    log: Callable[[str], None] = print,
    **options: Any,
) -> TrainConfig:
    """``cfg`` with the sources, target and final targets of one task of a protocol.

    Args:
        cfg: the base config; its other settings are kept.
        protocol: ``"m3l"``, ``"p1"``, ``"p2"`` or ``"p3"``; None: ``cfg.protocol``.
            ``"custom"`` returns ``cfg`` unchanged.
        target: the held-out dataset (see :func:`metareid.data.protocol_plan`; Protocol 1:
            one small target or None for all four).
        log: receives one line saying what the protocol chose.
        **options: passed to :func:`metareid.data.protocol_plan` (``msmt_version``,
            ``cuhk03_subset``, ``cuhk_source``, ``with_duke``).

    Returns:
        A new, validated config with ``protocol``, ``sources``, ``target`` and
        ``final_targets`` set.

    Raises:
        ValueError: an unknown protocol or a target it does not have.

    Example:
        >>> cfg = apply_protocol(TrainConfig(), "p2", "msmt17", log=lambda line: None)
        >>> cfg.protocol, cfg.sources, cfg.target
        ('p2', ('market1501', 'cuhksysu', 'cuhk03np:detected'), 'msmt17:V2')
    """
    protocol = protocol or cfg.protocol
    if protocol == "custom":
        return cfg
    plan = protocol_plan(protocol, target, **options)
    log(f"protocol {plan.describe()}")
    return dataclasses.replace(
        cfg,
        protocol=protocol,  # type: ignore[arg-type]  # checked by protocol_plan
        sources=plan.sources,
        target=plan.target,
        final_targets=plan.final_targets,
    )


def target_splits(spec: str) -> list[str]:
    """The spec of every split of a target: all of them, unless the spec names one.

    Example:
        >>> target_splits("prid")[:2], target_splits("prid:4"), target_splits("market1501")
        (['prid:split_id=0', 'prid:split_id=1'], ['prid:4'], ['market1501'])
    """
    parsed = parse_dataset_spec(spec)
    factory = dataset_factory(parsed.name) if parsed.name in list_datasets() else None
    num_splits = int(getattr(factory, "num_splits", 1))
    if "split_id" in parsed.kwargs or num_splits <= 1:
        return [spec]
    sep = "," if ":" in spec else ":"
    return [f"{spec}{sep}split_id={i}" for i in range(num_splits)]


def evaluate_final_targets(
    trainer: RunView, targets: Sequence[str] | None = None
) -> dict[str, SplitResults]:
    """Evaluate the trainer's model on every split of each target; nothing is retrained.

    For each target the images of all its splits' queries and galleries are gathered, their
    features extracted once with the trainer's test transform (and ``flip_eval``), and each
    split is scored from those features (Market-1501 protocol, squared Euclidean, with
    ``rerank`` as configured). The table of :func:`format_split_table` goes to
    ``trainer.log`` and the numbers to ``<output_dir>/final_targets.json``.

    Args:
        trainer: a trained :class:`~metareid.engine.Trainer`.
        targets: target specs. Default: ``trainer.cfg.final_targets``.

    Returns:
        Per target spec, its results per split.

    Raises:
        ValueError: a target spec is also a source (see
            :func:`metareid.data.check_target_not_in_sources`), or the dataset errors.
    """
    from metareid.data import check_target_not_in_sources

    cfg = trainer.cfg
    specs = tuple(targets if targets is not None else cfg.final_targets)
    check_target_not_in_sources(cfg.sources, specs)
    results: dict[str, SplitResults] = {}
    for spec in specs:
        datasets = [build_dataset_from_spec(s, cfg.data_dir) for s in target_splits(spec)]
        feats, index = _features_once(trainer, datasets)
        scores = []
        for ds in datasets:
            qi = torch.tensor([index[r.path] for r in ds.query], dtype=torch.long)
            gi = torch.tensor([index[r.path] for r in ds.gallery], dtype=torch.long)
            res = evaluate_features(
                feats[qi],
                feats[gi],
                torch.tensor([r.pid for r in ds.query]),
                torch.tensor([r.pid for r in ds.gallery]),
                torch.tensor([r.camid for r in ds.query]),
                torch.tensor([r.camid for r in ds.gallery]),
                metric="euclidean",
                rerank=cfg.rerank,
            )
            cmc = res.cmc

            def rank(k: int, cmc: Any = cmc) -> float:
                return 100.0 * float(cmc[min(k, len(cmc)) - 1])

            scores.append(
                EvalResult(
                    trainer.epoch, 100.0 * res.mAP, rank(1), rank(5), rank(10), 100.0 * res.mINP
                )
            )
        results[spec] = SplitResults(spec, tuple(scores))
    trainer.log(format_split_table(results))
    out = Path(trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "final_targets.json").write_text(
        json.dumps({k: v.as_dict() for k, v in results.items()}, indent=2) + "\n"
    )
    return results


def _features_once(
    trainer: RunView, datasets: Sequence[ReIDDataset]
) -> tuple[torch.Tensor, dict[str, int]]:
    """Features of every distinct image of the datasets' queries and galleries."""
    index: dict[str, int] = {}
    records: list[ImageRecord] = []
    for ds in datasets:
        for r in ds.query + ds.gallery:
            if r.path not in index:
                index[r.path] = len(records)
                records.append(ImageRecord(r.path, 0, 0, 0, 0))
    cfg = trainer.cfg
    loader = build_test_loader(
        records,
        trainer.test_transform,
        batch_size=cfg.eval_batch_size,
        num_workers=cfg.workers,
        pin_memory=trainer.device.type == "cuda",
    )
    feats, _, _ = extract_features(trainer.model, loader, trainer.device, flip=cfg.flip_eval)
    return feats.float(), index


def format_split_table(results: dict[str, SplitResults]) -> str:
    """Per target, mean ± std over its splits; then the average over the targets.

    Example:
        >>> from metareid.engine import EvalResult
        >>> r = EvalResult(1, 40.0, 50.0, 60.0, 70.0, 20.0)
        >>> print(format_split_table({"prid": SplitResults("prid", (r, r))}))
        | target | splits | mAP | R1 | R5 | R10 |
        |---|---|---|---|---|---|
        | prid | 2 | 40.0 ± 0.0 | 50.0 ± 0.0 | 60.0 ± 0.0 | 70.0 ± 0.0 |
        | average of 1 targets | | 40.0 | 50.0 | 60.0 | 70.0 |
    """
    metrics = ("mAP", "rank1", "rank5", "rank10")
    lines = ["| target | splits | mAP | R1 | R5 | R10 |", "|---|---|---|---|---|---|"]
    for spec, res in results.items():
        cells = " | ".join(f"{res.mean(m):.1f} ± {res.std(m):.1f}" for m in metrics)
        lines.append(f"| {spec} | {len(res.splits)} | {cells} |")
    if results:
        avg = " | ".join(
            f"{sum(r.mean(m) for r in results.values()) / len(results):.1f}" for m in metrics
        )
        lines.append(f"| average of {len(results)} targets | | {avg} |")
    return "\n".join(lines)


def protocol_table(rows: dict[str, dict[str, SplitResults]]) -> str:
    """One row per run: each target's mAP / R1 as mean ± std over its splits, and the average.

    Example:
        >>> from metareid.engine import EvalResult
        >>> r = EvalResult(1, 40.0, 50.0, 60.0, 70.0, 20.0)
        >>> print(protocol_table({"M3L": {"prid": SplitResults("prid", (r,) * 10)}}))
        | method | prid mAP / R1 (10 splits) | average mAP | average R1 |
        |---|---|---|---|
        | M3L | 40.0 ± 0.0 / 50.0 ± 0.0 | 40.0 | 50.0 |
    """
    targets: list[str] = []
    for per_target in rows.values():
        targets += [t for t in per_target if t not in targets]
    head = ["method"]
    for t in targets:
        n = next(len(r[t].splits) for r in rows.values() if t in r)
        head.append(f"{t} mAP / R1 ({n} splits)")
    head += ["average mAP", "average R1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_target in rows.items():
        cells = [
            f"{per_target[t].mean('mAP'):.1f} ± {per_target[t].std('mAP'):.1f} / "
            f"{per_target[t].mean('rank1'):.1f} ± {per_target[t].std('rank1'):.1f}"
            if t in per_target
            else "-"
            for t in targets
        ]
        done = list(per_target.values())
        for metric in ("mAP", "rank1"):
            mean = sum(r.mean(metric) for r in done) / len(done) if done else float("nan")
            cells.append(f"{mean:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
