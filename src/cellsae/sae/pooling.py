"""Pooling token-level codes into cell-level codes."""

from __future__ import annotations

import numpy as np
from scipy import sparse

_POOLS = ("max", "mean", "sum")


def pool_codes(codes, cell_index, n_cells: int | None = None, *, pool: str = "max"
               ) -> sparse.csr_matrix:
    """Pool token codes into one row per cell.

    Parameters
    ----------
    codes : (n_tokens, d_sae) sparse matrix or array
        Token-level codes (e.g. from :meth:`SAE.encode`).
    cell_index : (n_tokens,) int array
        The cell each token belongs to, in ``[0, n_cells)``.
    n_cells
        Number of cells (default ``cell_index.max() + 1``); cells without tokens get zeros.
    pool
        ``"max"``, ``"mean"`` (over the cell's tokens) or ``"sum"``.

    Returns
    -------
    (n_cells, d_sae) float32 CSR matrix.
    """
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
    codes = sparse.csr_matrix(codes, dtype=np.float32)
    cell_index = np.asarray(cell_index)
    if cell_index.ndim != 1 or len(cell_index) != codes.shape[0]:
        raise ValueError(f"cell_index must be 1-D with one entry per token "
                         f"({codes.shape[0]}), got shape {cell_index.shape}")
    if not np.issubdtype(cell_index.dtype, np.integer):
        raise TypeError(f"cell_index must hold integers, got dtype {cell_index.dtype}")
    if len(cell_index) and cell_index.min() < 0:
        raise ValueError("cell_index must be non-negative")
    if n_cells is None:
        n_cells = int(cell_index.max()) + 1 if len(cell_index) else 0
    if len(cell_index) and cell_index.max() >= n_cells:
        raise ValueError(f"cell_index holds {int(cell_index.max())} but n_cells={n_cells}")
    coo = codes.tocoo()
    rows = cell_index[coo.row]
    shape = (n_cells, codes.shape[1])
    if pool in ("sum", "mean"):
        out = sparse.csr_matrix((coo.data, (rows, coo.col)), shape=shape, dtype=np.float32)
        out.sum_duplicates()
        if pool == "mean":
            counts = np.bincount(cell_index, minlength=n_cells).astype(np.float32)
            out = sparse.diags(1.0 / np.maximum(counts, 1)) @ out
        return sparse.csr_matrix(out, dtype=np.float32)
    # max: sort entries by (cell, latent, value) and keep the last of each (cell, latent).
    # Codes are non-negative, so absent entries (0) never beat a stored one.
    order = np.lexsort((coo.data, coo.col, rows))
    r, c, v = rows[order], coo.col[order], coo.data[order]
    last = np.ones(len(r), dtype=bool)
    if len(r):
        last[:-1] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    out = sparse.csr_matrix((v[last], (r[last], c[last])), shape=shape, dtype=np.float32)
    return out
