"""Pure functions of the paper's analysis preset that :mod:`cellsae.metrics.geometry` lacks.

- :func:`jonckheere_terpstra`: the ordered-alternative trend test the paper runs on the
  death rate across pseudotime bins (one-sided, normal approximation, tie-corrected);
- :func:`pseudotime_bins`: the paper's 3 equal-width bins between the 5th and 95th
  percentile of pseudotime;
- :func:`knn_indices_excluding`: kNN with neighbours from the same group (field, well)
  excluded, to measure how much of a representation's "geometry" is shared-field context;
- :func:`centroid_root`: the DPT root the paper uses (the control unit nearest the
  control centroid in diffusion space); :func:`centroid_roots`: the ``n`` nearest, over
  which its ``downstream_stats.py`` perturbs the root;
- :func:`balanced_linear_probe`: the paper's probe (bias-free linear layer, SGD with
  momentum on L2-normalised features, class-balanced epochs);
- :func:`log1p_zscore`: the paper's latent transform (log1p, then a per-latent z-score);
- :func:`alive_latents`: latents active on at least a fraction ``threshold`` of units;
- :func:`volcano_calls`: log2 fold change with the paper's 1e-10 guard and the
  ``|log2FC| ≥ 0.58`` (1.5×) call.

Core functions: arrays in, arrays out; no AnnData.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse, stats

__all__ = [
    "JTResult",
    "alive_latents",
    "balanced_linear_probe",
    "centroid_root",
    "centroid_roots",
    "jonckheere_terpstra",
    "knn_indices_excluding",
    "log1p_zscore",
    "pseudotime_bins",
    "volcano_calls",
]


@dataclass(frozen=True)
class JTResult:
    """Jonckheere–Terpstra test of an increasing trend across ordered groups."""

    statistic: float  # J = Σ_{a<b} #(x_b > x_a) + ½ #(x_b = x_a)
    expected: float  # E[J] under H0
    variance: float  # tie-corrected Var[J] under H0
    z: float
    p_value: float  # one-sided (increasing), or as asked
    n_groups: int

    def to_dict(self) -> dict:
        return {
            "statistic": self.statistic,
            "expected": self.expected,
            "variance": self.variance,
            "z": self.z,
            "p_value": self.p_value,
            "n_groups": self.n_groups,
        }


def jonckheere_terpstra(values, groups, *, alternative: str = "increasing") -> JTResult:
    """Jonckheere–Terpstra test for an ordered trend of ``values`` across ``groups``.

    Parameters
    ----------
    values : (n,) numeric array.
    groups : (n,) integer array of ordered group indices (0 < 1 < 2 …); NaN values and
        negative groups are dropped.
    alternative : ``"increasing"`` (the paper's), ``"decreasing"`` or ``"two-sided"``.

    Returns
    -------
    JTResult. Normal approximation with the Hollander–Wolfe tie correction.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if v.shape != g.shape:
        raise ValueError(
            f"values and groups must have the same length, got {v.shape} and {g.shape}"
        )
    if alternative not in ("increasing", "decreasing", "two-sided"):
        raise ValueError(
            f"alternative must be increasing, decreasing or two-sided, got {alternative!r}"
        )
    ok = np.isfinite(v) & (g >= 0)
    v, g = v[ok], g[ok].astype(np.int64)
    levels = np.unique(g)
    if len(levels) < 2:
        raise ValueError(f"the trend test needs at least 2 non-empty groups, got {len(levels)}")
    parts = [np.sort(v[g == lv]) for lv in levels]
    j = 0.0
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            xb = parts[b]
            right = np.searchsorted(xb, parts[a], side="right")
            left = np.searchsorted(xb, parts[a], side="left")
            j += float((len(xb) - right).sum() + 0.5 * (right - left).sum())
    n_i = np.array([len(p) for p in parts], dtype=np.float64)
    n = n_i.sum()
    _, t = np.unique(v, return_counts=True)
    t = t.astype(np.float64)
    expected = (n**2 - (n_i**2).sum()) / 4.0
    var = (
        n * (n - 1) * (2 * n + 5)
        - (n_i * (n_i - 1) * (2 * n_i + 5)).sum()
        - (t * (t - 1) * (2 * t + 5)).sum()
    ) / 72.0
    if n > 2:
        var += (
            (n_i * (n_i - 1) * (n_i - 2)).sum()
            * (t * (t - 1) * (t - 2)).sum()
            / (36.0 * n * (n - 1) * (n - 2))
        )
    var += (n_i * (n_i - 1)).sum() * (t * (t - 1)).sum() / (8.0 * n * (n - 1))
    z = (j - expected) / np.sqrt(var) if var > 0 else float("nan")
    if alternative == "increasing":
        p = float(stats.norm.sf(z))
    elif alternative == "decreasing":
        p = float(stats.norm.cdf(z))
    else:
        p = float(2 * stats.norm.sf(abs(z)))
    return JTResult(
        statistic=j,
        expected=float(expected),
        variance=float(var),
        z=float(z),
        p_value=p,
        n_groups=len(levels),
    )


def pseudotime_bins(
    pseudotime, *, n_bins: int = 3, lower: float = 5.0, upper: float = 95.0
) -> np.ndarray:
    """Equal-width pseudotime bins between two percentiles (the paper: 3 bins, p5–p95).

    Parameters
    ----------
    pseudotime : (n,) array (NaN allowed).

    Returns
    -------
    (n,) int array: bin 0 … n_bins−1, −1 outside the percentile range or NaN.
    """
    pt = np.asarray(pseudotime, dtype=np.float64).ravel()
    finite = np.isfinite(pt)
    out = np.full(pt.shape, -1, dtype=np.int64)
    if finite.sum() < 2:
        return out
    lo, hi = np.percentile(pt[finite], [lower, upper])
    inside = finite & (pt >= lo) & (pt <= hi)
    if hi <= lo:
        out[inside] = 0
        return out
    edges = np.linspace(lo, hi, n_bins + 1)
    out[inside] = np.clip(np.searchsorted(edges, pt[inside], side="right") - 1, 0, n_bins - 1)
    return out


def knn_indices_excluding(x, k: int = 5, *, groups=None, metric: str = "euclidean") -> np.ndarray:
    """``k`` nearest neighbours of each unit, excluding itself and units of its own group.

    Parameters
    ----------
    x : (n, d) array or sparse matrix.
    k : neighbours per unit.
    groups : (n,) labels (e.g. ``plate/well/field``); units sharing a label are never
        neighbours. ``None`` excludes only the unit itself.

    Returns
    -------
    (n, k) int64 array, nearest first.

    Raises
    ------
    ValueError
        When some unit has fewer than ``k`` units outside its group.
    """
    from sklearn.neighbors import NearestNeighbors

    x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if groups is None:
        g = np.arange(n)
    else:
        g = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries but x has {n} rows")
    largest = int(np.bincount(g).max())
    if n - largest < k:
        raise ValueError(
            f"a group holds {largest} of {n} units, leaving fewer than k={k} "
            "units outside it; lower k or use coarser data"
        )
    nn = NearestNeighbors(metric=metric).fit(x)
    m = min(n, k + largest)
    while True:
        idx = nn.kneighbors(x, n_neighbors=m, return_distance=False)
        keep = g[idx] != g[:, None]
        if (keep.sum(axis=1) >= k).all() or m == n:
            break
        m = min(n, 2 * m)
    # stable selection of the first k kept neighbours per row, vectorised
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)


