"""Crop galleries: a grid of single-cell crops per group, channels as false colour."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Colours a microscopist expects: mitochondria red, lysosomes green, nuclei blue,
# death dye yellow-white; further channels grey.
_DEFAULT_COLOURS = {
    "mito": (1.0, 0.25, 0.2), "lyso": (0.2, 1.0, 0.3), "nucleus": (0.25, 0.45, 1.0),
    "death": (1.0, 0.9, 0.2), "mask": (0.5, 0.5, 0.5),
}
_FALLBACK = [(1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.4, 1.0), (1.0, 0.9, 0.2),
             (0.9, 0.3, 0.9), (0.3, 0.9, 0.9)]


def composite(crops: np.ndarray, channel_names: Sequence[str] | None = None, *,
              channels: Sequence[str] | None = None, colours: dict | None = None,
              percentile: float = 99.5) -> np.ndarray:
    """False-colour RGB composites of crops.

    Parameters
    ----------
    crops : (n, C, H, W) array.
    channel_names : names of the C channels (default ``ch0..``).
    channels : subset of channel names to show (default: all but ``mask``).
    percentile : each channel is scaled so this percentile over all crops maps to 1.

    Returns
    -------
    (n, H, W, 3) float array in [0, 1].
    """
    crops = np.asarray(crops, dtype=np.float32)
    if crops.ndim != 4:
        raise ValueError(f"crops must be (n, C, H, W), got shape {crops.shape}")
    names = list(channel_names or [f"ch{i}" for i in range(crops.shape[1])])
    if len(names) != crops.shape[1]:
        raise ValueError(f"{len(names)} channel names for {crops.shape[1]} channels")
    show = list(channels) if channels is not None else [c for c in names if c != "mask"]
    missing = [c for c in show if c not in names]
    if missing:
        raise ValueError(f"channel(s) {missing} not found; available: {names}")
    colours = {**_DEFAULT_COLOURS, **(colours or {})}
    rgb = np.zeros((crops.shape[0], crops.shape[2], crops.shape[3], 3), np.float32)
    for i, name in enumerate(show):
        ch = crops[:, names.index(name)]
        lo = np.percentile(ch, 1)
        hi = np.percentile(ch, percentile)
        scaled = np.clip((ch - lo) / max(hi - lo, 1e-6), 0, 1)
        colour = np.asarray(colours.get(name, _FALLBACK[i % len(_FALLBACK)]), np.float32)
        rgb += scaled[..., None] * colour
    return np.clip(rgb, 0, 1)


def crops_gallery(crops, groups: Sequence | None = None, *, channel_names=None,
                  n_per_group: int = 8, channels: Sequence[str] | None = None,
                  title: str | None = None, seed: int = 0, scale: float = 1.0):
    """A grid of crops, one row per group, as false-colour composites.

    Parameters
    ----------
    crops : (n, C, H, W) array, a ``CropStore``, or an AnnData holding
        ``obsm["single_cell_images"]`` (then ``groups`` may name an ``obs`` column).
    groups : (n,) labels, or an ``obs`` column name; None puts all crops in one row.
    n_per_group : crops shown per row (drawn at random with ``seed``).

    Returns
    -------
    matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from ..crops import CROPS_KEY, CropStore

    store = None
    if hasattr(crops, "obsm"):
        adata = crops
        if isinstance(groups, str):
            if groups not in adata.obs:
                raise KeyError(f"'{groups}' is not an obs column; available: {list(adata.obs)}")
            column = adata.obs[groups]
            order = ([str(c) for c in column.cat.categories if (column == c).any()]
                     if hasattr(column, "cat") else None)
            groups = column.astype(str).to_numpy()
        if CROPS_KEY in adata.obsm:
            store = CropStore(np.asarray(adata.obsm[CROPS_KEY]))
        elif "h5sc_path" in adata.uns:
            store = CropStore(adata.uns["h5sc_path"])
        else:
            raise KeyError(f"AnnData has no obsm['{CROPS_KEY}'] and no uns['h5sc_path']")
        info = adata.uns.get(CROPS_KEY, {})
        channel_names = channel_names or list(info.get("channel_names", [])) or None
    elif isinstance(crops, CropStore):
        store = crops
        channel_names = channel_names or store.channel_names
    else:
        store = CropStore(np.asarray(crops))
    n = len(store)
    groups = np.asarray(groups).astype(str) if groups is not None else np.full(n, "all cells")
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} crops")
    rng = np.random.default_rng(seed)
    levels = list(dict.fromkeys(groups.tolist()))
    if hasattr(crops, "obsm") and locals().get("order"):
        levels = [lv for lv in order if lv in levels]
    picks = []
    for level in levels:
        idx = np.flatnonzero(groups == level)
        picks.append(np.sort(rng.choice(idx, min(n_per_group, len(idx)), replace=False)))
    all_idx = np.concatenate(picks) if picks else np.zeros(0, int)
    rgb = composite(store[all_idx], channel_names, channels=channels)
    fig, axes = plt.subplots(len(levels), n_per_group, squeeze=False,
                             figsize=(scale * 1.2 * n_per_group + 1.2, scale * 1.25 * len(levels)))
    pos = 0
    for r, level in enumerate(levels):
        for c in range(n_per_group):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(picks[r]):
                ax.imshow(rgb[pos], interpolation="nearest")
                pos += 1
        axes[r, 0].set_ylabel(level, rotation=0, ha="right", va="center", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(wspace=0.04, hspace=0.06, left=0.12)
    return fig
