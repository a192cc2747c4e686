"""Plot a gene-module hierarchy as an icicle: one row per level, children under parents."""

from __future__ import annotations

import numpy as np

__all__ = ["module_tree"]


def _layout(hierarchy):
    """Rectangles (level, x0, width, name, size, module index) with children inside parents."""
    boxes = []
    sizes = [np.bincount(hierarchy.labels[i][hierarchy.labels[i] >= 0],
                         minlength=len(hierarchy.module_names[i]))
             for i in range(hierarchy.n_levels)]
    total = max(1, int(sizes[0].sum()))
    spans: dict[tuple[int, int], tuple[float, float]] = {}
    x = 0.0
    for m, name in enumerate(hierarchy.module_names[0]):
        w = sizes[0][m] / total
        spans[(0, m)] = (x, w)
        boxes.append((0, x, w, name, int(sizes[0][m]), m))
        x += w
    for i in range(1, hierarchy.n_levels):
        parents = hierarchy.parents[i]
        orphan_x = 1.0
        for parent in range(len(hierarchy.module_names[i - 1])):
            children = np.flatnonzero(parents == parent)
            if not children.size or (i - 1, parent) not in spans:
                continue
            x0, width = spans[(i - 1, parent)]
            child_sizes = sizes[i][children] / total
            scale = min(1.0, width / child_sizes.sum()) if child_sizes.sum() else 1.0
            cx = x0
            for c, w in zip(children, child_sizes * scale, strict=True):
                spans[(i, int(c))] = (cx, w)
                boxes.append((i, cx, w, hierarchy.module_names[i][c], int(sizes[i][c]), int(c)))
                cx += w
        for c in np.flatnonzero(parents < 0):  # modules with no parent: drawn past the edge
            w = sizes[i][c] / total
            spans[(i, int(c))] = (orphan_x, w)
            boxes.append((i, orphan_x, w, hierarchy.module_names[i][c], int(sizes[i][c]), int(c)))
            orphan_x += w
    return boxes


def module_tree(hierarchy, *, ax=None, show_terms: bool = True, min_label_width: float = 0.03,
                cmap: str = "tab10", title: str | None = None):
    """Icicle plot of a :class:`~cellsae.pathways.Hierarchy`.

    Level 1 is the top row; each module is a box whose width is its number of genes,
    placed under its parent module. Labels give the module's name and size (and its top
    enriched term when the hierarchy has enrichment and ``show_terms``); boxes narrower
    than ``min_label_width`` of the axis stay unlabelled. Colours follow level-1 modules;
    the border shade marks bootstrap stability when it was computed.

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if hierarchy.n_levels == 0 or sum(hierarchy.n_modules) == 0:
        raise ValueError("the hierarchy has no modules to plot")
    boxes = _layout(hierarchy)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(8.0, 0.35 * max(hierarchy.n_modules)),
                                        1.2 + 0.9 * hierarchy.n_levels))
    else:
        fig = ax.figure
    colours = plt.get_cmap(cmap)
    top_terms = hierarchy._top_terms() if show_terms else {}
    root_of: dict[str, int] = {}
    for level, _, _, name, _, m in boxes:
        if level == 0:
            root_of[name] = m
    x_max = 1.0
    for level, x0, width, name, size, m in boxes:
        root = root_of.get(name.split(".")[0], m if level == 0 else 0)
        stability = None
        if hierarchy.module_stability is not None:
            value = hierarchy.module_stability[level][m]
            stability = None if np.isnan(value) else float(value)
        y = hierarchy.n_levels - 1 - level
        ax.add_patch(Rectangle((x0, y), width, 0.92, facecolor=colours(root % colours.N),
                               alpha=0.35 + 0.5 * (1 - level / max(1, hierarchy.n_levels)),
                               edgecolor="black" if stability is None else
                               plt.get_cmap("Greys")(0.3 + 0.7 * stability), linewidth=1.0))
        x_max = max(x_max, x0 + width)
        if width >= min_label_width:
            label = f"{name}\n{size} genes"
            if name in top_terms and top_terms[name][0]:
                label += f"\n{top_terms[name][0][:18]}"
            ax.text(x0 + width / 2, y + 0.46, label, ha="center", va="center",
                    fontsize=7 if width > 0.08 else 6, clip_on=True)
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, hierarchy.n_levels)
    ax.set_yticks([hierarchy.n_levels - 1 - i + 0.46 for i in range(hierarchy.n_levels)])
    ax.set_yticklabels([f"level {i + 1}\n{n} modules\nres {r:.3g}" for i, (n, r) in
                        enumerate(zip(hierarchy.n_modules, hierarchy.resolutions, strict=True))],
                       fontsize=8)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(hierarchy.genes)} genes (box width = module size); nesting "
                  f"consistency {hierarchy.nesting_consistency:.2f}")
    for spine in ("top", "right", "bottom"):
        ax.spines[spine].set_visible(False)
    ax.set_title(title or "gene-module hierarchy")
    fig.tight_layout()
    return fig
