"""``GWResult``: a coupling between source (e.g. image) and target (e.g. RNA) cells, with
the parameters that produced it, its convergence history, and what one does with it:
label transfer, imputation, gene predictability, FOSCTTM, save/load (no pickle)."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import sparse

from .._utils import as_rng, atomic_path, require_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

__all__ = ["FactorizedCoupling", "GWResult", "load_result"]


@dataclass
class FactorizedCoupling:
    """A coupling stored as ``T = left @ core @ right.T`` (linear memory in the cells).

    ``left : (n, r)`` and ``right : (m, s)`` are (sparse or dense) soft assignments of
    cells to anchors and ``core : (r, s)`` couples the anchors. Rows of ``left`` sum to
    the cell's share of its anchors' mass, so ``T`` sums to ``core.sum()``.
    """

    left: Any
    core: np.ndarray
    right: Any

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[0])

    def matmul(self, y: np.ndarray) -> np.ndarray:
        """``T @ y`` for ``y : (m, d)``."""
        return np.asarray(self.left @ (self.core @ np.asarray(self.right.T @ y)))

    def rmatmul(self, x: np.ndarray) -> np.ndarray:
        """``T.T @ x`` for ``x : (n, d)``."""
        return np.asarray(self.right @ (self.core.T @ np.asarray(self.left.T @ x)))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense rows ``T[idx]``."""
        lt = self.left[idx]
        lt = lt.toarray() if sparse.issparse(lt) else np.asarray(lt)
        r = self.right.toarray() if sparse.issparse(self.right) else np.asarray(self.right)
        return (lt @ self.core) @ r.T

    def toarray(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]))


