"""Evaluation glue: run an SAE over data and compute the quality report."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SAE


def evaluate(sae: SAE, X: Any, *, true_dictionary: np.ndarray | None = None,
             true_codes=None, labels: np.ndarray | None = None, key: str | None = None,
             batch_size: int = 8192, seed: int = 0, max_samples: int | None = 200_000):
    """Encode and reconstruct ``X`` with ``sae`` and return an :class:`SAEReport`.

    Parameters
    ----------
    sae
        A trained SAE.
    X : (n_samples, d_in) array or any input :func:`cellsae.sae.train` accepts
        Evaluation inputs (use held-out data). Only the first ``max_samples`` rows are used.
    true_dictionary : (n_features, d_in) array, optional
        Ground-truth feature directions (toy data): adds MMCS and recovery@τ.
    true_codes : (n_samples, n_features) array or sparse matrix, optional
        Ground-truth activations, row-aligned with ``X``: adds MCC.
    labels : (n_samples,) array, optional
        Class labels: adds probe accuracy from codes vs from inputs.
    """
    from ..metrics.sae import sae_report
    from .data import open_source

    source = open_source(X, key=key)
    n = source.n if max_samples is None else min(source.n, max_samples)
    x = source.read(0, n)
    source.check_block(x, 0)
    codes = sae.encode(x, batch_size=batch_size, progress=False)
    x_hat = np.concatenate([sae.decode(codes[i:i + batch_size])
                            for i in range(0, n, batch_size)])
    if true_codes is not None:
        true_codes = true_codes[:n]
    if labels is not None:
        labels = np.asarray(labels)[:n]
    return sae_report(x, x_hat, codes, sae.W_dec.detach().cpu().numpy(),
                      true_dictionary=true_dictionary, true_codes=true_codes, labels=labels,
                      seed=seed)
