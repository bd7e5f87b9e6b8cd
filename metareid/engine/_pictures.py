"""End-of-run pictures: training curves, t-SNE of source and target features, retrievals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metareid.engine.run_view import RunView
from metareid.evaluation import compute_distance
from metareid.viz import plot_training_curves, plot_tsne, retrieval_grid, tsne

MAX_POINTS_PER_DOMAIN = 300
NUM_QUERIES = 8


def write_pictures(trainer: RunView) -> list[Path]:
    """Write ``curves.png``, ``tsne.png`` and ``retrieval.png`` into the run directory.

    Curves and t-SNE need matplotlib (``pip install "metareid[viz]"``); the retrieval grid
    needs only Pillow. Raises ``ImportError`` when matplotlib is missing, after writing what
    does not need it.
    """
    out = trainer.output_dir
    written = [_retrievals(trainer, out / "retrieval.png")]
    written.append(plot_training_curves(out / "log.jsonl", out / "curves.png"))
    written.append(_tsne(trainer, out / "tsne.png"))
    return written


def _subsample(records: list[Any], n: int, seed: int) -> list[Any]:
    if len(records) <= n:
        return records
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(records), generator=g)[:n].sort().values
    return [records[i] for i in idx.tolist()]


def _tsne(trainer: RunView, path: Path) -> Path:
    """Paper Fig. 5: features of every source and of the target, coloured by domain."""
    feats: list[torch.Tensor] = []
    domains: list[int] = []
    groups = [*trainer.sources.per_domain_train, list(trainer.target.gallery)]
    names = [*trainer.sources.names, f"{trainer.cfg.target} (target)"]
    for d, records in enumerate(groups):
        recs = _subsample(list(records), MAX_POINTS_PER_DOMAIN, trainer.cfg.seed + d)
        f, _, _ = trainer.features(recs)
        feats.append(f.cpu())
        domains += [d] * len(recs)
    points = torch.cat(feats)
    perplexity = min(30.0, (len(points) - 1) / 3)
    emb = tsne(points, perplexity=perplexity, seed=trainer.cfg.seed)
    return plot_tsne(
        emb, domains, path, domain_names=names, title="t-SNE of source and target features"
    )


def _retrievals(trainer: RunView, path: Path) -> Path:
    """Top-10 of a few target queries; the distance rows of those queries only."""
    if trainer.last_features is None:
        trainer.evaluate()
    assert trainer.last_features is not None
    qf, q_pids, q_cams, gf, g_pids, g_cams = trainer.last_features
    query, gallery = list(trainer.target.query), list(trainer.target.gallery)
    # A few candidate queries (retrieval_grid keeps those with a valid match).
    g = torch.Generator().manual_seed(trainer.cfg.seed)
    pick = torch.randperm(len(query), generator=g)[: 8 * NUM_QUERIES].sort().values
    query = [query[i] for i in pick.tolist()]
    qf, q_pids, q_cams = qf[pick], q_pids[pick], q_cams[pick]
    dist = compute_distance(qf, gf, metric="euclidean")
    return retrieval_grid(
        dist,
        [r.path for r in query],
        [r.path for r in gallery],
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        path,
        num_queries=NUM_QUERIES,
        seed=trainer.cfg.seed,
    )
