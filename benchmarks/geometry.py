"""Geometric fidelity of CNN vs SAE representations on the synthetic neuron world.

Pipeline (everything measured in this process, on the same cells):

1. ``cellsae.datasets.neuron_world`` renders cells with known factors, progression ``t``
   and death.
2. A small ResNet (``cellsae.embed.train_encoder``, supervised on genotype, donors held
   out) sees the mito, lyso and nucleus channels; the death channel is withheld, as in the
   paper. Its pooled embedding is ``X_cnn``.
3. A BatchTopK SAE (``cellsae.sae.train``) on ``X_cnn`` gives sparse codes ``X_sae``; a
   second one, as in the paper, on every spatial token of the same CNN map
   (``cellsae.embed.extract(tokens_out=...)``), mean-pooled per cell
   (``cellsae.tl.token_codes``), gives ``X_sae_tokens`` (keys ``*_sae_tokens``).
4. Hand-crafted crop statistics of the same three channels (``cellsae.embed.crop_statistics``)
   are ``X_measure``.
5. ``cellsae.tl.compare_representations`` (k = 5, phenotype = the 0/1 death call), factor
   recovery (MCC), differential features SNCA vs healthy, and DPT on the SAE latents
   against the true progression ``t``.

``--scale`` instead times neighbours + Leiden + PAGA + DPT on 100k cells × 8,192 sparse
latents (synthetic codes, L0 ≈ 32, cells on a branching curve) and reports peak memory
(``scale_100k_seconds``, ``scale_100k_cpu_seconds``, ``scale_100k_peak_gb``).

Usage::

    python benchmarks/geometry.py --quick            # < 60 s on 2 cores
    python benchmarks/geometry.py --out geometry.json
    python benchmarks/geometry.py --scale --out scale.json

The last line printed is one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _run_world(args) -> dict:
    import numpy as np
    from scipy import sparse
    from scipy.stats import spearmanr

    import cellsae.sae as sae_mod
    from cellsae.datasets import neuron_world
    from cellsae.embed import TokenStore, crop_statistics, extract, train_encoder
    from cellsae.metrics import match_factors, phenotype_r2
    from cellsae.tl import (
        cluster_latents,
        compare_representations,
        count_significant,
        differential_features,
        latents_anndata,
        pca_latents,
        pseudotime,
        token_codes,
    )

    figures: dict = {}
    t_start = time.perf_counter()
    world = neuron_world(args.n_cells, seed=args.seed, crop_size=args.crop_size)
    cells = world.cells
    crops = np.asarray(cells.obsm["single_cell_images"][:, :3], dtype=np.float32)
    figures["n_cells"] = int(cells.n_obs)
    figures["seconds_world"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    result = train_encoder(
        crops, cells.obs["genotype"].astype(str).to_numpy(),
        donors=cells.obs["donor"].astype(str).to_numpy(),
        config={"epochs": args.epochs, "batch_size": 64, "patience": None},
        device=args.device, seed=args.seed)
    model = result.model.eval()
    # pooled embedding and the spatial tokens of the same (last) tap in one pass
    tmp = tempfile.TemporaryDirectory(prefix="cellsae_geometry_")
    tokens_path = os.path.join(tmp.name, "tokens.zarr")
    emb = extract(model, crops, tokens_out=tokens_path, token_dtype="float32",
                  device=args.device)
    x_cnn = emb.embeddings
    cells.obsm["X_cnn"] = x_cnn
    figures["cnn_val_acc"] = float(result.best_val_acc)
    figures["tokens_per_cell"] = int(emb.tokens_per_cell)
    figures["token_dim"] = int(emb.token_dim)
    figures["seconds_cnn"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # the engine's default batch (4096) and ~10 epochs mean a handful of steps on a few
    # thousand cells (FVU > 0.5); small batches and a fixed step count train it properly
    sae = sae_mod.train(x_cnn, arch="batchtopk", d_sae=args.d_sae, k=args.k, seed=args.seed,
                        device=args.device, progress=False, batch_size=256,
                        n_steps=args.sae_steps)
    codes = sparse.csr_matrix(sae.encode(x_cnn))
    cells.obsm["X_sae"] = codes
    recon = np.asarray(sae.decode(codes), dtype=np.float64)
    figures["sae_fvu"] = float(((x_cnn - recon) ** 2).sum() / ((x_cnn - x_cnn.mean(0)) ** 2).sum())
    figures["sae_l0"] = float(codes.getnnz(axis=1).mean())
    figures["sae_alive"] = int((codes.getnnz(axis=0) > 0).sum())
    figures["seconds_sae"] = time.perf_counter() - t0

    # the paper's SAE: on every spatial token of the CNN map, codes mean-pooled per cell
    t0 = time.perf_counter()
    store = TokenStore(tokens_path)
    sae_tok = sae_mod.train(store.tokens, arch="batchtopk", d_sae=args.d_sae, k=args.k,
                            seed=args.seed, device=args.device, progress=False, batch_size=256,
                            n_steps=args.sae_steps)
    tok_codes = token_codes(sae_tok, store, pool="mean", progress=False)
    cells.obsm["X_sae_tokens"] = tok_codes
    sample = np.asarray(store.tokens[:min(len(store), 20_000)], np.float32)
    tok_recon = np.asarray(sae_tok.decode(sae_tok.encode(sample, progress=False)), np.float64)
    figures["sae_tokens_fvu"] = float(((sample - tok_recon) ** 2).sum()
                                      / ((sample - sample.mean(0)) ** 2).sum())
    figures["sae_tokens_l0_per_cell"] = float(tok_codes.getnnz(axis=1).mean())
    figures["sae_tokens_alive"] = int((tok_codes.getnnz(axis=0) > 0).sum())
    figures["seconds_sae_tokens"] = time.perf_counter() - t0

    meas, _ = crop_statistics(crops)
    meas = np.asarray(meas, dtype=np.float64)
    meas = meas[:, meas.std(0) > 0]
    cells.obsm["X_measure"] = (meas - meas.mean(0)) / meas.std(0)

    # the comparison table
    t0 = time.perf_counter()
    table = compare_representations(
        cells, ["X_cnn", "X_sae", "X_sae_tokens", "X_measure"], "dead", k=5, groups_key="donor",
        factors_key="factors", n_bootstrap=args.n_bootstrap, n_permutations=args.n_permutations,
        n_components=250, max_cells_trust=1500, seed=args.seed)
    figures["seconds_compare"] = time.perf_counter() - t0
    short = {"X_cnn": "cnn", "X_sae": "sae", "X_sae_tokens": "sae_tokens",
             "X_measure": "measure"}
    for rep, name in short.items():
        row = table.loc[rep]
        figures[f"knn_sd_ratio_{name}"] = float(row["knn_sd_ratio"])
        figures[f"knn_sd_ratio_{name}_ci_low"] = float(row["knn_sd_ratio_ci_low"])
        figures[f"knn_sd_ratio_{name}_ci_high"] = float(row["knn_sd_ratio_ci_high"])
        figures[f"morans_i_{name}"] = float(row["morans_i"])
        figures[f"morans_i_{name}_ci_low"] = float(row["morans_i_ci_low"])
        figures[f"morans_i_{name}_ci_high"] = float(row["morans_i_ci_high"])
        figures[f"morans_p_{name}"] = float(row["morans_p"])
        figures[f"death_r2_{name}"] = float(row["phenotype_r2"])
        figures[f"death_r2_{name}_ci_low"] = float(row["phenotype_r2_ci_low"])
        figures[f"death_r2_{name}_ci_high"] = float(row["phenotype_r2_ci_high"])
        figures[f"effective_rank_{name}"] = float(row["effective_rank"])
        figures[f"trustworthiness_{name}"] = float(row["trustworthiness"])
        figures[f"continuity_{name}"] = float(row["continuity"])
        figures[f"factor_mcc_{name}"] = float(row["factor_mcc"])
        figures[f"factors_recovered_{name}"] = int(row["n_factors_recovered"])
        figures[f"n_dims_{name}"] = int(row["n_dims"])
    dead = cells.obs["dead"].to_numpy().astype(float)
    donors = cells.obs["donor"].to_numpy()
    reps = {"cnn": x_cnn, "sae": codes, "sae_tokens": tok_codes}
    for name, x in reps.items():
        figures[f"death_r2_{name}_unscaled"] = phenotype_r2(
            x, dead, groups=donors, standardize=False, seed=args.seed).r2
    # does a representation add death information beyond the pooled CNN embedding?
    # (R² of CNN + SAE codes together; the SAE is a function of the CNN's features, so a
    # gain can only come from what mean pooling of the CNN map averaged away)
    for name in ("sae", "sae_tokens"):
        both = np.hstack([x_cnn, reps[name].toarray()])
        figures[f"death_r2_cnn_plus_{name}"] = phenotype_r2(
            both, dead, groups=donors, n_components=250, seed=args.seed).r2
    # factor recovery with a latent per factor (Pearson as a second view)
    factors = np.asarray(cells.obsm["factors"])
    for name, x in reps.items():
        figures[f"factor_mcc_pearson_{name}"] = match_factors(x, factors, method="pearson").mcc
        # is each factor *present* (linearly decodable), whatever the axes? MCC asks for one
        # latent per factor, which a sparse code that splits a continuous factor over
        # several one-sided latents cannot give even when it holds the factor
        figures[f"factor_r2_{name}"] = _factor_r2(x, factors, seed=args.seed)

    # differential features, SNCA vs healthy, cells as replicates (as the paper) and donors
    lats = {name: latents_anndata(cells, use_rep=f"X_{name}") for name in ("sae", "sae_tokens")}
    for method in ("wilcoxon", "pseudobulk"):
        kw = {"donor_key": "donor"} if method == "pseudobulk" else {}
        suffix = "" if method == "wilcoxon" else "_pseudobulk"
        tables = {"cnn": differential_features(cells, "genotype", groups=["SNCA"],
                                               reference="healthy", method=method,
                                               use_rep="X_cnn", **kw)}
        for name, lat in lats.items():
            tables[name] = differential_features(lat, "genotype", groups=["SNCA"],
                                                 reference="healthy", method=method, **kw)
        for name, tab in tables.items():
            # headline: BH-adjusted p < 0.05 alone; "_effect": also a minimum effect size
            # (rank-biserial 0.1 / donor-level Cohen's d 0.5), which rare latents rarely reach
            n_feat = x_cnn.shape[1] if name == "cnn" else lats[name].n_vars
            figures[f"de_features_{name}{suffix}"] = int(count_significant(tab, min_effect=0.0))
            figures[f"de_features_{name}{suffix}_effect"] = int(count_significant(tab))
            figures[f"de_fraction_{name}{suffix}"] = figures[f"de_features_{name}{suffix}"] / n_feat

    # DPT against the true progression: on the SAE latents (log1p, z-scored PCA, the
    # documented default), on the token SAE's latents, and on the CNN embedding itself
    t0 = time.perf_counter()
    true_t = cells.obs["t"].to_numpy()
    for name, lat in lats.items():
        pca_latents(lat, n_comps=min(30, lat.n_vars - 1), seed=args.seed)
        cluster_latents(lat, n_neighbors=15, resolution=0.45, umap=False, method="gauss",
                        seed=args.seed)
        pseudotime(lat, root_group={"genotype": "healthy"}, live_key="dead")
        pt = lat.obs["dpt_pseudotime"].to_numpy()
        key = "dpt_t_spearman" if name == "sae" else f"dpt_t_spearman_{name}"
        figures[key] = float(spearmanr(pt, true_t, nan_policy="omit")[0])
        figures[f"dpt_dead_spearman_{name}"] = float(spearmanr(pt, dead, nan_policy="omit")[0])
        figures[f"n_leiden_{name}"] = int(lat.obs["leiden"].nunique())
        paga = _paga_vs_truth(lat, true_t, cells.obs["branch"].to_numpy())
        figures.update({k if name == "sae" else k.replace("paga_", f"paga_{name}_"): v
                        for k, v in paga.items()})
    lat = lats["sae"]
    unscaled = lat.copy()
    pca_latents(unscaled, n_comps=min(30, lat.n_vars - 1), standardize=False, seed=args.seed)
    cluster_latents(unscaled, n_neighbors=15, resolution=0.45, umap=False, method="gauss",
                    seed=args.seed)
    pseudotime(unscaled, root_group={"genotype": "healthy"}, live_key="dead")
    figures["dpt_t_spearman_unscaled"] = float(
        spearmanr(unscaled.obs["dpt_pseudotime"], true_t, nan_policy="omit")[0])
    cnn = cells.copy()
    for key in ("X_sae", "X_sae_tokens"):
        del cnn.obsm[key]
    cluster_latents(cnn, use_rep="X_cnn", n_neighbors=15, resolution=0.45, umap=False,
                    method="gauss", seed=args.seed)
    pseudotime(cnn, root_group={"genotype": "healthy"}, live_key="dead")
    figures["dpt_t_spearman_cnn"] = float(spearmanr(cnn.obs["dpt_pseudotime"], true_t,
                                                    nan_policy="omit")[0])
    figures["seconds_dpt"] = time.perf_counter() - t0
    tmp.cleanup()
    figures["seconds_total"] = time.perf_counter() - t_start
    figures["peak_rss_gib"] = _peak_rss_gib()
    return figures


def _factor_r2(x, factors, seed: int = 0) -> float:
    """Mean over factors of the 5-fold cross-validated R² of a ridge on the representation."""
    import numpy as np
    from scipy import sparse
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    x = x[:, x.std(0) > 0]
    y = np.asarray(factors, dtype=np.float64)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    pred = cross_val_predict(model, x, y, cv=KFold(5, shuffle=True, random_state=seed))
    r2 = 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    return float(np.mean(r2))


def _paga_vs_truth(adata, t, branch, threshold: float = 0.1) -> dict:
    """PAGA topology against the true trajectory.

    ``paga_edge_t_gap_ratio``: mean |Δ mean t| between clusters joined by a PAGA edge
    (connectivity ≥ threshold) over the same mean across all cluster pairs; < 1 means the
    graph links clusters that are close in true progression. ``paga_cross_branch_edges``:
    share of edges joining a cluster of branch 1 to one of branch 2 (by majority), which a
    faithful topology avoids.
    """
    import numpy as np
    import pandas as pd

    labels = adata.obs["leiden"].astype(str).to_numpy()
    order = list(adata.obs["leiden"].cat.categories)
    mean_t = pd.Series(t).groupby(labels).mean().reindex(order).to_numpy()
    major = pd.Series(branch).groupby(labels).agg(lambda b: np.bincount(b).argmax())
    major = major.reindex(order).to_numpy()
    conn = adata.uns["paga"]["connectivities"].toarray()
    iu = np.triu_indices(len(order), 1)
    gaps = np.abs(mean_t[:, None] - mean_t[None, :])[iu]
    edges = conn[iu] >= threshold
    out = {"paga_n_edges": int(edges.sum())}
    if edges.any() and gaps.mean() > 0:
        out["paga_edge_t_gap_ratio"] = float(gaps[edges].mean() / gaps.mean())
        cross = ((major[iu[0]] == 1) & (major[iu[1]] == 2)) | ((major[iu[0]] == 2)
                                                              & (major[iu[1]] == 1))
        out["paga_cross_branch_edges"] = float(cross[edges].mean())
    return out


def _synthetic_codes(n_cells: int, n_latents: int, l0: int, seed: int):
    """Sparse codes with structure: cells on a branching progression, latents tile it."""
    import numpy as np
    from scipy import sparse

    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n_cells)
    branch = rng.integers(0, 2, n_cells)
    # one stem that splits at t = 0.4 into two branches (connected: no gap at the split)
    pos = np.c_[t, np.where(branch == 1, 1.0, -1.0) * np.clip(t - 0.4, 0, None)]
    centres = rng.uniform([0, -0.6], [1, 0.6], size=(n_latents, 2))
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=l0).fit(centres)
    dist, idx = nn.kneighbors(pos)
    vals = np.exp(-dist**2 / 0.01) * rng.uniform(0.5, 1.5, dist.shape)
    rows = np.repeat(np.arange(n_cells), l0)
    codes = sparse.csr_matrix((vals.ravel().astype(np.float32), (rows, idx.ravel())),
                              shape=(n_cells, n_latents))
    obs_t = t
    dead = (rng.uniform(size=n_cells) < 0.6 * t).astype(int)
    healthy = rng.uniform(size=n_cells) < 0.5 * (t < 0.3)  # healthy cells sit on the stem
    return codes, obs_t, dead, healthy


class _Clock:
    """Wall and CPU seconds of a block (CPU counts every thread of this process)."""

    def __init__(self, figures: dict, name: str):
        self.figures, self.name = figures, name

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.figures[f"seconds_{self.name}"] = time.perf_counter() - self.wall
        self.figures[f"cpu_seconds_{self.name}"] = time.process_time() - self.cpu
        return False


def _run_scale(args) -> dict:
    import numpy as np
    import pandas as pd
    import scanpy as sc
    from scipy.stats import spearmanr

    from cellsae.tl import latents_anndata, neighbors, pca_latents, pseudotime

    figures: dict = {"n_cells": args.scale_cells, "n_latents": args.scale_latents,
                     "knn": args.knn, "kernel": args.kernel, "threads": args.threads}
    codes, t, dead, healthy = _synthetic_codes(args.scale_cells, args.scale_latents, 32,
                                               args.seed)
    obs = pd.DataFrame({"dead": dead, "genotype": np.where(healthy, "healthy", "mutant")})
    figures["rss_after_codes_gib"] = _peak_rss_gib()
    with _Clock(figures, "total"):
        with _Clock(figures, "anndata"):
            lat = latents_anndata(codes, obs=obs)
        with _Clock(figures, "pca"):
            pca_latents(lat, n_comps=50, seed=args.seed)
        with _Clock(figures, "neighbors"):
            neighbors(lat, n_neighbors=15, method=args.kernel, knn=args.knn, seed=args.seed)
        with _Clock(figures, "leiden"):
            sc.tl.leiden(lat, resolution=1.0, flavor="igraph", n_iterations=2, directed=False,
                         random_state=args.seed)
        with _Clock(figures, "paga"):
            sc.tl.paga(lat, groups="leiden")
        with _Clock(figures, "dpt"):
            # branches longer than the stem: diffusion component 1 runs tip to tip, so the
            # root is the healthy live cell farthest from the others (cellsae.tl.dpt_root)
            pseudotime(lat, root_group={"genotype": "healthy"}, live_key="dead",
                       root_rule="farthest")
    figures["n_latents_kept"] = int(lat.n_vars)
    figures["n_leiden"] = int(lat.obs["leiden"].nunique())
    figures["dpt_t_spearman_scale"] = float(spearmanr(lat.obs["dpt_pseudotime"], t,
                                                      nan_policy="omit")[0])
    figures["peak_rss_gib"] = _peak_rss_gib()
    if args.scale_cells == 100_000:  # the target: < 5 minutes on 2 cores
        figures["scale_100k_seconds"] = figures["seconds_total"]
        figures["scale_100k_cpu_seconds"] = figures["cpu_seconds_total"]
        figures["scale_100k_peak_gb"] = figures["peak_rss_gib"] * 1.073741824
    figures["load_average_1min"] = os.getloadavg()[0]
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small world, < 60 s on 2 cores")
    parser.add_argument("--scale", action="store_true",
                        help="time neighbours+Leiden+PAGA+DPT on 100k × 8192 sparse latents")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch/BLAS threads")
    parser.add_argument("--n-cells", type=int, default=None)
    parser.add_argument("--scale-cells", type=int, default=100_000)
    parser.add_argument("--scale-latents", type=int, default=8192)
    parser.add_argument("--knn", default="auto", choices=("auto", "exact", "pynndescent"),
                        help="kNN backend of the scale run (cellsae.tl.neighbors)")
    parser.add_argument("--kernel", default="umap", choices=("umap", "gauss"),
                        help="connectivity kernel of the scale run")
    args = parser.parse_args(argv)
    # before numpy loads: BLAS spin-waiting with more threads than free cores is very slow
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    quick = args.quick
    args.n_cells = args.n_cells or (600 if quick else 3000)
    args.crop_size = 32
    args.epochs = 2 if quick else 6
    args.d_sae = 256 if quick else 1024
    args.k = 8 if quick else 16
    args.sae_steps = 300 if quick else 3000
    args.n_bootstrap = 200 if quick else 1000
    args.n_permutations = 49 if quick else 199

    import torch

    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    figures = {"mode": "scale" if args.scale else ("quick" if quick else "full")}
    figures.update(_run_scale(args) if args.scale else _run_world(args))
    line = json.dumps(figures)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CELLSAE_NO_PROGRESS", "1")
    sys.exit(main())
