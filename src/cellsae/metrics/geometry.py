"""Geometric fidelity of a representation: does it keep a phenotype smooth and readable?

Pure functions on arrays (dense ``numpy`` or ``scipy.sparse``); no AnnData here. The
AnnData-facing wrapper is :func:`cellsae.tl.compare_representations`.

The definitions follow the paper's code (REFERENCE_CODE.md §6) where it is explicit:

* kNN local/global SD ratio: Euclidean kNN with the cell itself excluded; the local SD
  is the population SD of the neighbours' phenotype, divided by the SD of the phenotype over
  all cells of the same stratum; the metric is the mean ratio over cells.
* Moran's I: directed binary kNN weights (``w_ij = 1`` if ``j`` is among the ``k``
  neighbours of ``i``), so ``W = n k``. Unlike the paper's simplified z-test we give a
  permutation p-value (shuffle the phenotype over cells).
* Phenotype R²: StandardScaler → PCA → RidgeCV with out-of-fold predictions pooled
  into one R²; with ``groups`` the folds are grouped (e.g. by donor or plate), which the
  paper did not do.
* Effective rank: exp of the entropy of the normalised singular values of the
  column-centred matrix. Linear CKA: HSIC with linear kernels, normalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from .._utils import SeedLike, as_rng

logger = logging.getLogger(__name__)

__all__ = [
    "KnnSdResult",
    "MoransIResult",
    "R2Result",
    "knn_indices",
    "knn_sd_ratio",
    "morans_i",
    "phenotype_r2",
    "trustworthiness",
    "continuity",
    "effective_rank",
    "linear_cka",
]


# -- validation helpers -------------------------------------------------------------------


def _as_matrix(x, name: str = "x"):
    """Return a 2-D float array or CSR matrix, raising on bad shape or non-finite values."""
    if sparse.issparse(x):
        x = sparse.csr_matrix(x, dtype=np.float64) if x.dtype.kind not in "f" else x.tocsr()
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_cells, n_features), got shape {x.shape}")
        if x.nnz and not np.isfinite(x.data).all():
            raise ValueError(f"{name} contains NaN or Inf values; remove or impute them first")
        return x
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64 if x.dtype.kind != "f" else x.dtype, copy=False)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_cells, n_features), got shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))
        raise ValueError(
            f"{name} contains NaN or Inf in {len(bad)} row(s) (first: row {int(bad[0])}); "
            "remove or impute them first"
        )
    return x


def _as_values(values, n: int, name: str = "values") -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind == "b":
        v = v.astype(np.float64)
    if v.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric (or boolean), got dtype {v.dtype}")
    v = v.astype(np.float64).ravel()
    if v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries but the representation has {n} rows")
    if not np.isfinite(v).all():
        raise ValueError(
            f"{name} has {int((~np.isfinite(v)).sum())} NaN/Inf entries; drop those cells first"
        )
    return v


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= n:
        raise ValueError(f"k={k} neighbours need at least k+1={k + 1} cells, got {n}")
    return int(k)


# -- kNN graph ----------------------------------------------------------------------------


def knn_indices(x, k: int = 5, *, metric: str = "euclidean", n_jobs: int | None = None
                ) -> np.ndarray:
    """Indices of each cell's ``k`` nearest neighbours, the cell itself excluded.

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix
    k : int
        Number of neighbours.
    metric : str
        Any metric ``sklearn.neighbors.NearestNeighbors`` accepts (Euclidean as in the paper).

    Returns
    -------
    (n_cells, k) int64 array; row ``i`` lists the neighbours of ``i`` nearest first.
    Exact duplicates of a cell can appear among its neighbours; the cell itself never does.
    """
    from sklearn.neighbors import NearestNeighbors

    x = _as_matrix(x)
    n = x.shape[0]
    k = _check_k(k, n)
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric, n_jobs=n_jobs).fit(x)
    idx = nn.kneighbors(return_distance=False)  # querying the fitted data excludes self
    return idx[:, :k].astype(np.int64)


def _neighbors(x, k: int, neighbors) -> np.ndarray:
    if neighbors is None:
        if x is None:
            raise ValueError("pass either a representation x or precomputed neighbors")
        return knn_indices(x, k)
    nb = np.asarray(neighbors)
    if nb.ndim != 2 or nb.dtype.kind not in "iu":
        raise ValueError(f"neighbors must be an (n_cells, k) integer array, got {nb.shape} {nb.dtype}")
    if nb.size and (nb.min() < 0 or nb.max() >= nb.shape[0]):
        raise ValueError("neighbors contains indices outside [0, n_cells)")
    return nb.astype(np.int64, copy=False)


def _strata(strata, n: int) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    s = np.asarray(strata).ravel()
    if s.shape[0] != n:
        raise ValueError(f"strata has {s.shape[0]} entries but there are {n} cells")
    _, inverse = np.unique(s.astype(str), return_inverse=True)
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]


# -- kNN local/global SD ------------------------------------------------------------------


@dataclass(frozen=True)
class KnnSdResult:
    """Local (k-neighbourhood) vs global variability of a phenotype.

    ``ratio`` < 1 means neighbours share the phenotype more than random cells do; a
    representation that scatters the phenotype gives about 1.
    """

    ratio: float  # mean over cells of local_sd / global_sd (the paper's figure)
    median_ratio: float
    local_sd: np.ndarray  # (n_cells,) SD of the phenotype among each cell's k neighbours
    per_cell_ratio: np.ndarray  # (n_cells,) local_sd / global SD of the cell's stratum
    global_sd: dict = field(default_factory=dict)  # stratum label -> SD over that stratum
    k: int = 5

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "median_ratio": self.median_ratio, "k": self.k,
                "global_sd": {str(a): float(b) for a, b in self.global_sd.items()}}


def knn_sd_ratio(x, values, *, k: int = 5, strata=None, neighbors=None) -> KnnSdResult:
    """kNN local/global SD ratio of a phenotype (e.g. death) over a representation.

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix, or None when ``neighbors`` is given
        The representation; Euclidean distances, self excluded.
    values : (n_cells,) numeric or boolean array
        The phenotype (a death rate, or a 0/1 death call).
    k : int
        Neighbourhood size (the paper reports k = 5).
    strata : (n_cells,) array, optional
        Run the analysis separately within each stratum (the paper: within each mutant
        class): neighbours are searched among cells of the same stratum and the global SD
        is the stratum's SD. ``None`` treats all cells as one stratum.
    neighbors : (n_cells, k) int array, optional
        Precomputed neighbour indices (only without ``strata``).

    Returns
    -------
    KnnSdResult
        ``ratio`` is the mean of ``local_sd / global_sd`` over cells.

    Raises
    ------
    ValueError
        If the phenotype is constant within a stratum (the ratio is undefined there).
    """
    n = x.shape[0] if x is not None else np.asarray(neighbors).shape[0]
    v = _as_values(values, n)
    if strata is not None and neighbors is not None:
        raise ValueError("neighbors cannot be combined with strata; pass one or the other")
    groups = _strata(strata, n)
    labels = np.asarray(strata).ravel() if strata is not None else np.zeros(n, dtype=int)
    local = np.empty(n)
    ratio = np.empty(n)
    global_sd: dict = {}
    for idx in groups:
        sub_v = v[idx]
        gsd = float(sub_v.std())
        label = labels[idx[0]]
        if gsd == 0:
            raise ValueError(
                f"the phenotype is constant (SD 0) in stratum {label!r} ({len(idx)} cells); "
                "the local/global SD ratio is undefined there — drop that stratum"
            )
        if neighbors is not None:
            nb = _neighbors(None, k, neighbors)
        else:
            nb = knn_indices(_take_rows(x, idx), k)
        sd = sub_v[nb].std(axis=1)
        local[idx] = sd
        ratio[idx] = sd / gsd
        global_sd[label] = gsd
    return KnnSdResult(ratio=float(ratio.mean()), median_ratio=float(np.median(ratio)),
                       local_sd=local, per_cell_ratio=ratio, global_sd=global_sd, k=int(k))


def _take_rows(x, idx):
    x = _as_matrix(x)
    return x[idx]


# -- Moran's I ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MoransIResult:
    """Global Moran's I of a phenotype on a directed kNN graph, with a permutation test."""

    i: float
    expected: float  # -1/(n-1), the expectation under no spatial autocorrelation
    p_value: float  # one-sided, P(I_perm >= I); NaN when n_permutations == 0
    z_score: float  # (I - mean of the permutation nulls) / their SD; NaN without permutations
    n_permutations: int
    k: int

    def to_dict(self) -> dict:
        return {"i": self.i, "expected": self.expected, "p_value": self.p_value,
                "z_score": self.z_score, "n_permutations": self.n_permutations, "k": self.k}