def _adata_matrix(adata, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer '{layer}' not found; the AnnData has layers {list(adata.layers)}")
    return adata.layers[layer]


def _as_array_2d(y) -> np.ndarray | sparse.spmatrix:
    if sparse.issparse(y):
        return y.tocsr()
    y = np.asarray(y)
    return y[:, None] if y.ndim == 1 else y


@dataclass
class GWResult:
    """A (fused / unbalanced / factorised) Gromov–Wasserstein coupling and what it gives.

    Attributes
    ----------
    coupling : (n_source, n_target) ndarray, scipy sparse matrix or FactorizedCoupling
        Transport plan; entry ``(i, j)`` is the mass moved from source cell ``i`` to
        target cell ``j``; sums to one for balanced problems.
    objective : float
        Square-loss GW objective of the coupling on the exact costs (POT's ``gwloss``).
    converged : bool
    params : dict
        Everything needed to reproduce the run (solver, epsilon, costs, ...).
    history : list of dict
        One record per outer iteration (epsilon, objective, coupling change, ...).
    warnings : list of str
        Problems found on the way (disconnected graph, non-convergence, ...).
    selection : dict, optional
        Label-free hyperparameter selection: the criterion, every candidate's scores and
        the chosen one.
    """

    coupling: Any
    objective: float
    converged: bool
    params: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    selection: dict | None = None
    dual_source: np.ndarray | None = None
    dual_target: np.ndarray | None = None

    # -- shapes and products --------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.coupling.shape)

    @property
    def n_source(self) -> int:
        return self.shape[0]

    @property
    def n_target(self) -> int:
        return self.shape[1]

    def _T_matmul(self, y):
        c = self.coupling
        if isinstance(c, FactorizedCoupling):
            return c.matmul(y.toarray() if sparse.issparse(y) else y)
        out = c @ y
        return out.toarray() if sparse.issparse(out) else np.asarray(out)

    def _Tt_matmul(self, x):
        c = self.coupling
        if isinstance(c, FactorizedCoupling):
            return c.rmatmul(x.toarray() if sparse.issparse(x) else x)
        out = c.T @ x
        return out.toarray() if sparse.issparse(out) else np.asarray(out)

    def row_sums(self) -> np.ndarray:
        return self._T_matmul(np.ones((self.n_target, 1))).ravel()

    def col_sums(self) -> np.ndarray:
        return self._Tt_matmul(np.ones((self.n_source, 1))).ravel()

    def dense(self) -> np.ndarray:
        """The coupling as a dense array (refuses beyond 2e8 entries)."""
        c = self.coupling
        if np.prod(self.shape) > 2e8:
            raise MemoryError(f"a dense {self.shape} coupling would not fit comfortably in "
                              "memory; use the products (impute, transfer_labels) instead")
        if isinstance(c, FactorizedCoupling):
            return c.toarray()
        return c.toarray() if sparse.issparse(c) else np.asarray(c)

    def _row_blocks(self, block: int = 2048):
        c = self.coupling
        for start in range(0, self.n_source, block):
            idx = np.arange(start, min(start + block, self.n_source))
            if isinstance(c, FactorizedCoupling):
                yield idx, c.rows(idx)
            elif sparse.issparse(c):
                yield idx, c[idx].toarray()
            else:
                yield idx, np.asarray(c[idx])

    # -- projections ----------------------------------------------------------------------

    def barycentric_projection(self, y, *, direction: Literal["to_source", "to_target"] =
                               "to_source") -> np.ndarray:
        """Average target features over each source cell's coupling row (or the reverse).

        Parameters
        ----------
        y : (n_target, d) array (``direction="to_source"``) or (n_source, d) array
        direction : "to_source" puts target features on source cells; "to_target" the
            reverse.

        Returns
        -------
        (n_source, d) array (or (n_target, d) for "to_target").
        """
        y = _as_array_2d(y)
        if direction == "to_source":
            if y.shape[0] != self.n_target:
                raise ValueError(f"y has {y.shape[0]} rows but the coupling has "
                                 f"{self.n_target} target cells")
            num, den = self._T_matmul(y), self.row_sums()
        elif direction == "to_target":
            if y.shape[0] != self.n_source:
                raise ValueError(f"y has {y.shape[0]} rows but the coupling has "
                                 f"{self.n_source} source cells")
            num, den = self._Tt_matmul(y), self.col_sums()
        else:
            raise ValueError(f"direction must be 'to_source' or 'to_target', got {direction!r}")
        zero = den <= 0
        if zero.any():
            logger.warning("%d cell(s) received no mass; their projection is NaN", zero.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den[:, None]

    def impute(self, expression, *, layer: str | None = None) -> np.ndarray:
        """Barycentric projection of target-side expression onto source cells.

        Parameters
        ----------
        expression : (n_target, n_genes) array, sparse matrix or AnnData
            Expression of the target (RNA) cells; for AnnData ``layer`` picks a layer
            (``X`` when None).

        Returns
        -------
        (n_source, n_genes) float array: the expression each source cell is coupled to.
        """
        if hasattr(expression, "obs") and hasattr(expression, "X"):
            x = _adata_matrix(expression, layer)
        else:
            if layer is not None:
                raise ValueError("layer is only meaningful when expression is an AnnData")
            x = expression
        return self.barycentric_projection(x, direction="to_source")

    def predictability(self, image_rep, genes, *, gene_names=None, layer: str | None = None,
                       n_splits: int = 5, n_permutations: int = 50, fdr: float = 0.05,
                       seed=0, groups=None,
                       null: Literal["target_permutation", "row_permutation"] =
                       "target_permutation", pvalues: str = "pooled"):
        """Cross-validated R² of predicting imputed expression from image features.

        Parameters
        ----------
        image_rep : (n_source, d) array
            Image features of the source cells.
        genes : (n_target, n_genes) array / sparse matrix, or AnnData
            Target-side expression; it is imputed onto the source cells first. For an
            AnnData, gene names come from ``var_names`` and ``layer`` picks the layer.
        null : {"target_permutation", "row_permutation"}
            How the null distribution of R² is drawn.

            * ``"target_permutation"`` (default, honest): shuffle each draw's genes
              across the *target* (RNA) cells, impute them through the same coupling
              and score them the same way. Imputed expression is ``T̃ G``: every gene,
              even pure noise, becomes a smooth function of where a cell sits in image
              space, because the coupling itself was built from image geometry. This
              null keeps that smoothing and only breaks the tie between a gene's values
              and the RNA cells' positions, so a gene is called predictable only when
              its *pattern over RNA cells* is carried onto image cells in a way image
              features can predict better than a random pattern with the same values.
            * ``"row_permutation"``: shuffle the imputed values across image cells (the
              classic permutation test). Circular for GW imputation: on the synthetic
              world it called every gene predictable (1004 of 1004), noise included.
              Kept for comparison and for expression measured on the image cells.
        pvalues : {"pooled", "empirical"}
            See ``gene_predictability``.

        Returns
        -------
        pandas.DataFrame per gene: ``r2``, null ``null_mean``/``null_sd``, ``pvalue``,
        BH ``qvalue`` and ``predictable`` at ``fdr``
        (see ``cellsae.align.predictability.gene_predictability``); ``df.attrs["null"]``
        names the null used.
        """
        from .predictability import gene_predictability

        if null not in ("target_permutation", "row_permutation"):
            raise ValueError(f"null must be 'target_permutation' or 'row_permutation', got "
                             f"{null!r}")
        if hasattr(genes, "var_names") and gene_names is None:
            gene_names = list(genes.var_names)
        if hasattr(genes, "obs") and hasattr(genes, "X"):
            expr = _adata_matrix(genes, layer)
        else:
            if layer is not None:
                raise ValueError("layer is only meaningful when genes is an AnnData")
            expr = genes
        expr = expr.tocsr() if sparse.issparse(expr) else _as_array_2d(expr)
        if expr.shape[0] != self.n_target:
            raise ValueError(f"genes has {expr.shape[0]} cells (rows) but the coupling has "
                             f"{self.n_target} target cells")
        imputed = self.impute(expr)
        keep = np.isfinite(imputed).all(1)
        if not keep.all():
            logger.warning("dropping %d source cell(s) with no coupling mass", (~keep).sum())
        x = np.asarray(image_rep)
        if x.shape[0] != self.n_source:
            raise ValueError(f"image_rep has {x.shape[0]} rows, the coupling has "
                             f"{self.n_source} source cells")
        draw = None
        if null == "target_permutation":
            def draw(rng):
                return self.impute(expr[rng.permutation(self.n_target)])[keep]
        df = gene_predictability(x[keep], imputed[keep], gene_names=gene_names,
                                 n_splits=n_splits, n_permutations=n_permutations, fdr=fdr,
                                 seed=seed, null_imputations=draw, pvalues=pvalues,
                                 groups=None if groups is None else np.asarray(groups)[keep])
        df.attrs["null"] = null
        return df

    # -- labels ---------------------------------------------------------------------------

    def transfer_labels(self, labels, *, method: Literal["argmax", "barycentric"] = "barycentric",
                        direction: Literal["to_source", "to_target"] = "to_source"):
        """Transfer categorical labels across the coupling.

        Parameters
        ----------
        labels : (n_target,) array-like (``direction="to_source"``) or (n_source,)
        method : "argmax" takes the label of the single most-coupled cell and reports that
            cell's share of the row mass as confidence; "barycentric" sums the row mass per
            label and takes the label with the most mass (confidence = that share).

        Returns
        -------
        pandas.DataFrame with columns ``label`` and ``confidence`` (one row per receiving
        cell; "argmax" adds ``matched_index``) and, for "barycentric", one ``p_<label>``
        column per label. A cell that received no coupling mass gets label ``None`` and
        confidence 0 (``matched_index`` -1), with a logged warning.
        """
        import pandas as pd

        labels = np.asarray(labels)
        n_from = self.n_target if direction == "to_source" else self.n_source
        if labels.shape != (n_from,):
            raise ValueError(f"labels must have one entry per {'target' if direction == 'to_source' else 'source'} "
                             f"cell ({n_from}), got shape {labels.shape}")
        classes, codes = np.unique(labels.astype(str), return_inverse=True)
        if method == "barycentric":
            onehot = sparse.csr_matrix((np.ones(n_from), (np.arange(n_from), codes)),
                                       shape=(n_from, len(classes)))
            probs = self.barycentric_projection(onehot, direction=direction)
            empty = ~np.isfinite(probs).all(1)
            probs = np.nan_to_num(probs)
            label = classes[probs.argmax(1)].astype(object)
            if empty.any():
                logger.warning("%d cell(s) received no mass; their label is None", empty.sum())
                label[empty] = None
            df = pd.DataFrame({"label": label, "confidence": probs.max(1)})
            for k, c in enumerate(classes):
                df[f"p_{c}"] = probs[:, k]
            return df
        if method == "argmax":
            if direction == "to_source":
                idx, conf = self._argmax_rows()
            else:
                t = GWResult(coupling=_transpose(self.coupling), objective=self.objective,
                             converged=self.converged)
                idx, conf = t._argmax_rows()
            label = classes[codes[idx]].astype(object)
            empty = ~np.isfinite(conf)
            if empty.any():
                logger.warning("%d cell(s) received no mass; their label is None", empty.sum())
                label[empty] = None
                idx = np.where(empty, -1, idx)
                conf = np.where(empty, 0.0, conf)
            return pd.DataFrame({"label": label, "confidence": conf, "matched_index": idx})
        raise ValueError(f"method must be 'argmax' or 'barycentric', got {method!r}")

    def _argmax_rows(self) -> tuple[np.ndarray, np.ndarray]:
        idx = np.empty(self.n_source, dtype=np.int64)
        conf = np.empty(self.n_source)
        for rows, block in self._row_blocks():
            j = block.argmax(1)
            idx[rows] = j
            tot = block.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                conf[rows] = block[np.arange(len(rows)), j] / tot
        return idx, conf

    def label_transfer_accuracy(self, source_labels, target_labels, *,
                                method: Literal["argmax", "barycentric"] = "barycentric") -> float:
        """Fraction of source cells whose transferred target label equals their own label."""
        source_labels = np.asarray(source_labels).astype(str)
        if source_labels.shape != (self.n_source,):
            raise ValueError(f"source_labels must have {self.n_source} entries, got "
                             f"{source_labels.shape}")
        pred = self.transfer_labels(target_labels, method=method)["label"].to_numpy()
        return float((pred == source_labels).mean())

    # -- truth scores ---------------------------------------------------------------------

    def foscttm(self, truth=None, *, target_rep=None) -> float:
        """FOSCTTM against a known pairing (lower is better, 0.5 is chance).

        Parameters
        ----------
        truth : (n_source,) int array, optional
            ``truth[i]`` is the target cell that truly matches source cell ``i``
            (identity when omitted, which needs ``n_source == n_target``).
        target_rep : (n_target, d) array, optional
            When given, source cells are placed in this space by barycentric projection
            and FOSCTTM is computed there (SCOT's protocol). Without it, each source cell's
            coupling row ranks the target cells directly.
        """
        from ..metrics.alignment import foscttm as _foscttm
        from ..metrics.alignment import foscttm_from_scores

        if truth is None:
            if self.n_source != self.n_target:
                raise ValueError(f"without truth the pairing is the identity, which needs as "
                                 f"many source as target cells; the coupling is {self.shape}: "
                                 "pass truth (the matching target index of each source cell)")
            truth = np.arange(self.n_source)
        truth = np.asarray(truth)
        if truth.shape != (self.n_source,):
            raise ValueError(f"truth must have {self.n_source} entries, got {truth.shape}")
        if not np.issubdtype(truth.dtype, np.integer) or truth.min() < 0 or \
                truth.max() >= self.n_target:
            raise ValueError(f"truth must hold integer target indices in [0, {self.n_target})")
        if target_rep is not None:
            proj = self.barycentric_projection(target_rep)
            return _foscttm(proj, np.asarray(target_rep)[truth])
        scores = self.dense()
        return foscttm_from_scores(scores[:, truth], higher_is_closer=True)

    # -- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-serialisable summary (no coupling arrays)."""
        c = self.coupling
        kind = ("factorized" if isinstance(c, FactorizedCoupling)
                else "sparse" if sparse.issparse(c) else "dense")
        return {"format_version": FORMAT_VERSION, "objective": _jsonable(self.objective),
                "converged": bool(self.converged), "shape": list(self.shape),
                "coupling_kind": kind, "params": _jsonable(self.params),
                "history": _jsonable(self.history), "warnings": list(self.warnings),
                "selection": _jsonable(None if self.selection is None else
                                       {k: v for k, v in self.selection.items()
                                        if not k.startswith("_")})}

    def save(self, path) -> Path:
        """Write the result to one ``.npz`` file (arrays + embedded JSON; no pickle)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        c = self.coupling
        if isinstance(c, FactorizedCoupling):
            for name, part in (("left", c.left), ("right", c.right)):
                _put_matrix(arrays, f"coupling_{name}", part)
            arrays["coupling_core"] = np.asarray(c.core)
        else:
            _put_matrix(arrays, "coupling", c)
        for name in ("dual_source", "dual_target"):
            v = getattr(self, name)
            if v is not None:
                arrays[name] = np.asarray(v)
        meta = json.dumps(self.to_dict()).encode("utf-8")
        arrays["__meta_json__"] = np.frombuffer(meta, dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
        return path

    @classmethod
    def load(cls, path) -> GWResult:
        return load_result(path)


def _transpose(c):
    if isinstance(c, FactorizedCoupling):
        return FactorizedCoupling(left=c.right, core=c.core.T, right=c.left)
    return c.T.tocsr() if sparse.issparse(c) else np.asarray(c).T


def _put_matrix(arrays: dict, key: str, m) -> None:
    if sparse.issparse(m):
        m = m.tocsr()
        arrays[f"{key}__data"] = m.data
        arrays[f"{key}__indices"] = m.indices
        arrays[f"{key}__indptr"] = m.indptr
        arrays[f"{key}__shape"] = np.asarray(m.shape)
    else:
        arrays[key] = np.asarray(m)


def _get_matrix(z, key: str):
    if f"{key}__data" in z:
        return sparse.csr_matrix((z[f"{key}__data"], z[f"{key}__indices"], z[f"{key}__indptr"]),
                                 shape=tuple(z[f"{key}__shape"]))
    return z[key]


def load_result(path) -> GWResult:
    """Read a result written by ``GWResult.save``."""
    path = require_file(path, what="GW result file")
    with np.load(path, allow_pickle=False) as z:
        if "__meta_json__" not in z:
            raise ValueError(f"'{path}' is not a cellsae GW result (no metadata)")
        meta = json.loads(z["__meta_json__"].tobytes().decode("utf-8"))
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"'{path}' was written by a newer cellsae (format "
                             f"{meta['format_version']}); upgrade to read it")
        if meta["coupling_kind"] == "factorized":
            coupling = FactorizedCoupling(left=_get_matrix(z, "coupling_left"),
                                          core=z["coupling_core"],
                                          right=_get_matrix(z, "coupling_right"))
        else:
            coupling = _get_matrix(z, "coupling")
        duals = {k: z[k] for k in ("dual_source", "dual_target") if k in z}
    objective = meta["objective"]
    return GWResult(coupling=coupling, objective=float("nan") if objective is None else objective,
                    converged=meta["converged"], params=meta["params"],
                    history=meta["history"], warnings=meta["warnings"],
                    selection=meta["selection"], **duals)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        x = float(x)
        return x if np.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if x is None or isinstance(x, str | int | bool):
        return x
    return str(x)


_ = as_rng  # re-exported helpers used by predictability (below)
