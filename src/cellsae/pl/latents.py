"""Plots for latents-as-expression: volcano, top-activating crops of a latent, comparison table.

Each function draws with matplotlib and returns the Figure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["volcano", "latent_gallery", "comparison_plot"]


def volcano(table: pd.DataFrame, *, group: str | None = None, x: str = "effect_size",
            alpha: float = 0.05, label_top: int = 8, ax=None, title: str | None = None):
    """Volcano plot of a differential-features table.

    Parameters
    ----------
    table : DataFrame
        From :func:`cellsae.tl.differential_features` (columns ``feature``, ``group``,
        ``padj``, the ``x`` column and ``significant``).
    group : str, optional
        Which comparison to draw when the table holds several.
    x : str
        Horizontal axis: ``"effect_size"`` (default; scale-free) or ``"log2fc"``.
    alpha : float
        Horizontal line at ``-log10(alpha)``.
    label_top : int
        Name the most significant features.

    Returns
    -------
    matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    missing = [c for c in ("feature", "group", "padj", x) if c not in table.columns]
    if missing:
        raise KeyError(f"table lacks column(s) {missing}; columns: {list(table.columns)}")
    groups = pd.unique(table["group"])
    if group is None:
        if len(groups) > 1:
            raise ValueError(f"the table holds several comparisons {list(groups)}; pass group=")
        group = groups[0]
    elif group not in set(groups):
        raise ValueError(f"group {group!r} not in the table; groups: {list(groups)}")
    t = table[(table["group"] == group) & table["padj"].notna() & table[x].notna()]
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 4))
    ax = ax if ax is not None else fig.add_subplot(111)
    y = -np.log10(np.clip(t["padj"].to_numpy(dtype=float), 1e-300, 1))
    sig = t["significant"].to_numpy(bool) if "significant" in t else t["padj"].to_numpy() < alpha
    xv = t[x].to_numpy(dtype=float)
    ax.scatter(xv[~sig], y[~sig], s=6, c="0.7", lw=0, label="not significant")
    ax.scatter(xv[sig], y[sig], s=8, c=np.where(xv[sig] > 0, "tab:red", "tab:blue"), lw=0,
               label=f"significant ({int(sig.sum())})")
    ax.axhline(-np.log10(alpha), color="0.4", lw=0.8, ls="--")
    ax.axvline(0, color="0.4", lw=0.5)
    for i in np.argsort(-y)[:label_top]:
        ax.annotate(str(t["feature"].iloc[i]), (xv[i], y[i]), fontsize=6,
                    xytext=(2, 2), textcoords="offset points")
    ref = t["reference"].iloc[0] if "reference" in t and len(t) else "reference"
    ax.set_xlabel(f"{x} ({group} vs {ref})")
    ax.set_ylabel("−log10 adjusted p")
    ax.set_title(title or f"{group} vs {ref}: {len(t)} features")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig


