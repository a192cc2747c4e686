"""Encode cells with a trained SAE into an AnnData of cells × latents."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["latent_anndata", "sae_encode"]


def _get_rep(adata, use_rep: str) -> np.ndarray:
    if use_rep == "X":
        X = adata.X
        return X.toarray() if sparse.issparse(X) else np.asarray(X)
    if use_rep in adata.obsm:
        return np.asarray(adata.obsm[use_rep])
    if use_rep in adata.layers:
        X = adata.layers[use_rep]
        return X.toarray() if sparse.issparse(X) else np.asarray(X)
    raise KeyError(f"use_rep={use_rep!r} is not in adata.obsm ({sorted(adata.obsm)}) nor "
                   f"adata.layers ({sorted(adata.layers)}); pass use_rep='X' to use adata.X")


def sae_encode(adata, sae: Any, *, use_rep: str = "X_cnn", tokens: np.ndarray | None = None,
               cell_index: np.ndarray | None = None, pool: str = "max",
               batch_size: int = 8192, device: Any = None, prefix: str = "latent_"):
    """Encode each cell with an SAE; return an AnnData whose "genes" are the latents.

    Parameters
    ----------
    adata : AnnData
        Cells; ``adata.obsm[use_rep]`` holds the representation the SAE was trained on.
    sae : SAE or path
        A trained :class:`cellsae.sae.SAE` or the path of a saved one.
    use_rep
        Key in ``obsm`` (or ``layers``, or ``"X"``) with the (n_cells, d_in) inputs.
    tokens : (n_tokens, d_in) array, optional
        Token-level inputs instead of ``use_rep``; with ``cell_index`` (n_tokens,) giving
        each token's cell (row of ``adata``), codes are pooled per cell with ``pool``.
    pool
        ``"max"``, ``"mean"`` or ``"sum"`` pooling of token codes.
    batch_size, device
        Passed to :meth:`SAE.encode`.
    prefix
        Latent names are ``f"{prefix}{i}"``.

    Returns
    -------
    AnnData
        ``X``: (n_cells, d_sae) float32 CSR of latent activations; ``obs`` copied from
        ``adata``; ``var`` with ``frequency`` (fraction of cells where the latent is
        active), ``mean_activation`` (over all cells), ``mean_active_activation`` (over
        cells where it is active) and ``max_activation``; ``uns["sae"]`` records the
        parameters.
    """
    from ..sae import load, pool_codes

    if isinstance(sae, str) or hasattr(sae, "__fspath__"):
        sae = load(sae)
    if tokens is not None:
        if cell_index is None:
            raise ValueError("tokens= needs cell_index= (the cell of each token)")
        codes = pool_codes(sae.encode(np.asarray(tokens), batch_size=batch_size,
                                      device=device),
                           cell_index, adata.n_obs, pool=pool)
        source = "tokens"
    else:
        rep = _get_rep(adata, use_rep)
        codes = sae.encode(rep, batch_size=batch_size, device=device)
        source = use_rep
    params = {"use_rep": source, "pool": pool if tokens is not None else None}
    return latent_anndata(codes, sae, obs=adata.obs.copy(), prefix=prefix, params=params)


def latent_anndata(codes, sae: Any, *, obs: pd.DataFrame | None = None,
                   prefix: str = "latent_", params: dict | None = None):
    """Wrap (n_cells, d_sae) codes as an AnnData with per-latent statistics in ``var``."""
    import anndata as ad

    codes = sparse.csr_matrix(codes, dtype=np.float32)
    n = max(codes.shape[0], 1)
    nnz = np.bincount(codes.indices[codes.data != 0], minlength=codes.shape[1])
    sums = np.asarray(codes.sum(0), dtype=np.float64).ravel()
    maxima = np.asarray(codes.max(0).toarray()).ravel() if codes.nnz else \
        np.zeros(codes.shape[1])
    var = pd.DataFrame({
        "frequency": nnz / n,
        "mean_activation": sums / n,
        "mean_active_activation": np.divide(sums, nnz, out=np.zeros_like(sums),
                                            where=nnz > 0),
        "max_activation": maxima,
    }, index=pd.Index([f"{prefix}{i}" for i in range(codes.shape[1])]))
    out = ad.AnnData(X=codes, obs=obs, var=var)
    out.uns["sae"] = {"params": {**(params or {}), "arch": sae.arch, "d_in": sae.d_in,
                                 "d_sae": sae.d_sae,
                                 "hparams": {k: v for k, v in sae.hparams().items()
                                             if v is not None}}}
    out.uns["sae"]["params"] = {k: v for k, v in out.uns["sae"]["params"].items()
                                if v is not None}
    return out
