"""Toy superposition data: sparse ground-truth features packed into fewer dimensions.

Each sample is a sparse, non-negative combination of ``n_features`` true features, each
embedded along a random unit direction of a ``d``-dimensional space (``d < n_features``
is superposition). Feature frequencies are skewed (Zipf-like), features may be correlated
through shared latent factors, and a hierarchy makes some features fire only together
with their parent. A sparse autoencoder that resolves the superposition should find the
true directions (decoder atoms) and true codes (latent activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.special import ndtri

from .._utils import SeedLike, as_rng

__all__ = ["ToySuperposition", "toy_superposition"]


@dataclass(frozen=True)
class ToySuperposition:
    """A toy superposition data set with its ground truth.

    Attributes
    ----------
    X : (n_samples, d) float32 array
        The observed samples, ``codes @ dictionary + noise``.
    dictionary : (n_features, d) float32 array
        The true feature directions, one unit-norm row per feature.
    codes : (n_samples, n_features) float32 CSR matrix
        The true non-negative feature activations.
    frequencies : (n_features,) float array
        The probability with which each feature fires (marginal, after the hierarchy).
    parents : (n_features,) int array
        The parent feature of each feature, ``-1`` for roots.
    params : dict
        The generator's arguments.
    """

    X: np.ndarray
    dictionary: np.ndarray
    codes: sparse.csr_matrix
    frequencies: np.ndarray
    parents: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.dictionary.shape[0]

    def __repr__(self) -> str:
        n, d = self.X.shape
        l0 = self.codes.getnnz() / max(n, 1)
        return (f"ToySuperposition(n_samples={n}, d={d}, n_features={self.n_features}, "
                f"mean_active={l0:.2f})")


def _random_directions(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.normal(size=(n, d))
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def toy_superposition(
    n_features: int = 512,
    d: int = 256,
    n_active: float = 5.0,
    n_samples: int = 20_000,
    *,
    zipf_exponent: float = 0.5,
    correlation: float = 0.0,
    n_factors: int = 16,
    hierarchy: float = 0.0,
    magnitude: tuple[float, float] = (0.5, 1.5),
    noise: float = 0.0,
    seed: SeedLike = 0,
) -> ToySuperposition:
    """Sample sparse data in superposition with a known dictionary and known codes.

    Parameters
    ----------
    n_features
        Number of true features (dictionary rows).
    d
        Dimension of the observed space.
    n_active
        Expected number of active features per sample.
    n_samples
        Number of samples.
    zipf_exponent
        Feature ``i`` (0-based) fires with probability proportional to ``(i + 1) ** -a``,
        rescaled so the expected number of active features is ``n_active``. ``0`` gives
        equal frequencies.
    correlation
        In ``[0, 1)``: the share of each feature's latent Gaussian that comes from
        ``n_factors`` shared factors (a Gaussian copula), so features that load on the same
        factor tend to fire together. ``0`` gives independent features.
    n_factors
        Number of shared factors used when ``correlation > 0``.
    hierarchy
        In ``[0, 1)``: the fraction of features that are children. Each child gets a parent
        among the more frequent root features and fires only when its parent fires.
    magnitude
        Activations of firing features are uniform in ``[low, high]``.
    noise
        Standard deviation of isotropic Gaussian noise added to ``X``.
    seed
        An int or a numpy Generator.

    Returns
    -------
    ToySuperposition
        ``X``, the true ``dictionary``, the true sparse ``codes`` and feature metadata.
    """
    if n_features < 1 or d < 1 or n_samples < 1:
        raise ValueError(f"n_features, d and n_samples must be positive, got "
                         f"{n_features}, {d}, {n_samples}")
    if not 0 < n_active <= n_features:
        raise ValueError(f"n_active must be in (0, n_features={n_features}], got {n_active}")
    if not 0 <= correlation < 1:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}")
    if not 0 <= hierarchy < 1:
        raise ValueError(f"hierarchy must be in [0, 1), got {hierarchy}")
    low, high = magnitude
    if not 0 <= low <= high:
        raise ValueError(f"magnitude must be (low, high) with 0 <= low <= high, got {magnitude}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    rng = as_rng(seed)

    dictionary = _random_directions(n_features, d, rng).astype(np.float32)

    # Which features are children, and of whom. Roots are the more frequent features.
    parents = np.full(n_features, -1, dtype=np.int64)
    n_children = int(round(hierarchy * n_features))
    n_roots = n_features - n_children
    if n_children:
        root_pool = max(1, min(n_roots, n_roots // 2 + 1))
        parents[n_roots:] = rng.integers(0, root_pool, size=n_children)

    # Target marginal frequencies (Zipf-like), scaled to n_active expected per sample.
    rank_weight = (np.arange(n_features) + 1.0) ** -zipf_exponent
    # Find c with sum(min(c * w, 0.99)) = n_active (bisection; clipping keeps p < 1).
    lo, hi = 0.0, n_active / rank_weight.min()
    for _ in range(100):
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if np.minimum(c * rank_weight, 0.99).sum() < n_active else (lo, c)
    freq = np.minimum(hi * rank_weight, 0.99)
    # A child's marginal frequency cannot exceed its parent's.
    child = parents >= 0
    freq[child] = np.minimum(freq[child], 0.5 * freq[parents[child]])
    conditional = freq.copy()
    conditional[child] = freq[child] / freq[parents[child]]

    # Firing: Gaussian copula with optional shared factors, in row chunks to bound memory.
    cut = ndtri(conditional).astype(np.float32)[None, :]
    if correlation > 0:
        assign = rng.integers(0, n_factors, size=n_features)
    fires = np.empty((n_samples, n_features), dtype=bool)
    chunk = max(1, 2**22 // n_features)
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        latent = rng.standard_normal(size=(m, n_features), dtype=np.float32)
        if correlation > 0:
            factors = rng.standard_normal(size=(m, n_factors), dtype=np.float32)
            latent *= np.float32(np.sqrt(1 - correlation))
            latent += np.float32(np.sqrt(correlation)) * factors[:, assign]
        fires[start:start + m] = latent < cut
    if n_children:
        fires[:, child] &= fires[:, parents[child]]

    values = rng.uniform(low, high, size=fires.sum()).astype(np.float32)
    rows, cols = np.nonzero(fires)
    codes = sparse.csr_matrix((values, (rows, cols)), shape=(n_samples, n_features),
                              dtype=np.float32)
    X = np.asarray(codes @ dictionary, dtype=np.float32)
    if noise > 0:
        X += rng.normal(scale=noise, size=X.shape).astype(np.float32)
    params = dict(n_features=n_features, d=d, n_active=n_active, n_samples=n_samples,
                  zipf_exponent=zipf_exponent, correlation=correlation, n_factors=n_factors,
                  hierarchy=hierarchy, magnitude=list(magnitude), noise=noise)
    return ToySuperposition(X=X, dictionary=dictionary, codes=codes,
                            frequencies=fires.mean(0), parents=parents, params=params)
