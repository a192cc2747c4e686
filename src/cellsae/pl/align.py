"""Figures for GW-map results; every function returns the matplotlib Figure it drew."""

from __future__ import annotations

import numpy as np

__all__ = ["coupling_heatmap", "gw_confusion", "gw_joint_embedding", "gw_predictability"]


def _fig_ax(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def coupling_heatmap(result, source_groups, target_groups, *, normalize: str = "row",
                     ax=None, cmap: str = "viridis", title: str | None = None):
    """Coupling mass between groups of source and target cells as a heatmap.

    Parameters
    ----------
    result : GWResult
    source_groups : (n_source,) labels; target_groups : (n_target,) labels
    normalize : "row" (share of each source group's mass), "column" or "none"
    """
    from scipy import sparse

    s = np.asarray(source_groups).astype(str)
    t = np.asarray(target_groups).astype(str)
    if s.shape != (result.n_source,) or t.shape != (result.n_target,):
        raise ValueError(f"need {result.n_source} source and {result.n_target} target labels, "
                         f"got {s.shape} and {t.shape}")
    sc, si = np.unique(s, return_inverse=True)
    tc, ti = np.unique(t, return_inverse=True)
    onehot_t = sparse.csr_matrix((np.ones(len(t)), (np.arange(len(t)), ti)),
                                 shape=(len(t), len(tc)))
    per_target = result._T_matmul(onehot_t)          # (n_source, n_target_groups)
    mass = np.zeros((len(sc), len(tc)))
    np.add.at(mass, si, per_target)
    if normalize == "row":
        mass = mass / np.maximum(mass.sum(1, keepdims=True), 1e-300)
    elif normalize == "column":
        mass = mass / np.maximum(mass.sum(0, keepdims=True), 1e-300)
    elif normalize != "none":
        raise ValueError(f"normalize must be 'row', 'column' or 'none', got {normalize!r}")
    fig, ax = _fig_ax(ax, (1.2 + 0.5 * len(tc), 1.0 + 0.4 * len(sc)))
    im = ax.imshow(mass, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(tc)), tc, rotation=90)
    ax.set_yticks(range(len(sc)), sc)
    ax.set_xlabel("target group")
    ax.set_ylabel("source group")
    ax.set_title(title or f"coupling mass ({normalize}-normalised)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def gw_joint_embedding(adata_img, adata_rna, *, key: str = "gw_map", color_img: str | None = None,
                       color_rna: str | None = None, ax=None, s: float = 6.0):
    """Image cells (projected by the coupling) and RNA cells in one 2-D PCA of the RNA space.

    Uses ``obsm["X_" + key]`` written by ``cellsae.tl.gw_map`` in both objects.
    """
    from sklearn.decomposition import PCA

    k = f"X_{key}"
    for name, a in (("adata_img", adata_img), ("adata_rna", adata_rna)):
        if k not in a.obsm:
            raise KeyError(f"{name}.obsm has no '{k}'; run cellsae.tl.gw_map(..., key_added="
                           f"'{key}') first")
    yi, yr = np.asarray(adata_img.obsm[k]), np.asarray(adata_rna.obsm[k])
    keep = np.isfinite(yi).all(1)
    pca = PCA(2, random_state=0).fit(yr)
    zr, zi = pca.transform(yr), pca.transform(yi[keep])
    fig, ax = _fig_ax(ax, (5.5, 4.5))
    ax.scatter(zr[:, 0], zr[:, 1], s=s, c="lightgrey", label="RNA cells", linewidths=0)
    if color_img is not None:
        labels = adata_img.obs[color_img].astype(str).to_numpy()[keep]
        for lab in np.unique(labels):
            m = labels == lab
            ax.scatter(zi[m, 0], zi[m, 1], s=s, label=f"image: {lab}", linewidths=0)
    else:
        ax.scatter(zi[:, 0], zi[:, 1], s=s, c="tab:red", label="image cells", linewidths=0)
    if color_rna is not None:
        ax.set_title(f"joint embedding (RNA coloured grey; {color_rna} not shown)")
    else:
        ax.set_title("joint embedding after barycentric projection")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def gw_confusion(true_labels, predicted_labels, *, normalize: bool = True, ax=None,
                 cmap: str = "Blues"):
    """Confusion matrix of transferred labels (rows: truth, columns: prediction)."""
    t = np.asarray(true_labels).astype(str)
    p = np.asarray(predicted_labels).astype(str)
    if t.shape != p.shape:
        raise ValueError(f"true and predicted labels differ in shape: {t.shape} vs {p.shape}")
    classes = np.unique(np.concatenate([t, p]))
    ti = np.searchsorted(classes, t)
    pi = np.searchsorted(classes, p)
    cm = np.zeros((len(classes), len(classes)))
    np.add.at(cm, (ti, pi), 1)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = _fig_ax(ax, (1.5 + 0.45 * len(classes), 1.2 + 0.45 * len(classes)))
    im = ax.imshow(cm, cmap=cmap, vmin=0)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("transferred label")
    ax.set_ylabel("true label")
    acc = float((t == p).mean())
    ax.set_title(f"label transfer (accuracy {acc:.2f})")
    if len(classes) <= 12:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else int(cm[i, j]), ha="center",
                        va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def gw_predictability(table, *, top: int = 40, ax=None):
    """Cross-validated R² per gene (bars), predictable genes highlighted, null mean ± 2 SD.

    ``table`` is the DataFrame from ``GWResult.predictability``.
    """
    for col in ("r2", "null_mean", "null_sd", "predictable"):
        if col not in table.columns:
            raise KeyError(f"table lacks column '{col}'; pass GWResult.predictability(...)")
    df = table.sort_values("r2", ascending=False).head(top)
    fig, ax = _fig_ax(ax, (max(4.0, 0.22 * len(df) + 1.5), 3.8))
    x = np.arange(len(df))
    colors = np.where(df["predictable"].to_numpy(), "tab:blue", "lightgrey")
    ax.bar(x, df["r2"].to_numpy(), color=colors)
    ax.errorbar(x, df["null_mean"].to_numpy(), yerr=2 * df["null_sd"].to_numpy(), fmt="_",
                color="black", lw=0.8, label="permutation null ± 2 SD")
    ax.set_xticks(x, df.index.astype(str), rotation=90, fontsize=7)
    ax.set_ylabel("cross-validated R²")
    n_pred = int(table["predictable"].sum())
    ax.set_title(f"gene predictability from image features ({n_pred} predictable)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
