"""Exact t-SNE (van der Maaten & Hinton, JMLR 2008) for looking at ReID features.

The paper's Fig. 5 embeds the features of the source domains and the unseen target domain
in 2-D to show that M3L mixes the domains. :func:`tsne` computes such an embedding with the
exact O(N^2) algorithm, vectorised in torch (float64), which is fast enough for a few
thousand points and needs no compiled extension:

1. optional PCA of the (centred) features to ``pca_dim`` dimensions;
2. Gaussian conditionals ``p_{j|i} ∝ exp(-beta_i ||x_i - x_j||^2)``, each row's precision
   ``beta_i`` found by bisection (a block of rows at once) so that the row's perplexity
   ``2^{H(P_i)}`` equals ``perplexity``;
3. symmetrised joint probabilities ``p_ij = (p_{j|i} + p_{i|j}) / (2N)``;
4. Student-t similarities ``q_ij ∝ (1 + ||y_i - y_j||^2)^{-1}`` in the embedding and
   gradient descent on ``KL(P || Q)`` with momentum, early exaggeration and the adaptive
   per-coordinate gains of the authors' reference implementation.

It is kept hand-written on purpose: scikit-learn's ``TSNE`` (exact and Barnes-Hut) and
openTSNE were measured against it on the features the library embeds (see
``docs/visualization.md``, "Why not scikit-learn or openTSNE"). They draw the same picture,
but scikit-learn's exact one is 3-4.5x slower, the approximate ones are faster only above
the sizes the library embeds and keep less of the exact neighbourhoods (Barnes-Hut ends at a
3 % higher KL), scikit-learn cannot keep this signature (``iterations < 250``,
``exaggeration_iterations``, ``dim > 3`` with Barnes-Hut), none runs on a CUDA tensor, and
each would add a dependency.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from metareid._validation import check_int
from metareid._validation import describe as _describe

__all__ = ["tsne"]

_MIN_POINTS = 4  # the smallest N for which the clamped perplexity (N - 1) / 3 is >= 1
_INIT_STD = 1e-4  # the paper's initialisation N(0, 1e-4 I)
_P_FLOOR = 1e-12  # floor of the joint probabilities (reference implementation)
_MIN_GAIN = 0.01
_GAIN_UP = 0.2  # gains + 0.2 where the gradient flips sign, gains * 0.8 otherwise
_GAIN_DOWN = 0.8
_MOMENTUM = (0.5, 0.8)  # during / after the early-exaggeration phase
_ENTROPY_TOL = 1e-5  # nats, per row, for the perplexity bisection
_BISECTION_STEPS = 200
# (rows, N) blocks of about this many elements: 2 MB of float64 on the CPU (cache-sized),
# large on accelerators where kernel launches, not memory traffic, are the cost.
_BLOCK_ELEMENTS_CPU = 1 << 18
_BLOCK_ELEMENTS_ACCELERATOR = 1 << 26


def _as_features(features: object) -> Tensor:
    """``features`` (N, D) as a float64 tensor (tensors keep their device)."""
    expected = "a 2-D real-valued numpy array or torch tensor of shape (N, D)"
    if isinstance(features, np.ndarray):
        if features.dtype.kind not in "iuf":
            raise TypeError(f"features must be {expected}, got {_describe(features)}")
        x = torch.from_numpy(np.ascontiguousarray(features))
    elif isinstance(features, Tensor):
        if features.is_complex() or features.dtype == torch.bool:
            raise TypeError(f"features must be {expected}, got {_describe(features)}")
        x = features.detach()
    else:
        raise TypeError(f"features must be {expected}, got {_describe(features)}")
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"features must be {expected}, got shape {tuple(x.shape)}")
    if x.shape[0] < _MIN_POINTS:
        raise ValueError(
            f"features must hold at least {_MIN_POINTS} points (rows), got shape {tuple(x.shape)}"
        )
    x = x.to(torch.float64)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        count = int((~finite).sum())
        raise ValueError(
            f"features must be finite, got {count} NaN or infinite entries "
            f"in an array of shape {tuple(x.shape)}"
        )
    return x


def _check_real(name: str, value: object, minimum: float, strict: bool = False) -> float:
    expected = f"a finite real number {'>' if strict else '>='} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def _pca(x: Tensor, k: int) -> Tensor:
    """Project ``x`` (N, D), centred, onto its top-``k`` principal axes: shape (N, k)."""
    centered = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    return centered @ vh[:k].T


def _block_rows(n: int, device: torch.device) -> int:
    """Rows per block so that an (rows, N) float64 block stays cache-sized on the CPU."""
    elements = _BLOCK_ELEMENTS_CPU if device.type == "cpu" else _BLOCK_ELEMENTS_ACCELERATOR
    return max(1, min(n, elements // n))


def _row_entropies(
    d: Tensor, beta: Tensor, diagonal: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``exp(-beta_i d_ij)`` (R, N), unnormalised, their sums (R,) and entropies (R,)."""
    p = torch.exp(-beta[:, None] * d)
    p[diagonal] = 0.0
    total = p.sum(dim=1)
    entropy = torch.log(total) + beta * (d * p).sum(dim=1) / total
    return p, total, entropy


