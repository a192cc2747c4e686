"""Quality of a sparse autoencoder: reconstruction, sparsity, dictionary geometry, truth.

Pure functions on arrays (codes may be scipy sparse). Conventions: ``codes`` is
``(n_samples, d_sae)``, ``decoder`` is ``(d_sae, d_in)`` with one atom per row, a true
dictionary is ``(n_features, d_in)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

__all__ = [
    "SAEReport", "dead_fraction", "dense_fraction", "fvu", "l0", "latent_frequencies",
    "mcc", "mcc_decoder", "mean_abs_cos", "mmcs", "probe_accuracy_recovered", "recovery_at", "sae_report",
    "shrinkage",
]


def _check_pair(X: np.ndarray, X_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    X_hat = np.asarray(X_hat, dtype=np.float64)
    if X.shape != X_hat.shape or X.ndim != 2:
        raise ValueError(f"X and X_hat must be 2-D with the same shape, got {X.shape} and "
                         f"{X_hat.shape}")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    return X, X_hat


def fvu(X, X_hat) -> float:
    """Fraction of variance unexplained: ``Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` (0 is perfect)."""
    X, X_hat = _check_pair(X, X_hat)
    total = ((X - X.mean(0)) ** 2).sum()
    return float(((X - X_hat) ** 2).sum() / total) if total > 0 else float("nan")


def shrinkage(X, X_hat) -> float:
    """How much reconstructions shrink: ``1 - ‖X̂ - m‖_F / ‖X - m‖_F`` with ``m`` the mean of X.

    0 means no shrinkage; an L1-penalised SAE typically shows a positive value.
    """
    X, X_hat = _check_pair(X, X_hat)
    m = X.mean(0)
    denominator = np.linalg.norm(X - m)
    return float(1 - np.linalg.norm(X_hat - m) / denominator) if denominator > 0 else 0.0


def _as_codes(codes):
    if sparse.issparse(codes):
        return sparse.csr_matrix(codes)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (n_samples, d_sae), got shape {codes.shape}")
    return codes


def l0(codes) -> float:
    """Mean number of non-zero latents per sample."""
    codes = _as_codes(codes)
    if codes.shape[0] == 0:
        raise ValueError("codes has no rows")
    nnz = codes.getnnz() if sparse.issparse(codes) else np.count_nonzero(codes)
    return float(nnz / codes.shape[0])


def latent_frequencies(codes) -> np.ndarray:
    """(d_sae,) fraction of samples on which each latent is non-zero."""
    codes = _as_codes(codes)
    if sparse.issparse(codes):
        counts = np.bincount(codes.indices[codes.data != 0], minlength=codes.shape[1])
    else:
        counts = np.count_nonzero(codes, axis=0)
    return counts / max(codes.shape[0], 1)


def dead_fraction(codes, threshold: float = 0.0) -> float:
    """Fraction of latents firing on at most ``threshold`` of the samples (0: never)."""
    return float((latent_frequencies(codes) <= threshold).mean())


def dense_fraction(codes, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of the samples."""
    return float((latent_frequencies(codes) > threshold).mean())


def _unit_rows(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"a dictionary must be 2-D (n_atoms, d), got shape {w.shape}")
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def mean_abs_cos(decoder, alive: np.ndarray | None = None, *, block: int = 2048) -> float:
    """Mean |cosine| over distinct pairs of decoder atoms (optionally alive ones only)."""
    w = _unit_rows(decoder)
    if alive is not None:
        w = w[np.asarray(alive, dtype=bool)]
    n = len(w)
    if n < 2:
        return float("nan")
    total = 0.0
    for start in range(0, n, block):
        g = np.abs(w[start:start + block] @ w.T)
        total += g.sum() - np.abs(np.einsum("ij,ij->i", w[start:start + block],
                                            w[start:start + block])).sum()
    return float(total / (n * (n - 1)))


def _max_cos(a: np.ndarray, b: np.ndarray, block: int = 2048) -> np.ndarray:
    """For each row of a, the largest cosine with any row of b (both unit rows)."""
    out = np.empty(len(a))
    for start in range(0, len(a), block):
        out[start:start + block] = (a[start:start + block] @ b.T).max(1)
    return out


def mmcs(decoder, true_dictionary) -> tuple[float, float]:
    """Mean max cosine similarity in both directions.

    Returns
    -------
    (true_to_learned, learned_to_true)
        The mean over true features of the best cosine with a decoder atom (how well the
        truth is recovered), and the mean over decoder atoms of the best cosine with a
        true feature (how many atoms are real features).
    """
    learned, true = _unit_dictionaries(decoder, true_dictionary)
    return float(_max_cos(true, learned).mean()), float(_max_cos(learned, true).mean())


def recovery_at(decoder, true_dictionary, tau: float = 0.9) -> float:
    """Fraction of true features with a decoder atom at cosine ≥ ``tau``."""
    learned, true = _unit_dictionaries(decoder, true_dictionary)
    return float((_max_cos(true, learned) >= tau).mean())


def mcc_decoder(decoder, true_dictionary) -> float:
    """Mean |cosine| of true features with decoder atoms after Hungarian matching.

    The "MCC" of SynthSAEBench (Chanin et al. 2026, SAELens' ``mean_correlation_coefficient``,
    after Paulo & Belrose 2025): a one-to-one matching of true features to decoder atoms
    maximising the total |cosine|. Unlike :func:`mcc` it scores the dictionary only, not
    the encoder's activations. Returns the mean over true features (unmatched features,
    when there are fewer atoms, count as 0).
    """
    return _matched_abs_cos(_unit_pair(decoder, true_dictionary))


def _unit_dictionaries(decoder, true_dictionary) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm (decoder, true) rows, checked to live in the same space."""
    learned, true = _unit_rows(decoder), _unit_rows(true_dictionary)
    if learned.shape[1] != true.shape[1]:
        raise ValueError(f"decoder atoms have {learned.shape[1]} dims but true features "
                         f"have {true.shape[1]}")
    return learned, true


def _unit_pair(decoder, true_dictionary) -> np.ndarray:
    """Dense (n_features, n_atoms) cosines between true features and decoder atoms."""
    learned, true = _unit_dictionaries(decoder, true_dictionary)
    return true @ learned.T


def _matched_abs_cos(sim: np.ndarray) -> float:
    """Mean over true features (rows) of |cos| after a one-to-one Hungarian matching."""
    sim = np.abs(sim)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].sum() / sim.shape[0])


def _column_stats(m):
    n = m.shape[0]
    if sparse.issparse(m):
        mean = np.asarray(m.mean(0)).ravel()
        sq = np.asarray(m.multiply(m).mean(0)).ravel()
    else:
        mean = m.mean(0)
        sq = (m * m).mean(0)
    return mean, np.sqrt(np.maximum(sq - mean ** 2, 0)), n


def mcc(codes, true_codes) -> float:
    """Mean correlation of true features with their latents after Hungarian matching.

    The Pearson correlation between every latent's activations and every true feature's
    activations is computed over samples; a one-to-one matching maximising the total
    correlation pairs each true feature with a distinct latent (unmatched features, when
    there are fewer latents, count as 0). Returns the mean over true features.
    """
    Z = _as_codes(codes)
    T = _as_codes(true_codes)
    if Z.shape[0] != T.shape[0]:
        raise ValueError(f"codes and true_codes must have the same rows, got {Z.shape[0]} "
                         f"and {T.shape[0]}")
    Z = sparse.csc_matrix(Z, dtype=np.float64) if sparse.issparse(Z) else Z.astype(np.float64)
    T = sparse.csc_matrix(T, dtype=np.float64) if sparse.issparse(T) else T.astype(np.float64)
    mz, sz, n = _column_stats(Z)
    mt, st, _ = _column_stats(T)
    alive = np.flatnonzero(sz > 0)
    if len(alive) == 0:
        return 0.0
    Z = Z[:, alive]
    cross = Z.T @ T
    cross = cross.toarray() if sparse.issparse(cross) else np.asarray(cross)
    cov = cross / n - np.outer(mz[alive], mt)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sz[alive], st)
    corr = np.nan_to_num(corr, nan=0.0)
    rows, cols = linear_sum_assignment(corr.T, maximize=True)
    return float(corr.T[rows, cols].sum() / T.shape[1])


def probe_accuracy_recovered(codes, X, labels, *, seed: int = 0, test_size: float = 0.3,
                             max_samples: int = 20_000) -> tuple[float, float, float]:
    """Linear-probe accuracy from codes vs from the inputs.

    Returns
    -------
    (accuracy_codes, accuracy_inputs, recovered) with ``recovered = codes / inputs``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    labels = np.asarray(labels)
    n = len(labels)
    if n != codes.shape[0] or n != len(X):
        raise ValueError(f"codes ({codes.shape[0]}), X ({len(X)}) and labels ({n}) must "
                         "have the same number of rows")
    if len(np.unique(labels)) < 2:
        raise ValueError("labels must contain at least two classes for a probe")
    idx = np.arange(n)
    if n > max_samples:
        idx = np.random.default_rng(seed).choice(n, max_samples, replace=False)
    train, test = train_test_split(idx, test_size=test_size, random_state=seed,
                                   stratify=labels[idx])

    def accuracy(features, scaler) -> float:
        f_train = scaler.fit_transform(features[train])
        model = LogisticRegression(max_iter=300)
        model.fit(f_train, labels[train])
        return float(model.score(scaler.transform(features[test]), labels[test]))

    codes = sparse.csr_matrix(codes) if sparse.issparse(codes) else np.asarray(codes)
    acc_codes = accuracy(codes, MaxAbsScaler())
    acc_inputs = accuracy(np.asarray(X), StandardScaler())
    return acc_codes, acc_inputs, acc_codes / acc_inputs if acc_inputs > 0 else float("nan")


@dataclass
class SAEReport:
    """Quality figures of one SAE on one data set (``None`` where not computed)."""

    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    shrinkage: float
    mean_abs_cos: float
    n_samples: int
    d_sae: int
    mmcs_true_to_learned: float | None = None
    mmcs_learned_to_true: float | None = None
    recovery_at_0_9: float | None = None
    recovery_at_0_8: float | None = None
    mcc: float | None = None
    mcc_decoder: float | None = None
    probe_accuracy_codes: float | None = None
    probe_accuracy_inputs: float | None = None
    probe_accuracy_recovered: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.to_dict().items() if v is not None}
        body = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in shown.items())
        return f"SAEReport({body})"


def sae_report(X, X_hat, codes, decoder, *, true_dictionary=None, true_codes=None,
               labels=None, seed: int = 0, dense_threshold: float = 0.1) -> SAEReport:
    """Every SAE quality figure that the given inputs allow, as one :class:`SAEReport`.

    Parameters
    ----------
    X, X_hat : (n_samples, d_in) arrays
        Inputs and reconstructions.
    codes : (n_samples, d_sae) array or sparse matrix
    decoder : (d_sae, d_in) array
    true_dictionary : (n_features, d_in) array, optional
    true_codes : (n_samples, n_features) array or sparse matrix, optional
    labels : (n_samples,) array, optional
    """
    freq = latent_frequencies(codes)
    report = SAEReport(
        fvu=fvu(X, X_hat), l0=l0(codes), dead_fraction=float((freq == 0).mean()),
        dense_fraction=float((freq > dense_threshold).mean()), shrinkage=shrinkage(X, X_hat),
        mean_abs_cos=mean_abs_cos(decoder, alive=freq > 0), n_samples=int(codes.shape[0]),
        d_sae=int(codes.shape[1]))
    if true_dictionary is not None:  # one similarity matrix serves every dictionary score
        sim = _unit_pair(decoder, true_dictionary)
        best_true = sim.max(1)
        report.mmcs_true_to_learned = float(best_true.mean())
        report.mmcs_learned_to_true = float(sim.max(0).mean())
        report.recovery_at_0_9 = float((best_true >= 0.9).mean())
        report.recovery_at_0_8 = float((best_true >= 0.8).mean())
        report.mcc_decoder = _matched_abs_cos(sim)
    if true_codes is not None:
        report.mcc = mcc(codes, true_codes)
    if labels is not None:
        (report.probe_accuracy_codes, report.probe_accuracy_inputs,
         report.probe_accuracy_recovered) = probe_accuracy_recovered(codes, X, labels,
                                                                     seed=seed)
    return report
