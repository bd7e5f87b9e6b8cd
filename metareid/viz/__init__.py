"""Pictures of a run: t-SNE of features (Fig. 5), training curves and retrieval grids.

- :func:`tsne`: exact t-SNE embedding of features (N, D) -> (N, dim), numpy/torch only.
- :func:`plot_tsne`: the embedding as a scatter coloured by domain, written as a PNG.
- :func:`plot_training_curves`: losses, learning rate and mAP/CMC of a JSON-lines training
  log, written as a PNG.
- :func:`retrieval_grid`: each query beside its top-k gallery images, matches framed in
  green and mismatches in red (Market-1501 protocol), written as a PNG with Pillow.

:func:`plot_tsne` and :func:`plot_training_curves` need matplotlib, an optional
dependency (``pip install "metareid[viz]"``); it is imported only when they are called, and
its absence raises ``ImportError`` with that hint. Everything else works without it.
"""

from metareid.viz.plots import plot_training_curves, plot_tsne
from metareid.viz.retrieval import retrieval_grid
from metareid.viz.tsne import tsne

__all__ = ["plot_training_curves", "plot_tsne", "retrieval_grid", "tsne"]
