"""Loaders for public paired multi-modal data sets (both modalities measured in the same
cell), used to score cross-modal alignment against a known pairing.

The files are not shipped with cellsae; each loader takes the folder that holds them (the
data set's own folder, or a parent such as ``shared/data`` that contains it) and raises
``FileNotFoundError`` naming the missing file when they are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PairedDataset", "load_gouwens2020", "load_scgem", "load_snareseq"]


@dataclass
class PairedDataset:
    """Two modalities of the same cells: row ``i`` of ``source`` and ``target`` is one cell.

    Attributes
    ----------
    source : (n_cells, n_source_features) float array
    target : (n_cells, n_target_features) float array
    source_labels, target_labels : (n_cells,) str arrays (cell types)
    name, source_name, target_name : str
    extra : dict of further per-cell annotations (e.g. finer labels)
    """

    name: str
    source: np.ndarray
    target: np.ndarray
    source_labels: np.ndarray
    target_labels: np.ndarray
    source_name: str
    target_name: str
    extra: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return self.source.shape[0]

    @property
    def truth(self) -> np.ndarray:
        """The true pairing source → target (identity)."""
        return np.arange(self.n_cells)


def _folder(path, name: str, marker: str) -> Path:
    path = Path(path)
    for cand in (path, path / name):
        if (cand / marker).exists():
            return cand
    raise FileNotFoundError(
        f"{name} data not found: expected '{marker}' in '{path}' or '{path / name}'. "
        "These files are not shipped with cellsae; see shared/data/README.md for their origin."
    )


def load_snareseq(path) -> PairedDataset:
    """SNARE-seq cell-line mixture (Chen et al. 2019), as distributed with SCOT.

    ``source`` is chromatin accessibility (1047 × 19, pre-reduced), ``target`` is RNA
    (1047 × 10); labels are the cell lines (BJ, H1, K562, GM12878).
    """
    folder = _folder(path, "snareseq", "SNAREseq_atac_feat.npy")
    atac = np.load(folder / "SNAREseq_atac_feat.npy", allow_pickle=False)
    rna_file = folder / "SNAREseq_rna_feat.npy"
    if not rna_file.exists():
        raise FileNotFoundError(f"SNARE-seq RNA features not found: '{rna_file}'")
    rna = np.load(rna_file, allow_pickle=False)
    atac_t = np.loadtxt(folder / "SNAREseq_atac_types.txt").astype(int)
    rna_t = np.loadtxt(folder / "SNAREseq_rna_types.txt").astype(int)
    names = {}
    meta = folder / "SNAREseq_metadata.txt"
    if meta.exists():
        import pandas as pd

        m = pd.read_csv(meta, sep="\t")
        names = dict(zip(m["LabelID"].astype(int), m["CellType"].astype(str), strict=False))
    lab = np.vectorize(lambda t: names.get(t, str(t)))
    return PairedDataset("snareseq", atac.astype(np.float64), rna.astype(np.float64),
                         lab(atac_t).astype(str), lab(rna_t).astype(str), "atac", "rna")


def load_scgem(path) -> PairedDataset:
    """scGEM reprogramming time course (Cheow et al. 2016), as distributed with SCOT.

    ``source`` is DNA methylation (177 × 27), ``target`` gene expression (177 × 34);
    labels are the stage (BJ, d8, d16T+, d24T+, iPS).
    """
    folder = _folder(path, "scgem", "scGEM_methylation.csv")
    meth = np.loadtxt(folder / "scGEM_methylation.csv", delimiter=",")
    expr_file = folder / "scGEM_expression.csv"
    if not expr_file.exists():
        raise FileNotFoundError(f"scGEM expression not found: '{expr_file}'")
    expr = np.loadtxt(expr_file, delimiter=",")
    stages = np.array(["BJ", "d8", "d16T+", "d24T+", "iPS"])
    t_m = np.loadtxt(folder / "scGEM_typeMethylation.txt").astype(int)
    t_e = np.loadtxt(folder / "scGEM_typeExpression.txt").astype(int)
    return PairedDataset("scgem", meth, expr, stages[t_m - 1], stages[t_e - 1],
                         "methylation", "expression")


def load_gouwens2020(path, *, modality: str = "morph") -> PairedDataset:
    """Gouwens et al. 2020 Patch-seq inhibitory neurons (as distributed with UnitedNet).

    Parameters
    ----------
    path : folder holding ``adata_{RNA,Morph,Ephys}_TEM.h5ad``
    modality : "morph" or "ephys" — the source modality; the target is the transcriptome
        (log-normalised, 448 × 1252).

    Labels are the 5 subclasses (first token of ``cell_type_T``: Lamp5, Pvalb, Serpinf1,
    Sst, Vip); ``extra`` holds the 27 MET-types (``cell_type_TEM``) and ``cell_type_T``.
    """
    import anndata as ad

    files = {"morph": "adata_Morph_TEM.h5ad", "ephys": "adata_Ephys_TEM.h5ad"}
    if modality not in files:
        raise ValueError(f"modality must be 'morph' or 'ephys', got {modality!r}")
    folder = _folder(path, "gouwens2020_patchseq", "adata_RNA_TEM.h5ad")
    src_file = folder / files[modality]
    if not src_file.exists():
        raise FileNotFoundError(f"Gouwens 2020 {modality} file not found: '{src_file}'")
    rna = ad.read_h5ad(folder / "adata_RNA_TEM.h5ad")
    src = ad.read_h5ad(src_file)
    if not (np.asarray(src.obs_names) == np.asarray(rna.obs_names)).all():
        raise ValueError(f"cells in '{src_file.name}' and the RNA file are not in the same order")

    def dense(x):
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)

    sub = rna.obs["cell_type_T"].astype(str).str.split(" ").str[0].to_numpy()
    sub_src = src.obs["cell_type_T"].astype(str).str.split(" ").str[0].to_numpy()
    return PairedDataset(f"gouwens2020_{modality}", dense(src.X), dense(rna.X), sub_src, sub,
                         modality, "rna",
                         extra={"cell_type_TEM": rna.obs["cell_type_TEM"].astype(str).to_numpy(),
                                "cell_type_T": rna.obs["cell_type_T"].astype(str).to_numpy()})
