"""The paper's token normalisation (Park et al. 2026, REFERENCE_CODE.md §4).

Before its SAE sees a spatial token, the paper's code

1. divides the unit's whole feature map by the L2 norm of that unit's GAP vector (the
   mean token; one scalar per image / tile / cell, "gap-scalar"),
2. centres the tokens, and
3. divides every token by its own L2 norm.

Its code centres two ways: SAE training subtracts the mean over *all tokens of the image
batch* (64 images × 4096 tokens), while the cached per-image vectors used by every
downstream figure subtract *each image's own mean token*. cellsae offers both:

- ``"paper"`` (the preset default): per-unit centring. It is what the paper's reported
  geometry, probes and trajectories were computed from; it makes a unit's tokens depend
  on that unit alone, so training and encoding see exactly the same tokens, whatever the
  batch, split or data order (no unit's code leaks into another's). With per-unit
  centring the GAP scalar of step 1 cancels in step 3; it is applied anyway, as written.
- ``"paper_batch"``: centring on one mean over many units, the mean of the GAP-scaled
  tokens. :func:`normalize_tokens` on a batch does it as the training code does (the
  batch's mean); the streaming path (:class:`TokenNormalizer`, :func:`normalized_source`)
  uses the mean over the whole token store — the limit of the paper's batch mean as the
  batch grows, deterministic and identical at training and encoding time.
- ``"none"``: tokens as stored.

:func:`normalize_tokens` is the pure, vectorised core. :class:`TokenNormalizer` holds the
per-unit statistics of a token store (one streaming pass, grouped by the store's cell
index), :class:`NormalizedTokenStore` is a :class:`cellsae.embed.TokenStore` whose
``tokens`` are normalised on read (so :func:`cellsae.tl.token_codes`, ``iter_batches`` and
the activation maps see normalised tokens), and :func:`normalized_source` is the
:class:`~cellsae.sae.data.ArraySource` the trainer streams.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["TOKEN_NORMS", "NormalizedTokenStore", "NormalizedTokens", "TokenNormalizer",
           "check_token_norm", "normalize_tokens", "normalized_source"]

logger = logging.getLogger(__name__)

TOKEN_NORMS = ("none", "paper", "paper_batch")
EPS = 1e-8  # a norm below this counts as zero: the token (or map) maps to zeros

# elements (rows × dim) read at once when a store's per-unit statistics are gathered
_BLOCK_ELEMENTS = 1 << 24


def check_token_norm(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`TOKEN_NORMS`, else raise a ValueError."""
    if mode not in TOKEN_NORMS:
        raise ValueError(f"token_norm must be one of {list(TOKEN_NORMS)}, got {mode!r}")
    return mode


def _unit_rows(x: np.ndarray, eps: float) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > eps)


