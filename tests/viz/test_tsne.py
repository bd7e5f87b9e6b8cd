"""t-SNE: calibration against an independent per-row check, gradient against autograd,
cluster preservation, determinism, argument checks, and the Fig. 5 scatter."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import entropy

from metareid.viz import plot_tsne, tsne
from metareid.viz import tsne as tsne_fn

# ``metareid.viz.tsne`` is the function; the module is reached through sys.modules.
tsne_module = sys.modules["metareid.viz.tsne"]


def blobs(per_cluster: int = 25, dim: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim)) * 10.0
    labels = np.repeat(np.arange(3), per_cluster)
    return centers[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: thread start-up would dominate, worst on a shared CI core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Force the row-blocked code paths to use several blocks of a few rows, the last partial."""
    monkeypatch.setattr(tsne_module, "_BLOCK_ELEMENTS_CPU", 100)


def test_public_name_is_the_function():
    assert tsne_fn is tsne and callable(tsne)


def test_needs_no_optional_dependency(monkeypatch):
    """numpy and torch only (docs/visualization.md): the module imports nothing else, and a
    call imports no plotting or t-SNE library even where one is installed."""
    tree = ast.parse(Path(tsne_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    roots = {name.split(".")[0] for name in imported}
    assert roots <= {"__future__", "math", "warnings", "typing", "numpy", "torch", "metareid"}
    for name in ("matplotlib", "sklearn", "openTSNE"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    x, _ = blobs(per_cluster=4)
    assert tsne(x, perplexity=3.0, iterations=20).shape == (12, 2)


# ---------------------------------------------------------------- affinities


@pytest.mark.parametrize("perplexity", [2.0, 10.0, 25.0])
@pytest.mark.parametrize("blocked", [False, True])
def test_row_perplexities_match_target(perplexity, blocked, monkeypatch):
    if blocked:
        monkeypatch.setattr(tsne_module, "_BLOCK_ELEMENTS_CPU", 21 * 80)  # 21, 21, 21, 17 rows
    rng = np.random.default_rng(1)
    # uneven density: a tight clump, a loose cloud and a far outlier
    x = np.concatenate([rng.normal(size=(30, 5)) * 0.01, rng.normal(size=(49, 5)) * 3.0])
    x = np.concatenate([x, np.full((1, 5), 100.0)])
    p = tsne_module._conditional_probabilities(torch.from_numpy(x), perplexity).numpy()
    sq = cdist(x, x, "sqeuclidean")
    for i in range(len(x)):
        row = p[i]
        assert row[i] == 0.0
        assert row.sum() == pytest.approx(1.0, abs=1e-12)
        # perplexity 2^H(P_i) with H in bits, computed by scipy from the normalised row
        assert 2.0 ** entropy(np.delete(row, i), base=2) == pytest.approx(perplexity, rel=1e-4)
        # the row is a Gaussian kernel of the distances: log p_ij is affine in d_ij
        others = np.delete(np.arange(len(x)), i)
        kept = others[row[others] > 1e-250]
        slope, intercept = np.polyfit(sq[i, kept], np.log(row[kept]), 1)
        assert slope < 0
        residual = np.log(row[kept]) - (slope * sq[i, kept] + intercept)
        assert np.abs(residual).max() < 1e-6 * max(1.0, np.abs(np.log(row[kept])).max())


def test_identical_points_give_uniform_rows():
    p = tsne_module._conditional_probabilities(torch.zeros(7, 3, dtype=torch.float64), 2.0)
    expected = (1.0 - np.eye(7)) / 6.0
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)


def test_joint_probabilities_are_symmetric_and_normalised(tiny_blocks):
    x, _ = blobs(per_cluster=8)
    p = tsne_module._joint_probabilities(torch.from_numpy(x), 5.0).numpy()
    np.testing.assert_allclose(p, p.T, rtol=0, atol=0)
    assert np.all(np.diag(p) == 0) and np.all(p[~np.eye(len(x), dtype=bool)] > 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------- gradient


@pytest.mark.parametrize("blocked", [False, True])
def test_kl_gradient_matches_autograd(blocked, monkeypatch):
    if blocked:
        monkeypatch.setattr(tsne_module, "_BLOCK_ELEMENTS_CPU", 40)
    x, _ = blobs(per_cluster=7)
    p = tsne_module._joint_probabilities(torch.from_numpy(x), 4.0)
    y = torch.randn(len(x), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y.requires_grad_(True)
    # naive reference: explicit pairwise distances, Q and KL(P || Q) over i != j
    off = ~torch.eye(len(x), dtype=torch.bool)
    kernel = 1.0 / (1.0 + torch.cdist(y, y) ** 2)
    q = kernel[off] / kernel[off].sum()
    kl = (p[off] * (p[off].log() - q.log())).sum()
    (expected,) = torch.autograd.grad(kl, y)
    actual = tsne_module._kl_gradient(p, y.detach())
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-7, atol=1e-9 * scale)


# ---------------------------------------------------------------- embedding


def test_separated_clusters_stay_separated():
    x, labels = blobs()
    y = tsne(x, perplexity=8.0, iterations=250)
    assert y.shape == (75, 2) and y.dtype == np.float64
    dist = cdist(y, y)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(axis=1)
    assert np.mean(labels[nearest] == labels) == 1.0
    # every cluster is far from the others relative to its own spread
    centroids = np.stack([y[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(y[labels == c] - centroids[c], axis=1).max() for c in range(3))
    assert cdist(centroids, centroids)[np.triu_indices(3, 1)].min() > 2 * spread
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-9)


def test_deterministic_from_seed_and_input_kind(tiny_blocks):
    x, _ = blobs(per_cluster=6)
    original = x.copy()
    a = tsne(x, perplexity=4.0, iterations=60, seed=3)
    b = tsne(torch.from_numpy(x), perplexity=4.0, iterations=60, seed=3)
    c = tsne(x, perplexity=4.0, iterations=60, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(x, original)  # input untouched


def test_three_dimensional_embedding_and_fixed_learning_rate():
    x, _ = blobs(per_cluster=6)
    y = tsne(x, dim=3, perplexity=4.0, iterations=40, learning_rate=100.0)
    assert y.shape == (18, 3) and np.isfinite(y).all()


def test_pca_skipped_when_not_smaller_than_d():
    x, _ = blobs(per_cluster=6, dim=5)
    kwargs = {"perplexity": 4.0, "iterations": 40}
    np.testing.assert_array_equal(tsne(x, pca_dim=5, **kwargs), tsne(x, pca_dim=None, **kwargs))


def test_pca_keeps_distances_of_low_rank_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 12)) + 5.0  # rank 3, offset
    projected = tsne_module._pca(torch.from_numpy(x), 3).numpy()
    assert projected.shape == (30, 3)
    np.testing.assert_allclose(cdist(projected, projected), cdist(x, x), atol=1e-9)


def test_large_perplexity_is_clamped_with_a_warning():
    x, _ = blobs(per_cluster=4)  # N = 12: (N - 1) / 3 = 11 / 3
    with pytest.warns(UserWarning, match="perplexity 30 is too large for 12 points"):
        clamped = tsne(x, iterations=30)
    np.testing.assert_array_equal(clamped, tsne(x, perplexity=11 / 3, iterations=30))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"features": np.zeros(10)}, ValueError, "features must be a 2-D"),
        ({"features": np.zeros((10, 0))}, ValueError, "features must be a 2-D"),
        ({"features": np.zeros((3, 4))}, ValueError, "at least 4 points"),
        ({"features": np.full((10, 2), np.nan)}, ValueError, "features must be finite"),
        ({"features": [[0.0, 1.0]] * 10}, TypeError, "features must be"),
        ({"features": np.zeros((10, 2), dtype=bool)}, TypeError, "features must be"),
        ({"features": torch.zeros(10, 2, dtype=torch.complex64)}, TypeError, "features must be"),
        ({"dim": 0}, ValueError, "dim must be an int >= 1"),
        ({"dim": 2.0}, TypeError, "dim must be an int"),
        ({"perplexity": 0.5}, ValueError, "perplexity must be a finite real number >= 1"),
        ({"perplexity": float("nan")}, ValueError, "perplexity must be"),
        ({"perplexity": "30"}, TypeError, "perplexity must be"),
        ({"iterations": 0}, ValueError, "iterations must be an int >= 1"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
        ({"pca_dim": 0}, ValueError, "pca_dim must be an int >= 1"),
        ({"early_exaggeration": 0.5}, ValueError, "early_exaggeration must be"),
        ({"exaggeration_iterations": -1}, ValueError, "exaggeration_iterations must be"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite real number > 0"),
        ({"learning_rate": "fast"}, ValueError, "learning_rate must be"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"features": np.random.default_rng(0).normal(size=(10, 3)), "perplexity": 2.0}
    args.update(kwargs)
    features = args["features"]
    before = features.copy() if isinstance(features, np.ndarray) else None
    with pytest.raises(error, match=match):
        tsne(**args)
    if before is not None:
        np.testing.assert_array_equal(features, before)


# ---------------------------------------------------------------- plot_tsne


def test_plot_tsne_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.normal(size=(40, 2)))
    domains = torch.tensor([0] * 10 + [1] * 10 + [3] * 20)
    out = plot_tsne(
        emb, domains, tmp_path / "sub" / "fig.png", ["a", "b", "c", "target"], title="t-SNE"
    )
    assert out == tmp_path / "sub" / "fig.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (900, 900)  # 6 in x 150 dpi


def test_plot_tsne_without_names(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_tsne(np.zeros((4, 2)), [0, 1, 1, 12], str(tmp_path / "fig.png"))
    assert out.is_file()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embedding": np.zeros((5, 3))}, ValueError, r"embedding must have shape \(N, 2\)"),
        ({"embedding": np.full((5, 2), np.inf)}, ValueError, "embedding must be finite"),
        ({"embedding": "points"}, TypeError, "embedding must be"),
        ({"domains": [0, 1, 2]}, ValueError, r"domains must have shape \(5,\)"),
        ({"domains": [0.0, 1.0, 1.0, 0.0, 0.0]}, TypeError, "domains must be"),
        ({"domains": [0, 1, -1, 0, 0]}, ValueError, "domains must be >= 0"),
        ({"domain_names": ["a"]}, ValueError, "domain_names must name every domain id up to 1"),
        ({"domain_names": "ab"}, TypeError, "domain_names must be a sequence of str"),
        ({"title": 3}, TypeError, "title must be a str"),
        ({"path": None}, TypeError, "path must be"),
    ],
)
def test_plot_tsne_bad_arguments_raise_before_drawing(tmp_path, kwargs, error, match):
    args = {"embedding": np.zeros((5, 2)), "domains": [0, 1, 1, 0, 0], "path": tmp_path / "x.png"}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        plot_tsne(**args)
    assert not (tmp_path / "x.png").exists()


def test_plot_tsne_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "metareid\[viz\]"'):
        plot_tsne(np.zeros((4, 2)), [0, 0, 1, 1], tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()