def latent_gallery(adata, latent: str | int, crops=None, *, n: int = 16, ncols: int = 8,
                   activation_maps: np.ndarray | None = None, sae=None, tokens=None,
                   channels: Sequence[str] | None = None,
                   channel_names: Sequence[str] | None = None, map_alpha: float = 0.45,
                   title: str | None = None):
    """The top-activating cells of one latent as a crop gallery.

    Parameters
    ----------
    adata : AnnData
        Latents AnnData; uses ``varm["top_cells"]`` (from
        :func:`cellsae.tl.annotate_latents`) or ranks ``layers["activations"]``/``X``.
    latent : str or int
        Latent name (``var_names``) or position.
    crops : (n_cells, C, H, W) array, CropStore, or None
        Default ``adata.obsm["single_cell_images"]``.
    n, ncols : int
        Crops shown and grid width.
    activation_maps : (n_cells, h, w) array, optional
        The latent's spatial activation per cell (token-level SAEs); drawn over each crop,
        upsampled bilinearly to the crop size.
    sae, tokens : SAE and TokenStore (or its path), optional
        For a token-level SAE: compute the activation maps of the shown cells from the
        token store (:func:`cellsae.tl.token_activation_maps`) instead of passing
        ``activation_maps``. The latent's dictionary index is ``var["latent_index"]``.
    channels, channel_names : sequences of str, optional
        Channels to composite and the names of all channels (default from
        ``uns["single_cell_images"]["channel_names"]``).

    Returns
    -------
    matplotlib Figure; each panel is titled with the activation.
    """
    import matplotlib.pyplot as plt
    from scipy import sparse

    from ..crops import CROPS_KEY
    from .crops import composite

    if isinstance(latent, str):
        if latent not in adata.var_names:
            raise KeyError(f"latent {latent!r} not in var_names (e.g. {list(adata.var_names[:5])})")
        j = int(np.flatnonzero(adata.var_names == latent)[0])
    else:
        j = int(latent)
        if not 0 <= j < adata.n_vars:
            raise IndexError(f"latent position {j} outside [0, {adata.n_vars})")
    x = adata.layers["activations"] if "activations" in adata.layers else adata.X
    col = np.asarray(x[:, j].toarray()).ravel() if sparse.issparse(x) else np.asarray(x[:, j])
    if "top_cells" in adata.varm and adata.varm["top_cells"].shape[1] >= n:
        top = np.asarray(adata.varm["top_cells"][j, :n])
        top = top[top >= 0]
    else:
        order = np.argsort(-col, kind="stable")[:n]
        top = order[col[order] > 0]
    if len(top) == 0:
        raise ValueError(f"latent {adata.var_names[j]!r} is not active in any cell")
    if (sae is None) != (tokens is None):
        raise ValueError("activation maps from tokens need both sae= and tokens=")
    maps = activation_maps
    if sae is not None:
        if activation_maps is not None:
            raise ValueError("pass either activation_maps= or sae= and tokens=, not both")
        from ..tl.annotate import token_activation_maps

        index = int(adata.var["latent_index"].iloc[j]) if "latent_index" in adata.var else j
        maps = dict(zip(top.tolist(), token_activation_maps(sae, tokens, index, top),
                        strict=True))
    if crops is None:
        if CROPS_KEY not in adata.obsm:
            raise KeyError(f"no crops given and obsm[{CROPS_KEY!r}] is missing; pass crops=")
        crops = adata.obsm[CROPS_KEY]
    order = np.argsort(top)  # stores and h5 arrays want increasing indices
    imgs = np.empty((len(top),) + tuple(np.asarray(crops[top[:1]]).shape[1:]), np.float32)
    imgs[order] = np.asarray(crops[np.sort(top)], dtype=np.float32)
    if channel_names is None and CROPS_KEY in adata.uns:
        channel_names = list(adata.uns[CROPS_KEY].get("channel_names", [])) or None
    rgb = composite(imgs, channel_names, channels=channels)
    nrows = int(np.ceil(len(top) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.45 * nrows + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, cell in enumerate(top):
        ax = axes.ravel()[i]
        ax.imshow(rgb[i], interpolation="nearest")
        if maps is not None:
            amap = np.asarray(maps[int(cell)], dtype=np.float32)
            h, w = rgb.shape[1:3]
            ax.imshow(amap, cmap="magma", alpha=map_alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                      interpolation="bilinear", vmin=0, vmax=max(float(amap.max()), 1e-9))
        ax.set_title(f"{col[cell]:.2g}", fontsize=7)
    fig.suptitle(title or f"{adata.var_names[j]}: top {len(top)} cells", fontsize=9)
    fig.tight_layout()
    return fig


_METRIC_LABELS = {
    "knn_sd_ratio": "kNN local/global SD (↓)", "morans_i": "Moran's I (↑)",
    "phenotype_r2": "phenotype R² (↑)", "effective_rank": "effective rank",
    "trustworthiness": "trustworthiness (↑)", "continuity": "continuity (↑)",
    "factor_mcc": "factor MCC (↑)",
}


def comparison_plot(table: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                    title: str | None = None):
    """One panel per metric: each representation's value with its confidence interval.

    Parameters
    ----------
    table : DataFrame
        From :func:`cellsae.tl.compare_representations`.
    metrics : sequence of str, optional
        Default: every metric of the table that has a ``_ci_low`` column.

    Returns
    -------
    matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if metrics is None:
        metrics = [c for c in _METRIC_LABELS if c in table.columns]
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise KeyError(f"table lacks metric(s) {missing}; columns: {list(table.columns)}")
    if not metrics:
        raise ValueError("no metric to plot")
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics), 2.6), squeeze=False)
    names = [str(i) for i in table.index]
    pos = np.arange(len(names))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], metrics, strict=True):
        v = table[m].to_numpy(dtype=float)
        lo = table.get(f"{m}_ci_low", pd.Series(np.nan, index=table.index)).to_numpy(float)
        hi = table.get(f"{m}_ci_high", pd.Series(np.nan, index=table.index)).to_numpy(float)
        err = np.vstack([np.where(np.isnan(lo), 0, v - lo), np.where(np.isnan(hi), 0, hi - v)])
        ax.bar(pos, v, color=[colours[i % len(colours)] for i in pos], alpha=0.8)
        ax.errorbar(pos, v, yerr=np.clip(err, 0, None), fmt="none", ecolor="k", capsize=3, lw=1)
        ax.set_xticks(pos, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(_METRIC_LABELS.get(m, m), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