def _morans_stat(z: np.ndarray, nb: np.ndarray) -> float:
    n, k = nb.shape
    return float((n / (n * k)) * (z @ z[nb].sum(axis=1)) / (z @ z))


def morans_i(x, values, *, k: int = 5, neighbors=None, n_permutations: int = 999,
             seed: SeedLike = 0) -> MoransIResult:
    """Global Moran's I of a phenotype on the kNN graph of a representation.

    ``I = (n / W) Σ_i Σ_{j ∈ kNN(i)} z_i z_j / Σ_i z_i²`` with ``z`` the centred phenotype and
    ``W = n k`` (directed, binary weights, not symmetrised, as in the paper).

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix, or None when ``neighbors`` is given
    values : (n_cells,) numeric or boolean array
    k : int
    neighbors : (n_cells, k) int array, optional
        Precomputed neighbour indices, e.g. from :func:`knn_indices`.
    n_permutations : int
        Number of phenotype shuffles for the one-sided p-value ``(1 + #{I_perm ≥ I}) /
        (1 + n_permutations)``. 0 skips the test.
    seed : int or Generator

    Returns
    -------
    MoransIResult
    """
    nb = _neighbors(x, k, neighbors)
    n = nb.shape[0]
    v = _as_values(values, n)
    z = v - v.mean()
    if not (z @ z) > 0:
        raise ValueError("the phenotype is constant; Moran's I is undefined")
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    stat = _morans_stat(z, nb)
    p = z_score = float("nan")
    if n_permutations:
        rng = as_rng(seed)
        null = np.empty(n_permutations)
        for b in range(n_permutations):
            null[b] = _morans_stat(z[rng.permutation(n)], nb)
        p = float((1 + (null >= stat).sum()) / (1 + n_permutations))
        sd = null.std()
        z_score = float((stat - null.mean()) / sd) if sd > 0 else float("nan")
    return MoransIResult(i=stat, expected=-1.0 / (n - 1), p_value=p, z_score=z_score,
                         n_permutations=int(n_permutations), k=int(nb.shape[1]))