def centroid_root(embedding, control_mask) -> int:
    """Index of the control unit nearest the control centroid (the paper's DPT root).

    Parameters
    ----------
    embedding : (n, d) array, e.g. the non-trivial diffusion components
        (``X_diffmap[:, 1:]``).
    control_mask : (n,) bool, the control units.

    Returns
    -------
    int, a position in ``embedding``.
    """
    return int(centroid_roots(embedding, control_mask, 1)[0])


def centroid_roots(embedding, control_mask, n: int = 10) -> np.ndarray:
    """Positions of the ``n`` control units nearest the control centroid, nearest first.

    The paper's ``downstream_stats.py`` reruns DPT from each of the 10 nearest to report
    how much its trend statistics depend on the choice of root.

    Parameters
    ----------
    embedding : (n_units, d) array.
    control_mask : (n_units,) bool.
    n : int, at most the number of control units with a finite embedding.

    Returns
    -------
    (min(n, n_controls),) int array of positions in ``embedding``.
    """
    e = np.asarray(embedding, dtype=np.float64)
    m = np.asarray(control_mask, dtype=bool)
    if e.ndim != 2 or len(m) != len(e):
        raise ValueError(
            f"embedding must be (n, d) and control_mask (n,), got {e.shape} and {m.shape}"
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ok = m & np.isfinite(e).all(axis=1)
    if not ok.any():
        raise ValueError("no control unit with a finite embedding to root pseudotime at")
    idx = np.flatnonzero(ok)
    centre = e[idx].mean(axis=0)
    d2 = ((e[idx] - centre) ** 2).sum(axis=1)
    return idx[np.argsort(d2, kind="stable")[:n]].astype(np.int64)


@dataclass(frozen=True)
class BalancedProbeResult:
    """Accuracy of :func:`balanced_linear_probe` on the test units."""

    accuracy: float
    balanced_accuracy: float
    classes: np.ndarray
    predictions: np.ndarray
    weights: np.ndarray  # (n_classes, d): the bias-free linear layer

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
                "classes": [str(c) for c in self.classes]}