def _group_means(tokens: np.ndarray, cell_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique units of ``cell_index`` and the mean token of each, (k,) and (k, d)."""
    units, inverse = np.unique(cell_index, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(units)).astype(np.float64)
    member = sparse.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))),
                               shape=(len(units), len(inverse)))
    sums = np.asarray(member @ tokens.astype(np.float64))
    return units, sums / counts[:, None]


def normalize_tokens(tokens, cell_index=None, *, mode: str = "paper", gap=None,
                     center=None, eps: float = EPS) -> np.ndarray:
    """Normalise spatial tokens as the paper does (gap-scalar, centre, unit norm).

    Parameters
    ----------
    tokens : (n_tokens, d) array
        Tokens of one or more units (any order).
    cell_index : (n_tokens,) int array
        The unit (image, tile or cell) each token belongs to. Required unless ``mode`` is
        ``"none"``.
    mode : {"paper", "paper_batch", "none"}
        ``"paper"``: subtract each unit's own mean token; ``"paper_batch"``: subtract one
        mean over all (GAP-scaled) tokens given, i.e. the batch; ``"none"``: return the
        tokens as float32.
    gap : (n_units, d) array, optional
        Each unit's GAP vector (mean token), indexed by ``cell_index``. Default: computed
        from the tokens given (they must then hold *all* tokens of their units).
    center : (d,) array, optional
        ``"paper_batch"`` only: the mean to subtract (e.g. over a whole store); default
        the mean of the GAP-scaled tokens given.
    eps : float
        Norms at or below ``eps`` count as zero: a unit whose GAP vector is zero is not
        rescaled, and a token that is zero after centring stays zero.

    Returns
    -------
    (n_tokens, d) float32 array; every row has unit norm or is zero.
    """
    check_token_norm(mode)
    x = np.asarray(tokens)
    if x.ndim != 2:
        raise ValueError(f"tokens must be 2-D (n_tokens, d), got shape {x.shape}")
    x = x.astype(np.float32, copy=mode == "none")
    if mode == "none":
        return x
    if cell_index is None:
        raise ValueError(f"token_norm {mode!r} needs cell_index (the unit of each token)")
    cell_index = np.asarray(cell_index)
    if cell_index.shape != (len(x),):
        raise ValueError(f"cell_index must have one entry per token ({len(x)}), got shape "
                         f"{cell_index.shape}")
    if len(x) == 0:
        return x
    if not np.issubdtype(cell_index.dtype, np.integer) or cell_index.min() < 0:
        raise ValueError("cell_index must hold non-negative integers")
    if gap is None:
        units, means = _group_means(x, cell_index)
        rows = np.searchsorted(units, cell_index)
    else:
        means = np.asarray(gap)
        if means.ndim != 2 or means.shape[1] != x.shape[1]:
            raise ValueError(f"gap must be (n_units, {x.shape[1]}), got shape {means.shape}")
        if cell_index.max() >= len(means):
            raise ValueError(f"cell_index holds {int(cell_index.max())} but gap has only "
                             f"{len(means)} units")
        rows = cell_index
    # per token, its unit's GAP vector: O(n_tokens × d) whatever the number of units
    g = np.asarray(means[rows], np.float32)
    norms = np.linalg.norm(g, axis=1)
    scale = np.where(norms > eps, 1.0 / np.maximum(norms, eps), 1.0).astype(np.float32)
    y = x * scale[:, None]
    if mode == "paper":
        y -= g * scale[:, None]
    else:
        mu = y.mean(0, dtype=np.float64) if center is None else np.asarray(center, np.float64)
        if mu.shape != (x.shape[1],):
            raise ValueError(f"center must have shape ({x.shape[1]},), got {mu.shape}")
        y -= mu.astype(np.float32)
    return _unit_rows(y, eps)


class TokenNormalizer:
    """The per-unit statistics of a token store, applied to any block of its rows.

    Parameters
    ----------
    gap : (n_cells, d) float array
        Every unit's mean token (its GAP vector).
    mode : {"paper", "paper_batch"}
    center : (d,) array, optional
        ``"paper_batch"``: the mean of the GAP-scaled tokens over the store.
    """

    def __init__(self, gap: np.ndarray, mode: str, center: np.ndarray | None = None) -> None:
        check_token_norm(mode)
        if mode == "none":
            raise ValueError("TokenNormalizer is for 'paper' or 'paper_batch'; for 'none' "
                             "read the tokens as stored")
        self.gap = np.asarray(gap, np.float32)
        self.mode = mode
        self.center = None if center is None else np.asarray(center, np.float64)
        if mode == "paper_batch" and self.center is None:
            raise ValueError("mode 'paper_batch' needs center (the store's mean GAP-scaled "
                             "token); use TokenNormalizer.from_store")

    @classmethod
    def from_store(cls, store, mode: str) -> TokenNormalizer:
        """Gather the statistics of ``store`` (a TokenStore) in one streaming pass.

        Tokens are read in blocks of whole units (the store keeps a unit's tokens
        contiguous, ``offsets``), about 16M values at a time.
        """
        check_token_norm(mode)
        raw = getattr(store, "raw_tokens", store.tokens)  # never statistics of normalised rows
        offsets = np.asarray(store.offsets, np.int64)
        n_cells, dim = int(store.n_cells), int(store.dim)
        gap = np.zeros((n_cells, dim), np.float64)
        per_cell = max(1, int(store.tokens_per_cell))
        step = max(1, _BLOCK_ELEMENTS // (per_cell * max(dim, 1)))
        for lo in range(0, n_cells, step):
            hi = min(n_cells, lo + step)
            a, b = int(offsets[lo]), int(offsets[hi])
            if b <= a:
                continue
            block = store._rows(raw, a, b).astype(np.float64)
            starts = offsets[lo:hi] - a
            filled = offsets[lo + 1:hi + 1] > offsets[lo:hi]
            sums = np.add.reduceat(block, np.minimum(starts, len(block) - 1), axis=0)
            counts = np.diff(offsets[lo:hi + 1]).astype(np.float64)
            gap[lo:hi][filled] = sums[filled] / counts[filled, None]
        center = None
        if mode == "paper_batch":
            # mean over all tokens of token / ||gap||: per unit, count × gap / ||gap||
            counts = np.diff(offsets).astype(np.float64)
            norms = np.linalg.norm(gap, axis=1)
            scaled = np.divide(gap, norms[:, None], out=gap.copy(), where=norms[:, None] > EPS)
            center = (counts[:, None] * scaled).sum(0) / max(counts.sum(), 1.0)
        return cls(gap, mode, center)

    def __call__(self, tokens, cell_index) -> np.ndarray:
        """Normalised ``tokens`` (rows of the store, any order); float32."""
        return normalize_tokens(tokens, cell_index, mode=self.mode, gap=self.gap,
                                center=self.center)


class NormalizedTokens:
    """A read-only, row-sliceable view of a store's tokens, normalised on read.

    Has ``shape``, ``dtype`` (float32), ``chunks`` and ``basename`` like the zarr array it
    wraps, so :class:`~cellsae.sae.data.ArraySource` and TokenStore code read it as is.
    """

    def __init__(self, raw, cell_index, normalizer: TokenNormalizer) -> None:
        self.raw = raw
        self.cell_index = cell_index
        self.normalizer = normalizer
        self.shape = tuple(raw.shape)
        self.dtype = np.dtype(np.float32)
        self.chunks = getattr(raw, "chunks", (self.shape[0], self.shape[1]))
        self.basename = getattr(raw, "basename", "tokens")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item) -> np.ndarray:
        if not isinstance(item, slice):
            raise TypeError("normalised tokens are read by row slices (tokens[a:b])")
        rows = np.asarray(self.raw[item], np.float32)
        return self.normalizer(rows, np.asarray(self.cell_index[item]))


def _token_store_class():
    from ..embed import TokenStore

    return TokenStore


class NormalizedTokenStore(_token_store_class()):  # type: ignore[misc]
    """A :class:`cellsae.embed.TokenStore` whose ``tokens`` are normalised on read.

    Parameters
    ----------
    path : str or path-like
        The token store.
    mode : {"paper", "paper_batch", "none"}
        See :func:`normalize_tokens`; ``"none"`` gives the raw tokens.
    normalizer : TokenNormalizer, optional
        Statistics already gathered for this store (else one pass over it).

    ``store.token_norm`` is the mode and ``store.raw_tokens`` the stored array.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "paper", *,
                 normalizer: TokenNormalizer | None = None) -> None:
        super().__init__(path)
        check_token_norm(mode)
        self.token_norm = mode
        self.raw_tokens = self.tokens
        if mode != "none":
            if normalizer is None:
                normalizer = TokenNormalizer.from_store(self, mode)
            elif normalizer.mode != mode or normalizer.gap.shape != (self.n_cells, self.dim):
                raise ValueError(f"the normalizer ({normalizer.mode}, gap "
                                 f"{normalizer.gap.shape}) does not fit this store ({mode}, "
                                 f"{self.n_cells} units × {self.dim})")
            self.normalizer = normalizer
            self.tokens = NormalizedTokens(self.raw_tokens, self.cell_index, normalizer)


def normalized_source(path: str | os.PathLike, mode: str, *, store=None) -> Any:
    """The :class:`~cellsae.sae.data.ArraySource` of a token store under ``mode``.

    ``store`` (a :class:`NormalizedTokenStore` of ``path`` in ``mode``) reuses its statistics.
    """
    from .data import ArraySource, open_source

    check_token_norm(mode)
    if mode == "none":
        return open_source(path, key="tokens")
    if store is None:
        store = NormalizedTokenStore(path, mode)
    return ArraySource(store.tokens, name=f"{path}:tokens (token_norm {mode})")