# -- phenotype R² -------------------------------------------------------------------------


@dataclass(frozen=True)
class R2Result:
    """Cross-validated R² of a phenotype predicted linearly from a representation."""

    r2: float  # from the pooled out-of-fold predictions (the paper's "global R²")
    fold_r2: np.ndarray  # (n_splits,) R² inside each test fold
    predictions: np.ndarray  # (n_cells,) out-of-fold predictions
    n_components: int
    grouped: bool

    def to_dict(self) -> dict:
        return {"r2": self.r2, "fold_r2": self.fold_r2.tolist(),
                "n_components": self.n_components, "grouped": self.grouped}


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / ss) if ss > 0 else float("nan")


def phenotype_r2(x, values, *, groups=None, n_splits: int = 5, n_components: int | None = 250,
                 alphas=None, standardize: bool = True, seed: SeedLike = 42) -> R2Result:
    """Cross-validated R² of a phenotype from a representation (scaler → PCA → RidgeCV).

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix
    values : (n_cells,) numeric or boolean array
    groups : (n_cells,) array, optional
        Group labels (donor, plate, well...). When given, folds are grouped
        (``GroupKFold``) so that no group is split between training and test; this is
        the honest estimate when cells of one group share a batch effect. When ``None``,
        shuffled ``KFold`` over cells as in the paper.
    n_splits : int
    n_components : int or None
        PCA dimension fitted inside each training fold (capped by the data); ``None``
        skips PCA. Sparse inputs are scaled without centring and reduced by TruncatedSVD.
    alphas : sequence of float, optional
        Ridge penalties to choose from by inner leave-one-out; default ``logspace(-3, 5, 50)``.
    standardize : bool
        Scale every feature to unit variance first (the paper's StandardScaler). For sparse
        codes this gives rare latents the weight of common ones; ``False`` keeps raw units.
    seed : int or Generator
        Fold shuffling (ungrouped case) and randomised SVD.

    Returns
    -------
    R2Result
    """
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _as_matrix(x)
    n, d = x.shape
    y = _as_values(values, n)
    if y.std() == 0:
        raise ValueError("the phenotype is constant; R² is undefined")
    alphas = np.logspace(-3, 5, 50) if alphas is None else np.asarray(alphas, dtype=float)
    rng = as_rng(seed)
    random_state = int(rng.integers(0, 2**31 - 1))
    if groups is not None:
        g = np.asarray(groups).ravel()
        if g.shape[0] != n:
            raise ValueError(f"groups has {g.shape[0]} entries but there are {n} cells")
        n_groups = len(np.unique(g.astype(str)))
        if n_groups < n_splits:
            raise ValueError(
                f"grouped cross-validation needs at least n_splits={n_splits} groups, got "
                f"{n_groups}; lower n_splits or pass finer groups"
            )
        splits = list(GroupKFold(n_splits=n_splits).split(np.zeros(n), y, g.astype(str)))
    else:
        if n < 2 * n_splits:
            raise ValueError(f"{n} cells are too few for {n_splits}-fold cross-validation")
        splits = list(KFold(n_splits, shuffle=True, random_state=random_state).split(np.zeros(n)))
    if sparse.issparse(x) and n * d <= 2e7:
        x = x.toarray()  # small enough: exact centring + PCA beats TruncatedSVD here
    pred = np.empty(n)
    fold_r2 = np.empty(len(splits))
    used = 0
    for f, (train, test) in enumerate(splits):
        steps = []
        if standardize:
            steps.append(StandardScaler(with_mean=not sparse.issparse(x)))
        if n_components is not None:
            nc = int(min(n_components, d, len(train) - 1))
            if sparse.issparse(x):
                nc = min(nc, d - 1)
                if nc >= 1:
                    steps.append(TruncatedSVD(nc, random_state=random_state))
            elif nc >= 1:
                solver = "randomized" if nc < 0.5 * min(len(train), d) else "full"
                steps.append(PCA(nc, svd_solver=solver, random_state=random_state))
            used = nc
        steps.append(RidgeCV(alphas=alphas))
        model = make_pipeline(*steps).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        fold_r2[f] = _r2(y[test], pred[test])
    return R2Result(r2=_r2(y, pred), fold_r2=fold_r2, predictions=pred,
                    n_components=int(used) if n_components is not None else d,
                    grouped=groups is not None)


