"""The paper's analysis preset on an AnnData of units (tiles or cells).

Each function follows Park et al. (2026)'s code (REFERENCE_CODE.md §6–7) and adds, as
options, the grouped alternatives the paper did not use:

- :func:`paper_geometry`: within each mutant class, Euclidean kNN on the raw
  representation (CNN GAP; SAE alive latents, pooled), the local/global SD ratio of the
  death rate for k in 5–25, Moran's I on the directed kNN graph, and death R² by
  StandardScaler → PCA 250 → RidgeCV with shuffled 5-fold CV. ``exclude_same`` drops
  neighbours from the same field/well; ``r2_groups`` makes the folds grouped.
- :func:`paper_trajectory`: per control + mutant pair, L2-normalised vectors →
  log1p + z-score (:func:`cellsae.metrics.paper.log1p_zscore`) → PCA → kNN graph →
  diffusion map (15) → DPT (``n_dcs`` 10) rooted at the control unit nearest the control
  centroid in diffusion space; Spearman ρ of pseudotime vs death over mutant units and a
  Jonckheere–Terpstra test of death across 3 equal-width pseudotime bins (p5–p95).
- :func:`paper_volcano`: mutant vs control per feature, Mann–Whitney U with BH-FDR and
  the ``|log2FC| ≥ 0.58`` call (CNN channels as ``|GAP|``, SAE alive latents raw).

:func:`paper_analysis` runs the three and stores everything in ``uns["paper"]``.
Units are the replicates here, as in the paper; ``split``-style groups are the honest
alternative (see ``benchmarks/leakage.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from ..metrics.geometry import knn_indices, knn_sd_ratio, morans_i, phenotype_r2
from ..metrics.paper import (
    alive_latents,
    centroid_roots,
    jonckheere_terpstra,
    knn_indices_excluding,
    log1p_zscore,
    pseudotime_bins,
    volcano_calls,
)
from .latents import get_rep, obs_values

logger = logging.getLogger(__name__)

__all__ = [
    "paper_analysis",
    "paper_geometry",
    "paper_trajectory",
    "paper_volcano",
    "DEAD_THRESHOLD",
    "DEAD_THRESHOLD_TRAINING",
]

# The paper's code uses two dead-latent thresholds on usage: 1e-5 in every downstream
# analysis (probe from cache, geometry, trajectories) and 5e-4 in its training log, step09
# evaluation and volcano default. We pick 1e-5 (what its reported geometry used); 5e-4 is
# the option `dead_threshold=DEAD_THRESHOLD_TRAINING`.
DEAD_THRESHOLD = 1e-5
DEAD_THRESHOLD_TRAINING = 5e-4


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)


def _rep_matrix(adata, key: str, dead_threshold: float) -> np.ndarray:
    x = _dense(get_rep(adata, key))
    if key != "X_cnn" and (x >= 0).all():  # SAE codes: keep the alive latents
        x = x[:, alive_latents(x, dead_threshold)]
    return x


def _groups(adata, mode: str | None) -> np.ndarray | None:
    if mode is None:
        return None
    from ..embed.splits import split_groups

    return split_groups(adata.obs, mode)


def _mutants(labels: np.ndarray, control: str, mutants: Sequence[str] | None) -> list[str]:
    levels = [str(v) for v in pd.unique(labels)]
    if control not in levels:
        raise ValueError(
            f"control level {control!r} is not a level of the label column; "
            f"levels: {', '.join(levels)}"
        )
    return [m for m in (mutants or levels) if m != control]


def paper_geometry(
    adata,
    *,
    reps: Mapping[str, str] | None = None,
    label_key: str = "genotype",
    control: str = "healthy",
    mutants: Sequence[str] | None = None,
    phenotype: str = "death_rate",
    ks: Sequence[int] = (5, 10, 15, 20, 25),
    moran_k: int = 5,
    n_components: int = 250,
    n_splits: int = 5,
    exclude_same: str | None = None,
    r2_groups: str | None = None,
    dead_threshold: float = DEAD_THRESHOLD,
    seed: int = 42,
) -> pd.DataFrame:
    """kNN local/global SD, Moran's I and death R² within each mutant class.

    Parameters
    ----------
    adata : AnnData with the representations in ``obsm`` and ``obs[phenotype]``.
    reps : ``{name: obsm key}``; default ``{"cnn": "X_cnn", "sae": "X_sae"}`` (those present).
    label_key, control, mutants : the class column, its control level (not analysed, as in
        the paper) and the mutant levels (default all others).
    phenotype : per-unit death rate (NaN units are dropped, as in the paper).
    ks : neighbourhood sizes of the SD ratio; ``moran_k`` for Moran's I.
    n_components, n_splits : R² model (PCA dimension inside each fold, folds).
    exclude_same : ``None`` (the paper) or a split mode (``field``, ``well``, ``plate``,
        ``donor``): neighbours from the unit's own group are excluded.
    r2_groups : ``None`` (the paper's shuffled KFold) or a split mode for grouped folds.
    dead_threshold : SAE latents firing on fewer units than this fraction are dropped.
    seed : R² fold shuffling (the paper: 42).

    Returns
    -------
    DataFrame, one row per (rep, class, metric, k): columns ``rep, class, metric, k,
    value, n_units``; metrics ``knn_sd_ratio``, ``morans_i``, ``death_r2``.
    """
    reps = dict(reps or {n: k for n, k in (("cnn", "X_cnn"), ("sae", "X_sae")) if k in adata.obsm})
    if not reps:
        raise KeyError(f"no representation to analyse; obsm has {list(adata.obsm)}")
    labels = obs_values(adata, label_key, numeric=False).astype(str)
    y = obs_values(adata, phenotype)
    groups_nb = _groups(adata, exclude_same)
    groups_r2 = _groups(adata, r2_groups)
    rows = []
    for name, key in reps.items():
        x_all = _rep_matrix(adata, key, dead_threshold)
        for cls in _mutants(labels, control, mutants):
            sel = np.flatnonzero((labels == cls) & np.isfinite(y))
            usable = [k for k in ks if k + 2 <= len(sel)]  # k neighbours need k + 2 units
            if not usable or np.std(y[sel]) == 0:
                logger.warning(
                    "paper geometry: class %r has %d units with a varying %s; skipped",
                    cls,
                    len(sel),
                    phenotype,
                )
                continue
            if len(usable) < len(ks):
                logger.warning(
                    "paper geometry: class %r has %d units; k > %d skipped",
                    cls,
                    len(sel),
                    max(usable),
                )
            x, v = x_all[sel], y[sel]
            g = None if groups_nb is None else groups_nb[sel]
            for k in usable:
                nb = knn_indices(x, k) if g is None else knn_indices_excluding(x, k, groups=g)
                rows.append(
                    (
                        name,
                        cls,
                        "knn_sd_ratio",
                        k,
                        knn_sd_ratio(None, v, k=k, neighbors=nb).ratio,
                        len(sel),
                    )
                )
                if k == moran_k:
                    rows.append(
                        (
                            name,
                            cls,
                            "morans_i",
                            k,
                            morans_i(None, v, neighbors=nb, n_permutations=0).i,
                            len(sel),
                        )
                    )
            gr = None if groups_r2 is None else groups_r2[sel]
            if gr is not None and len(np.unique(gr)) < n_splits:
                logger.warning(
                    "paper geometry: class %r has %d %s groups, fewer than %d folds; R² skipped",
                    cls,
                    len(np.unique(gr)),
                    r2_groups,
                    n_splits,
                )
            elif len(sel) < 2 * n_splits:
                logger.warning(
                    "paper geometry: class %r has %d units, too few for %d-fold R²; skipped",
                    cls,
                    len(sel),
                    n_splits,
                )
            else:
                r2 = phenotype_r2(
                    x, v, groups=gr, n_splits=n_splits, n_components=n_components, seed=seed
                ).r2
                rows.append((name, cls, "death_r2", np.nan, r2, len(sel)))
    return pd.DataFrame(rows, columns=["rep", "class", "metric", "k", "value", "n_units"])


def paper_trajectory(
    adata,
    *,
    use_rep: str = "X_sae",
    label_key: str = "genotype",
    control: str = "healthy",
    mutants: Sequence[str] | None = None,
    phenotype: str = "death_rate",
    n_pcs: int = 30,
    n_neighbors: int = 15,
    n_comps: int = 15,
    n_dcs: int = 10,
    n_bins: int = 3,
    n_roots: int = 10,
    l2_normalize: bool = True,
    transform: str = "log_std",
    dead_threshold: float = DEAD_THRESHOLD,
    seed: int = 0,
) -> pd.DataFrame:
    """DPT per control + mutant pair, rooted at the control unit nearest the control centroid.

    Parameters
    ----------
    use_rep : obsm key (SAE codes ``X_sae`` or CNN ``X_cnn``).
    n_pcs, n_neighbors : PCA fitted per pair, kNN graph (the paper sweeps 30–50 × 15–35).
    n_comps, n_dcs : diffusion components (15) and those DPT uses (10).
    n_bins : equal-width pseudotime bins between p5 and p95 for the trend test.
    n_roots : DPT is rerun from each of the ``n_roots`` control units nearest the control
        centroid (the paper's ``downstream_stats.py`` root perturbation, 10); the main
        columns are for the nearest (the paper's ``pairwise_dpt.py`` root).
    l2_normalize : divide each unit's vector by its L2 norm first (the paper's
        ``--gap_l2_norm``).
    transform : ``"log_std"`` (log1p + z-score, the paper's for SAE latents) or ``"none"``
        (z-score only, e.g. for signed CNN features).

    Returns
    -------
    DataFrame, one row per mutant: ``spearman_rho``, ``pearson_r`` (pseudotime vs death
    over mutant units), ``jt_z``, ``jt_p`` (increasing trend of death over bins),
    ``root`` (obs name), ``n_units``, ``n_mutant_rated``; and over the ``n_roots`` roots
    ``<stat>_mean``, ``<stat>_sd``, ``<stat>_min``, ``<stat>_max`` of each of the four.
    """
    import scanpy as sc
    from anndata import AnnData

    from .latents import _diffmap, neighbors

    if transform not in ("log_std", "none"):
        raise ValueError(f"transform must be 'log_std' or 'none', got {transform!r}")
    if n_roots < 1:
        raise ValueError(f"n_roots must be >= 1, got {n_roots}")
    labels = obs_values(adata, label_key, numeric=False).astype(str)
    y = obs_values(adata, phenotype)
    x_all = _rep_matrix(adata, use_rep, dead_threshold)
    rows = []
    for mut in _mutants(labels, control, mutants):
        sel = np.flatnonzero((labels == control) | (labels == mut))
        x = x_all[sel]
        if l2_normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        if transform == "log_std":
            x, _ = log1p_zscore(np.clip(x, 0, None))
        else:
            sd = x.std(axis=0)
            x = ((x[:, sd > 0] - x[:, sd > 0].mean(0)) / sd[sd > 0]).astype(np.float32)
        pair = AnnData(X=np.zeros((len(sel), 1), np.float32))
        from sklearn.decomposition import PCA

        nc = int(min(n_pcs, x.shape[1], len(sel) - 1))
        pair.obsm["X_pca"] = PCA(nc, random_state=seed).fit_transform(x).astype(np.float32)
        neighbors(
            pair, n_neighbors=min(n_neighbors, len(sel) - 1), use_rep="X_pca", seed=seed
        )  # scanpy's graph; its own kNN fails above 8,192 cells
        _diffmap(pair, n_comps, seed=seed)
        is_ctrl = labels[sel] == control
        roots = centroid_roots(pair.obsm["X_diffmap"][:, 1:], is_ctrl, n_roots)
        v = y[sel]
        per_root = []
        for root in roots:  # the first is the paper's root; the others perturb it
            pair.uns["iroot"] = int(root)
            sc.tl.dpt(pair, n_dcs=min(n_dcs, pair.obsm["X_diffmap"].shape[1]))
            pt = pair.obs["dpt_pseudotime"].to_numpy(float)
            pt[~np.isfinite(pt)] = np.nan
            per_root.append(_trend(pt, v, ~is_ctrl, n_bins))
        row = {
            "mutant": mut,
            "root": str(adata.obs_names[sel[roots[0]]]),
            "n_units": len(sel),
            **per_root[0],
            "n_roots": len(roots),
        }
        for stat in ("spearman_rho", "pearson_r", "jt_z", "jt_p"):
            values = np.array([r[stat] for r in per_root], float)
            finite = values[np.isfinite(values)]
            row[f"{stat}_mean"] = float(finite.mean()) if len(finite) else np.nan
            row[f"{stat}_sd"] = float(finite.std()) if len(finite) else np.nan
            row[f"{stat}_min"] = float(finite.min()) if len(finite) else np.nan
            row[f"{stat}_max"] = float(finite.max()) if len(finite) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _trend(pt: np.ndarray, v: np.ndarray, mutant: np.ndarray, n_bins: int) -> dict:
    """Spearman ρ, Pearson r and the Jonckheere–Terpstra test of death vs pseudotime over
    the rated mutant units (NaN where fewer than 5 or either is constant)."""
    from scipy.stats import pearsonr, spearmanr

    m = mutant & np.isfinite(v) & np.isfinite(pt)
    out = {"n_mutant_rated": int(m.sum()), "spearman_rho": np.nan, "pearson_r": np.nan,
           "jt_z": np.nan, "jt_p": np.nan}
    if m.sum() >= 5 and np.std(v[m]) > 0 and np.std(pt[m]) > 0:
        out["spearman_rho"] = float(spearmanr(pt[m], v[m]).statistic)
        out["pearson_r"] = float(pearsonr(pt[m], v[m]).statistic)
        bins = pseudotime_bins(pt[m], n_bins=n_bins)
        if len(np.unique(bins[bins >= 0])) >= 2:
            jt = jonckheere_terpstra(v[m], bins)
            out["jt_z"], out["jt_p"] = jt.z, jt.p_value
    return out


def paper_volcano(
    adata,
    *,
    reps: Mapping[str, str] | None = None,
    label_key: str = "genotype",
    control: str = "healthy",
    mutants: Sequence[str] | None = None,
    min_abs_log2fc: float = 0.58,
    alpha: float | None = 0.05,
    dead_threshold: float = DEAD_THRESHOLD_TRAINING,
) -> pd.DataFrame:
    """Mutant vs control per feature: Mann–Whitney U, BH-FDR, ``|log2FC| ≥ 0.58``.

    CNN channels enter as ``|GAP|`` (the paper's volcano), SAE codes as the alive latents
    (``dead_threshold``; the volcano script's default is 5e-4).

    Returns
    -------
    DataFrame in long form (rep, mutant, feature, log2fc, pvalue, padj, called) with one
    row per feature; count calls with ``groupby(["rep", "mutant"])["called"].sum()``.
    """
    from .differential import rank_features

    reps = dict(reps or {n: k for n, k in (("cnn", "X_cnn"), ("sae", "X_sae")) if k in adata.obsm})
    labels = obs_values(adata, label_key, numeric=False).astype(str)
    tables = []
    for name, key in reps.items():
        x = _dense(get_rep(adata, key))
        if (x < 0).any():
            x = np.abs(x)
            feat = np.arange(x.shape[1])
        else:
            keep = alive_latents(x, dead_threshold)
            x, feat = x[:, keep], np.flatnonzero(keep)
        for mut in _mutants(labels, control, mutants):
            t = rank_features(
                x,
                labels == mut,
                labels == control,
                method="wilcoxon",
                feature_names=[f"{name}_{i}" for i in feat],
                group=mut,
                reference=control,
            )
            lfc, called = volcano_calls(
                t["mean_group"],
                t["mean_reference"],
                t["padj"],
                min_abs_log2fc=min_abs_log2fc,
                alpha=alpha,
            )
            tables.append(
                pd.DataFrame(
                    {
                        "rep": name,
                        "mutant": mut,
                        "feature": t["feature"],
                        "log2fc": lfc,
                        "pvalue": t["pvalue"],
                        "padj": t["padj"],
                        "called": called,
                    }
                )
            )
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def paper_analysis(
    adata,
    *,
    label_key: str = "genotype",
    control: str = "healthy",
    phenotype: str = "death_rate",
    exclude_same: str | None = None,
    r2_groups: str | None = None,
    n_neighbors: int = 15,
    n_pcs: int = 30,
    n_roots: int = 10,
    dead_threshold: float = DEAD_THRESHOLD,
    seed: int = 0,
    key_added: str = "paper",
) -> dict:
    """Geometry, trajectories and volcano of the paper's analysis preset.

    Writes ``uns[key_added]`` = ``{"geometry", "trajectory", "volcano_counts", "summary",
    "params"}`` and returns the same dict (tables as DataFrames). ``summary`` holds flat
    figures: ``knn_sd_ratio_k5_<rep>``, ``morans_i_<rep>``, ``death_r2_<rep>`` (means over
    mutant classes), ``dpt_spearman_<rep>``, ``dpt_spearman_root_sd_<rep>`` (SD of ρ over the
    ``n_roots`` roots nearest the control centroid, mean over mutants), ``dpt_jt_p_root_max_
    <rep>`` (largest trend-test p over roots and mutants), ``de_features_<rep>``.
    """
    params = {
        "label_key": label_key,
        "control": control,
        "phenotype": phenotype,
        "exclude_same": exclude_same,
        "r2_groups": r2_groups,
        "n_neighbors": n_neighbors,
        "n_pcs": n_pcs,
        "n_roots": n_roots,
        "dead_threshold": dead_threshold,
        "seed": seed,
    }
    geometry = paper_geometry(
        adata,
        label_key=label_key,
        control=control,
        phenotype=phenotype,
        exclude_same=exclude_same,
        r2_groups=r2_groups,
        dead_threshold=dead_threshold,
    )
    reps = [r for r in ("cnn", "sae") if f"X_{r}" in adata.obsm]
    traj = []
    for rep in reps:
        t = paper_trajectory(
            adata,
            use_rep=f"X_{rep}",
            label_key=label_key,
            control=control,
            phenotype=phenotype,
            n_pcs=n_pcs,
            n_neighbors=n_neighbors,
            n_roots=n_roots,
            transform="log_std" if rep == "sae" else "none",
            dead_threshold=dead_threshold,
            seed=seed,
        )
        traj.append(t.assign(rep=rep))
    trajectory = pd.concat(traj, ignore_index=True) if traj else pd.DataFrame()
    volcano = paper_volcano(adata, label_key=label_key, control=control)
    counts = (
        volcano.groupby(["rep", "mutant"])["called"].sum().astype(int).reset_index()
        if len(volcano)
        else pd.DataFrame()
    )
    summary: dict[str, float] = {}
    for rep in reps:
        g = geometry[geometry["rep"] == rep]
        for metric, k in (("knn_sd_ratio", 5), ("morans_i", 5), ("death_r2", None)):
            sub = g[g["metric"] == metric]
            if k is not None:
                sub = sub[sub["k"] == k]
            if len(sub):
                name = f"{metric}_k5_{rep}" if metric == "knn_sd_ratio" else f"{metric}_{rep}"
                summary[name] = float(sub["value"].mean())
        if len(trajectory):
            t = trajectory[trajectory["rep"] == rep]
            summary[f"dpt_spearman_{rep}"] = float(t["spearman_rho"].mean())
            # spread over the n_roots roots nearest the control centroid
            summary[f"dpt_spearman_root_sd_{rep}"] = float(t["spearman_rho_sd"].mean())
            summary[f"dpt_jt_p_root_max_{rep}"] = float(t["jt_p_max"].max())
        if len(counts):
            summary[f"de_features_{rep}"] = int(counts.loc[counts["rep"] == rep, "called"].sum())
    out = {
        "geometry": geometry,
        "trajectory": trajectory,
        "volcano_counts": counts,
        "summary": summary,
        "params": params,
    }
    adata.uns[key_added] = out
    return out