def balanced_linear_probe(x_train, y_train, x_test, y_test, *, epochs: int = 3,
                          lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                          batch_size: int = 256, l2_normalize: bool = True,
                          seed: int = 0) -> BalancedProbeResult:
    """The paper's linear probe: a bias-free linear layer trained by SGD, class-balanced.

    As ``run_CNN/train.py`` selects checkpoints (REFERENCE_CODE.md §3, §5): features are
    L2-normalised, each epoch draws ``min class count`` units of every class without
    replacement, mini-batches of ``batch_size`` minimise the cross-entropy of ``x @ W.T``
    (no bias) by SGD (lr 0.1, momentum 0.9, weight decay 0, 3 epochs; its post-hoc probes
    run 50 epochs). Weights start at zero, so the result depends only on ``seed``'s draws.

    Parameters
    ----------
    x_train, x_test : (n, d) arrays.
    y_train, y_test : (n,) labels; the test set may hold only training classes.

    Returns
    -------
    BalancedProbeResult
    """
    import torch

    from ..embed.evaluate import check_probe_inputs

    x_train, x_test, y_train, y_test = check_probe_inputs(x_train, x_test, y_train, y_test,
                                                          dtype=np.float32, unit="units")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, "
                         f"{batch_size}, {lr}")
    classes, target = np.unique(y_train, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"the probe needs at least 2 classes in training, got {list(classes)}")
    unseen = sorted(set(np.unique(y_test)) - set(classes))
    if unseen:
        raise ValueError(f"test labels {unseen} never occur in training")
    if l2_normalize:
        x_train = x_train / np.maximum(np.linalg.norm(x_train, axis=1, keepdims=True), 1e-12)
        x_test = x_test / np.maximum(np.linalg.norm(x_test, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(target == c) for c in range(len(classes))]
    per_class = min(len(m) for m in members)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(target.astype(np.int64))
    weight = torch.zeros(len(classes), x_train.shape[1], requires_grad=True)
    opt = torch.optim.SGD([weight], lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(epochs):
        epoch = np.concatenate([rng.choice(m, per_class, replace=False) for m in members])
        epoch = torch.from_numpy(rng.permutation(epoch))
        for lo in range(0, len(epoch), batch_size):
            rows = epoch[lo:lo + batch_size]
            loss = torch.nn.functional.cross_entropy(xt[rows] @ weight.T, yt[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = weight.detach().numpy()
    pred = classes[np.argmax(x_test @ w.T, axis=1)]
    hits = pred == y_test
    recall = [hits[y_test == c].mean() for c in np.unique(y_test)]
    return BalancedProbeResult(accuracy=float(hits.mean()),
                               balanced_accuracy=float(np.mean(recall)), classes=classes,
                               predictions=pred, weights=w)


def alive_latents(codes, threshold: float = 1e-5) -> np.ndarray:
    """(d,) bool: latents non-zero on at least a fraction ``threshold`` of units.

    The paper's "alive" test uses a usage EMA over tokens (``≥ 1e-5`` in its probe,
    geometry and trajectory scripts; ``≥ 5e-4`` in its training log and volcano); on
    per-unit pooled codes the firing frequency plays that role.
    """
    if sparse.issparse(codes):
        freq = np.asarray((codes != 0).mean(axis=0)).ravel()
    else:
        freq = (np.asarray(codes) != 0).mean(axis=0)
    return freq >= threshold


def log1p_zscore(x) -> tuple[np.ndarray, np.ndarray]:
    """The paper's ``log_std`` transform: log1p, then a z-score of each column.

    Parameters
    ----------
    x : (n, d) non-negative array or sparse matrix (pooled SAE activations).

    Returns
    -------
    (n, d_kept) float32 array and (d,) bool mask of the kept columns (constant columns,
    whose z-score is undefined, are dropped).
    """
    x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
    if (x < 0).any():
        raise ValueError("log1p_zscore expects non-negative activations (SAE latents)")
    y = np.log1p(x)
    sd = y.std(axis=0)
    keep = sd > 0
    z = (y[:, keep] - y[:, keep].mean(axis=0)) / sd[keep]
    return z.astype(np.float32), keep


def volcano_calls(
    mean_group, mean_reference, padj, *, min_abs_log2fc: float = 0.58, alpha: float | None = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """log2 fold changes with the paper's guard and its differential calls.

    ``log2FC = log2((mean_group + 1e-10) / (mean_reference + 1e-10))``; a feature is called
    when ``|log2FC| ≥ min_abs_log2fc`` and, unless ``alpha`` is None, ``padj < alpha``
    (the paper's volcano counts by fold change alone and draws the adjusted p-value only as
    a reference line; its trajectory code requires both).

    Returns
    -------
    (d,) log2FC and (d,) bool calls.
    """
    m1 = np.asarray(mean_group, dtype=np.float64)
    m0 = np.asarray(mean_reference, dtype=np.float64)
    lfc = np.log2((m1 + 1e-10) / (m0 + 1e-10))
    called = np.abs(lfc) >= min_abs_log2fc
    if alpha is not None:
        called &= np.asarray(padj, dtype=np.float64) < alpha
    return lfc, called