# -- trustworthiness / continuity ---------------------------------------------------------


def _dense(x) -> np.ndarray:
    x = _as_matrix(x)
    return x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)


def _rank_penalty(space_a: np.ndarray, space_b: np.ndarray, k: int, chunk: int) -> float:
    """Σ_i Σ_{j ∈ kNN_b(i) \\ kNN_a(i)} (rank_a(i, j) − k), ranks 1-based in space a."""
    from sklearn.metrics import pairwise_distances

    n = space_a.shape[0]
    nb_b = knn_indices(space_b, k)
    total = 0.0
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        d = pairwise_distances(space_a[rows], space_a)
        d[np.arange(len(rows)), rows] = -np.inf  # self first (rank 0)
        target = d[np.arange(len(rows))[:, None], nb_b[rows]]  # (m, k)
        # rank of j = number of non-self points strictly closer than j, plus 1
        ranks = (d[:, None, :] < target[:, :, None]).sum(-1)  # includes self (counted once)
        total += np.clip(ranks - k, 0, None).sum()
    return float(total)


def trustworthiness(x_true, x_rep, *, k: int = 10, chunk: int = 256) -> float:
    """Trustworthiness of a representation's neighbourhoods against a reference space.

    Penalises cells that are neighbours in ``x_rep`` but not in ``x_true`` (false
    neighbours), by their rank in ``x_true`` (Venna & Kaski 2001).

    Parameters
    ----------
    x_true : (n_cells, n_factors) array
        The reference, e.g. the true generative factors of the synthetic world.
    x_rep : (n_cells, n_features) array or sparse matrix
    k : int
        Neighbourhood size, ``k < n_cells / 2``.
    chunk : int
        Rows per block of the exact O(n²) rank computation (memory ``chunk × n × k``).

    Returns
    -------
    float in [0, 1]; 1 means every representation neighbour is a true neighbour.
    """
    a, b = _dense(x_true), _dense(x_rep)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x_true has {a.shape[0]} rows but x_rep has {b.shape[0]}")
    n = a.shape[0]
    k = _check_k(k, n)
    if k >= n / 2:
        raise ValueError(f"k must be < n_cells/2 = {n / 2}, got {k}")
    penalty = _rank_penalty(a, b, k, chunk)
    return 1.0 - 2.0 / (n * k * (2 * n - 3 * k - 1)) * penalty