def _calibrate_rows(
    d: Tensor, diagonal: tuple[Tensor, Tensor], target: float, tol: float, max_steps: int
) -> Tensor:
    """Rows of ``p_{j|i}`` (R, N) from shifted squared distances ``d`` (R, N) by bisection."""
    mean = d.sum(dim=1) / (d.shape[1] - 1)
    beta = torch.where(mean > 0, 1.0 / mean, torch.ones_like(mean))
    low = torch.zeros_like(beta)
    high = torch.full_like(beta, math.inf)
    p, total, entropy = _row_entropies(d, beta, diagonal)
    for _ in range(max_steps):
        gap = entropy - target
        active = gap.abs() >= tol
        if not bool(active.any()):
            break
        too_flat = gap > 0  # entropy too high: sharpen (raise beta)
        low = torch.where(active & too_flat, beta, low)
        high = torch.where(active & ~too_flat, beta, high)
        stepped = torch.where(torch.isinf(high), beta * 2.0, (low + high) / 2.0)
        beta = torch.where(active, stepped, beta)
        p, total, entropy = _row_entropies(d, beta, diagonal)
    return p / total[:, None]


def _conditional_probabilities(
    x: Tensor,
    perplexity: float,
    tol: float = _ENTROPY_TOL,
    max_steps: int = _BISECTION_STEPS,
) -> Tensor:
    """Gaussian conditionals ``p_{j|i}`` of the rows of ``x`` with the given perplexity.

    Row ``i`` is ``exp(-beta_i d_ij) / sum_{k != i} exp(-beta_i d_ik)`` with ``d_ij`` the
    squared Euclidean distance and ``p_{i|i} = 0``. The precisions ``beta_i`` are found by
    bisection, a block of rows at a time with all its rows at once: doubled (or halved)
    until the row's entropy ``H_i`` (in nats) is bracketed around ``log(perplexity)``, then
    bisected until ``|H_i - log(perplexity)| < tol`` (converged rows are frozen) or
    ``max_steps`` steps have run.

    Args:
        x: the points, shape (N, D), float64.
        perplexity: the target perplexity, in [1, N - 1).
        tol: tolerance on each row's entropy, in nats.
        max_steps: the most bisection steps.

    Returns:
        ``p_{j|i}`` in row ``i``, shape (N, N); every row sums to 1 and has a zero diagonal.
    """
    n = x.shape[0]
    x = x - x.mean(dim=0)  # distances are unchanged and suffer less cancellation
    sq = (x * x).sum(dim=1)
    target = math.log(perplexity)
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    rows = _block_rows(n, x.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        local = torch.arange(stop - start, device=x.device)
        diagonal = (local, local + start)
        d = torch.addmm(sq[None, :], x[start:stop], x.T, alpha=-2.0)
        d.add_(sq[start:stop, None]).clamp_min_(0.0)
        d[diagonal] = math.inf
        # Shifting a row by its minimum leaves p_{j|i} unchanged and keeps the nearest
        # neighbour's weight at exp(0) = 1, so the row sum never underflows.
        d.sub_(d.min(dim=1, keepdim=True).values)
        d[diagonal] = 0.0
        out[start:stop] = _calibrate_rows(d, diagonal, target, tol, max_steps)
    return out


def _joint_probabilities(x: Tensor, perplexity: float) -> Tensor:
    """Symmetrised ``p_ij`` of the rows of ``x`` (N, D): shape (N, N), zero diagonal."""
    n = x.shape[0]
    conditional = _conditional_probabilities(x, perplexity)
    p = ((conditional + conditional.T) / (2.0 * n)).clamp_min_(_P_FLOOR)
    return p.fill_diagonal_(0.0)


def _skinny_matmul(a: Tensor, y: Tensor) -> Tensor:
    """``a @ y`` for a block (R, N) and a narrow embedding (N, d): shape (R, d).

    One matrix-vector product per column of ``y``: on the CPU this is several times faster
    than a general matmul for d = 2 or 3, whose threading also stalls on a busy machine.
    """
    return torch.stack([torch.mv(a, y[:, c]) for c in range(y.shape[1])], dim=1)


def _kl_gradient(p: Tensor, y: Tensor) -> Tensor:
    """Gradient of ``KL(P || Q(y))`` w.r.t. the embedding ``y`` (N, d): shape (N, d).

    With ``k_ij = (1 + ||y_i - y_j||^2)^{-1}`` (``k_ii = 0``), ``Z = sum k_ij`` and
    ``q_ij = k_ij / Z``, Eq. 5 of the paper reads
    ``dC/dy_i = 4 sum_j (p_ij - q_ij) k_ij (y_i - y_j)``. It is computed as
    ``4 [L(P * K) - L(K * K) / Z] y`` with ``L(A) y = rowsum(A) * y - A @ y``, a block of rows
    at a time, so that each block of K is used while it is in cache and Z is needed only at
    the end: one pass over P per call, O(N * block) extra memory.

    Args:
        p: joint probabilities, shape (N, N), zero diagonal.
        y: the embedding, shape (N, d).
    """
    n = y.shape[0]
    sq = (y * y).sum(dim=1)
    attract = torch.empty_like(y)  # L(P * K) y
    repulse = torch.empty_like(y)  # L(K * K) y
    z = y.new_zeros(())
    rows = _block_rows(n, y.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        local = torch.arange(stop - start, device=y.device)
        block = y[start:stop]
        k = torch.addmm(sq[None, :], block, y.T, alpha=-2.0)
        k.add_(sq[start:stop, None]).clamp_min_(0.0).add_(1.0).reciprocal_()
        k[local, local + start] = 0.0
        z += k.sum()
        a = p[start:stop] * k
        attract[start:stop] = a.sum(dim=1, keepdim=True) * block - _skinny_matmul(a, y)
        k.mul_(k)
        repulse[start:stop] = k.sum(dim=1, keepdim=True) * block - _skinny_matmul(k, y)
    return 4.0 * (attract - repulse / z)


def tsne(
    features: Tensor | np.ndarray,
    dim: int = 2,
    perplexity: float = 30.0,
    iterations: int = 500,
    seed: int = 0,
    pca_dim: int | None = 50,
    *,
    early_exaggeration: float = 12.0,
    exaggeration_iterations: int = 250,
    learning_rate: float | Literal["auto"] = "auto",
) -> np.ndarray:
    """Embed features (N, D) in ``dim`` dimensions with exact t-SNE.

    The affinities are Gaussian conditionals whose per-point bandwidth is found by
    bisection so that every row's perplexity equals ``perplexity``, symmetrised into joint
    probabilities P. The embedding starts from ``N(0, 1e-4 I)`` drawn from ``seed`` and
    follows ``dim``-D Student-t similarities Q by gradient descent on ``KL(P || Q)``:
    ``update = momentum * update - learning_rate * gains * grad``, recentred every step;
    each gain grows by 0.2 where the gradient's sign differs from the last update's and
    shrinks by x0.8 otherwise, never below 0.01 (the authors' reference implementation).
    The first ``min(exaggeration_iterations, iterations // 2)`` iterations multiply P by
    ``early_exaggeration`` and use momentum 0.5 (at least half of the run optimises the
    true objective); the rest use momentum 0.8 and start with the update zeroed and the
    gains reset to 1, as two separate optimisations (scikit-learn does the same; the
    reference code keeps them, which lets the embedding overshoot in short runs).
    Nothing is normalised: pass L2-normalised features if distances should be cosine-like.

    Memory and time are O(N^2) per iteration (float64, on the features' device: numpy
    input runs on the CPU). The result is deterministic for a given ``seed`` on a given
    machine.

    Args:
        features: the points, shape (N, D), N >= 4, finite; integer dtypes are accepted.
        dim: the embedding dimension (2 for a scatter plot). Default 2.
        perplexity: the effective number of neighbours, >= 1. Default 30. The usual rule
            ``perplexity <= (N - 1) / 3`` is enforced by clamping: a larger value is
            replaced by ``(N - 1) / 3`` with a ``UserWarning``.
        iterations: gradient steps. Default 500.
        seed: seed of the initial embedding, >= 0. Default 0.
        pca_dim: if not ``None`` and smaller than D, the centred features are first
            projected onto their ``pca_dim`` principal axes. Default 50.
        early_exaggeration: factor on P during the early phase, >= 1. Default 12.
        exaggeration_iterations: length of the early phase (clamped to ``iterations // 2``
            as above), >= 0. Default 250.
        learning_rate: step size > 0, or ``"auto"`` (default) for
            ``max(N / early_exaggeration / 4, 50)`` (Belkina et al., 2019, in this
            gradient's scale, which includes the factor 4 of the paper's Eq. 5).

    Returns:
        The embedding, shape (N, dim), float64, centred.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``features`` is not 2-D, has fewer than 4 rows or non-finite
            entries, or a number is out of range.

    Example:
        >>> import numpy as np
        >>> from metareid.viz import tsne
        >>> x = np.random.default_rng(0).normal(size=(40, 8))
        >>> y = tsne(x, perplexity=5.0, iterations=100)
        >>> y.shape, bool(np.isfinite(y).all())
        ((40, 2), True)
    """
    x = _as_features(features)
    dim = check_int("dim", dim, 1)
    perplexity = _check_real("perplexity", perplexity, 1.0)
    iterations = check_int("iterations", iterations, 1)
    seed = check_int("seed", seed, 0)
    if pca_dim is not None:
        pca_dim = check_int("pca_dim", pca_dim, 1)
    early_exaggeration = _check_real("early_exaggeration", early_exaggeration, 1.0)
    exaggeration_iterations = check_int("exaggeration_iterations", exaggeration_iterations, 0)
    n = x.shape[0]
    if isinstance(learning_rate, str):
        if learning_rate != "auto":
            raise ValueError(
                f'learning_rate must be "auto" or a finite real number > 0, got {learning_rate!r}'
            )
        step = max(n / early_exaggeration / 4.0, 50.0)
    else:
        step = _check_real("learning_rate", learning_rate, 0.0, strict=True)
    max_perplexity = (n - 1) / 3.0
    if perplexity > max_perplexity:
        warnings.warn(
            f"perplexity {perplexity:g} is too large for {n} points; "
            f"using (N - 1) / 3 = {max_perplexity:g}",
            UserWarning,
            stacklevel=2,
        )
        perplexity = max_perplexity

    if pca_dim is not None and pca_dim < x.shape[1]:
        x = _pca(x, pca_dim)
    p = _joint_probabilities(x, perplexity)
    p_early = p * early_exaggeration

    generator = torch.Generator().manual_seed(seed)
    init = torch.randn(n, dim, generator=generator, dtype=torch.float64) * _INIT_STD
    y = init.to(x.device)
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    early = min(exaggeration_iterations, iterations // 2)
    for t in range(iterations):
        in_early_phase = t < early
        if t == early and t > 0:
            # The exaggerated phase optimises another objective: start the true one afresh.
            update.zero_()
            gains.fill_(1.0)
        grad = _kl_gradient(p_early if in_early_phase else p, y)
        momentum = _MOMENTUM[0] if in_early_phase else _MOMENTUM[1]
        same_sign = (grad > 0) == (update > 0)
        gains = torch.where(same_sign, gains * _GAIN_DOWN, gains + _GAIN_UP).clamp_min_(_MIN_GAIN)
        update = momentum * update - step * gains * grad
        y = y + update
        y = y - y.mean(dim=0)
    return y.cpu().numpy()