def continuity(x_true, x_rep, *, k: int = 10, chunk: int = 256) -> float:
    """Continuity: trustworthiness with the roles swapped (missing true neighbours).

    1 means every true neighbour (in ``x_true``) stays a neighbour in ``x_rep``.
    Same parameters as :func:`trustworthiness`.
    """
    return trustworthiness(x_rep, x_true, k=k, chunk=chunk)


# -- effective rank and CKA ---------------------------------------------------------------


def _centred_singular_values(x) -> np.ndarray:
    x = _as_matrix(x)
    n, d = x.shape
    if sparse.issparse(x):
        mu = np.asarray(x.mean(axis=0)).ravel()
        if d <= n:
            gram = (x.T @ x).toarray() - n * np.outer(mu, mu)
        else:
            xc = x.toarray() - mu
            gram = xc @ xc.T
        ev = np.linalg.eigvalsh(gram)
        return np.sqrt(np.clip(ev, 0, None))[::-1]
    xc = np.asarray(x, dtype=np.float64) - x.mean(axis=0)
    return np.linalg.svd(xc, compute_uv=False)


def effective_rank(x) -> float:
    """Effective rank: ``exp(H(p))`` with ``p_i = σ_i / Σ σ`` of the column-centred matrix.

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix

    Returns
    -------
    float in [1, min(n_cells - 1, n_features)]; 0.0 for a matrix with no variance.
    """
    s = _centred_singular_values(x)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def linear_cka(x, y) -> float:
    """Linear centred kernel alignment between two representations of the same cells.

    ``CKA = ||Yᶜᵀ Xᶜ||²_F / (||Xᶜᵀ Xᶜ||_F ||Yᶜᵀ Yᶜ||_F)`` with column-centred ``X``, ``Y``
    (Kornblith et al. 2019); invariant to rotations and isotropic scaling of either side.

    Parameters
    ----------
    x : (n_cells, d_x) array or sparse matrix
    y : (n_cells, d_y) array or sparse matrix

    Returns
    -------
    float in [0, 1].
    """
    a, b = _dense(x), _dense(y)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x has {a.shape[0]} rows but y has {b.shape[0]}; rows must be the same cells")
    a = a - a.mean(0)
    b = b - b.mean(0)
    if a.shape[0] < max(a.shape[1], b.shape[1]):
        ka, kb = a @ a.T, b @ b.T
        hsic, na, nb = (ka * kb).sum(), np.linalg.norm(ka), np.linalg.norm(kb)
    else:
        hsic = np.linalg.norm(b.T @ a) ** 2
        na, nb = np.linalg.norm(a.T @ a), np.linalg.norm(b.T @ b)
    if na == 0 or nb == 0:
        raise ValueError("one representation has no variance; CKA is undefined")
    return float(hsic / (na * nb))
