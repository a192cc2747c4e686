"""Latents as expression: AnnData construction, PCA, graph, DPT root, PHATE error."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.stats import spearmanr

from cellsae.tl.latents import (
    cluster_latents,
    dpt_distances,
    dpt_root,
    get_rep,
    latents_anndata,
    obs_values,
    pca_latents,
    phate,
    pseudotime,
)


def trajectory_codes(rng, n=400, n_latents=40):
    """Latents that tile a 1-D progression t; healthy cells only in the first half."""
    t = rng.uniform(0, 1, n)
    healthy = rng.uniform(size=n) < 0.4
    t[healthy] *= 0.5
    dead = (rng.uniform(size=n) < t * 0.8).astype(int)
    centres = np.linspace(0, 1, n_latents)
    codes = np.maximum(0, 1 - np.abs(t[:, None] - centres) * 8 + 0.1 * rng.normal(size=(n, n_latents)))
    obs = pd.DataFrame({"genotype": np.where(healthy, "healthy", "SNCA"), "dead": dead, "t": t})
    return sparse.csr_matrix(codes), obs


def test_latents_anndata_filters_dead_and_ubiquitous(rng):
    codes, obs = trajectory_codes(rng)
    extra = np.c_[np.zeros((len(obs), 3)), np.ones((len(obs), 2)), np.r_[1.0, np.zeros(len(obs) - 1)]]
    lat = latents_anndata(sparse.hstack([codes, sparse.csr_matrix(extra)]), obs=obs)
    assert sparse.issparse(lat.X) and lat.n_vars == 40
    assert lat.uns["latents"]["n_dead"] == 4 and lat.uns["latents"]["n_ubiquitous"] == 2
    np.testing.assert_allclose(lat.X.toarray(), np.log1p(lat.layers["activations"].toarray()),
                               rtol=1e-6)
    assert (lat.var["latent_index"].to_numpy() == np.arange(40)).all()
    assert {"frac_active", "mean_when_active", "max_activation"} <= set(lat.var.columns)
    lat_all = latents_anndata(sparse.hstack([codes, sparse.csr_matrix(extra)]),
                              filter_latents=False, transform="none")
    assert lat_all.n_vars == 46


def test_latents_anndata_from_anndata_obsm(rng):
    import anndata as ad

    codes, obs = trajectory_codes(rng, n=50)
    src = ad.AnnData(obs=obs.set_axis([f"c{i}" for i in range(50)]))
    src.obsm["X_sae"] = codes
    lat = latents_anndata(src, use_rep="X_sae")
    assert list(lat.obs_names[:2]) == ["c0", "c1"] and "genotype" in lat.obs
    with pytest.raises(KeyError, match="available: X, X_sae"):
        latents_anndata(src, use_rep="X_missing")


def test_all_zero_and_negative_codes_error():
    with pytest.raises(ValueError, match="all 5 latents are zero"):
        latents_anndata(np.zeros((10, 5)))
    with pytest.raises(ValueError, match="non-negative"):
        latents_anndata(-np.ones((10, 5)))
    with pytest.raises(ValueError, match="dead or ubiquitous"):
        latents_anndata(np.r_[np.ones((1, 3)), np.zeros((9, 3))])


def test_pca_matches_dense_zscore_pca(rng):
    codes, obs = trajectory_codes(rng, n=200, n_latents=20)
    lat = latents_anndata(codes, obs=obs)
    pca_latents(lat, n_comps=5)
    dense = lat.X.toarray()
    z = (dense - dense.mean(0)) / dense.std(0)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    ref = u[:, :5] * s[:5]
    for j in range(5):
        assert abs(np.corrcoef(ref[:, j], lat.obsm["X_pca"][:, j])[0, 1]) > 0.999
    assert lat.uns["pca"]["params"]["standardize"] is True


def test_graph_clusters_and_pseudotime_follow_the_trajectory(rng):
    codes, obs = trajectory_codes(rng)
    lat = latents_anndata(codes, obs=obs)
    pca_latents(lat, n_comps=15)
    cluster_latents(lat, n_neighbors=15, umap=False, resolution=0.5, method="gauss")
    assert lat.obs["leiden"].nunique() >= 2 and "paga" in lat.uns
    pseudotime(lat, root_group={"genotype": "healthy"}, live_key="dead")
    root = lat.uns["dpt_root"]["index"]
    assert lat.obs["genotype"].iloc[root] == "healthy" and lat.obs["dead"].iloc[root] == 0
    assert lat.obs["t"].iloc[root] < 0.05  # an extreme healthy, live cell
    rho = spearmanr(lat.obs["dpt_pseudotime"], lat.obs["t"])[0]
    assert rho > 0.9
    pseudotime(lat, root=int(np.argmax(obs["t"])))
    assert spearmanr(lat.obs["dpt_pseudotime"], lat.obs["t"])[0] < -0.9


def test_dpt_root_user_choices_and_errors(rng):
    codes, obs = trajectory_codes(rng, n=100)
    lat = latents_anndata(codes, obs=obs)
    assert dpt_root(lat, root=7) == 7
    assert dpt_root(lat, root="3") == 3
    with pytest.raises(KeyError, match="X_diffmap"):
        dpt_root(lat, root_group={"genotype": "healthy"})
    lat.obsm["X_diffmap"] = np.c_[np.ones(100), obs["t"].to_numpy()]
    with pytest.raises(ValueError, match="levels present"):
        dpt_root(lat, root_group={"genotype": "control"})
    assert dpt_root(lat, root_group={"genotype": "healthy"}) == int(
        np.flatnonzero(obs.genotype == "healthy")[np.argmin(obs.t[obs.genotype == "healthy"])])


def test_dpt_distances_root_is_zero_and_scaled(rng):
    basis = rng.normal(size=(30, 5))
    d = dpt_distances(basis, np.r_[1.0, 0.999, 0.99, 0.9, 0.5], root=4, n_dcs=5)
    assert d[4] == 0 and d.max() == pytest.approx(1.0)


def test_pseudotime_needs_graph(rng):
    codes, obs = trajectory_codes(rng, n=50)
    with pytest.raises(KeyError, match="neighbour graph"):
        pseudotime(latents_anndata(codes, obs=obs))


def test_accessors_list_what_exists(rng):
    codes, obs = trajectory_codes(rng, n=30)
    lat = latents_anndata(codes, obs=obs)
    with pytest.raises(KeyError, match="available: genotype, dead, t"):
        obs_values(lat, "death_rate")
    with pytest.raises(TypeError, match="numeric"):
        obs_values(lat, "genotype")
    assert get_rep(lat, "layers/activations").shape == lat.shape


@pytest.mark.skipif(importlib.util.find_spec("phate") is not None, reason="phate installed")
def test_phate_missing_gives_install_hint(rng):
    codes, obs = trajectory_codes(rng, n=30)
    with pytest.raises(ImportError, match="pip install"):
        phate(latents_anndata(codes, obs=obs))


def test_pseudotime_on_disconnected_graph_uses_the_largest_component(rng):
    codes, obs = trajectory_codes(rng, n=300)
    far = np.zeros((40, codes.shape[1] + 5))
    far[:, -5:] = rng.uniform(1, 2, size=(40, 5))  # a separate island of cells
    all_codes = sparse.vstack([sparse.hstack([codes, sparse.csr_matrix((300, 5))]),
                               sparse.csr_matrix(far)])
    all_obs = pd.concat([obs, pd.DataFrame({"genotype": "healthy", "dead": 0, "t": np.nan},
                                           index=range(40))], ignore_index=True)
    lat = latents_anndata(all_codes, obs=all_obs)
    pca_latents(lat, n_comps=10, standardize=False)
    cluster_latents(lat, n_neighbors=10, umap=False, paga=False, method="gauss")
    pseudotime(lat, root_group={"genotype": "healthy"}, live_key="dead")
    pt = lat.obs["dpt_pseudotime"].to_numpy()
    assert np.isnan(pt[300:]).all() and np.isfinite(pt[:300]).all()
    assert lat.uns["dpt_root"]["n_components_graph"] >= 2
    assert spearmanr(pt[:300], obs["t"])[0] > 0.9


def test_present_everywhere_but_varying_latent_is_kept(rng):
    codes, obs = trajectory_codes(rng, n=200)
    varying = rng.uniform(0.1, 3.0, size=(200, 1))  # like a mean-pooled token code
    constant = np.full((200, 1), 2.0) + rng.normal(0, 0.01, size=(200, 1))
    lat = latents_anndata(sparse.hstack([codes, sparse.csr_matrix(np.c_[varying, constant])]),
                          obs=obs)
    assert lat.uns["latents"]["n_ubiquitous"] == 1
    assert "latent_40" in lat.var_names and "latent_41" not in lat.var_names
    assert lat.var.loc["latent_40", "cv"] > 0.2


def test_neighbors_exact_backend_matches_scanpy_exact_knn(rng):
    from cellsae.tl.latents import neighbors

    codes, obs = trajectory_codes(rng, n=300)
    lat = latents_anndata(codes, obs=obs)
    pca_latents(lat, n_comps=10)
    ref = neighbors(lat, n_neighbors=10, method="gauss", copy=True)  # scanpy's own kNN
    neighbors(lat, n_neighbors=10, method="gauss", knn="exact")
    assert lat.uns["neighbors"]["params"]["knn"] == "exact"
    assert ref.uns["neighbors"]["params"]["knn"] == "scanpy"
    a, b = lat.obsp["distances"], ref.obsp["distances"]
    assert (a != 0).sum() == (b != 0).sum()
    np.testing.assert_allclose(np.sort(a.data[a.data > 0]), np.sort(b.data[b.data > 0]),
                               rtol=1e-4)
    np.testing.assert_allclose(lat.obsp["connectivities"].toarray(),
                               ref.obsp["connectivities"].toarray(), atol=1e-5)
    with pytest.raises(ValueError, match="knn must be one of"):
        neighbors(lat, knn="annoy")
    with pytest.raises(KeyError, match="X_missing"):
        neighbors(lat, use_rep="X_missing")


@pytest.mark.skipif(importlib.util.find_spec("phate") is None, reason="needs the phate extra")
def test_phate_embeds_the_trajectory(rng):
    codes, obs = trajectory_codes(rng, n=200)
    lat = latents_anndata(codes, obs=obs)
    pca_latents(lat, n_comps=10)
    phate(lat, knn=5, decay=40, t=10, n_components=2)
    emb = lat.obsm["X_phate"]
    assert emb.shape == (200, 2) and np.isfinite(emb).all()
    from sklearn.neighbors import NearestNeighbors

    t = obs["t"].to_numpy()
    _, nb = NearestNeighbors(n_neighbors=6).fit(emb).kneighbors(emb)
    near = np.abs(t[nb[:, 1:]] - t[:, None]).mean()  # neighbours in PHATE share t
    assert near < 0.25 * np.abs(t[:, None] - t[None, :]).mean()
    assert lat.uns["phate"]["params"]["knn"] == 5


def test_shift_invert_and_lanczos_diffusion_maps_agree(rng):
    codes, obs = trajectory_codes(rng, n=600)
    lat = latents_anndata(codes, obs=obs)
    pca_latents(lat, n_comps=10)
    cluster_latents(lat, n_neighbors=15, umap=False, paga=False, method="gauss")
    runs = {}
    for solver in ("lanczos", "shift-invert"):
        pseudotime(lat, root_group={"genotype": "healthy"}, live_key="dead",
                   eigen_solver=solver)
        runs[solver] = (lat.uns["diffmap_evals"].copy(), lat.obs["dpt_pseudotime"].to_numpy())
        assert lat.uns["diffmap_params"]["solver"] == solver
    np.testing.assert_allclose(runs["lanczos"][0], runs["shift-invert"][0], atol=1e-5)
    np.testing.assert_allclose(runs["lanczos"][1], runs["shift-invert"][1], atol=1e-3)
    with pytest.raises(ValueError, match="eigen_solver"):
        pseudotime(lat, eigen_solver="lobpcg")


def test_farthest_root_finds_the_stem_end_of_a_long_branching_trajectory(rng):
    n = 800
    t = rng.uniform(0, 1, n)
    branch = rng.integers(0, 2, n)
    pos = np.c_[t, np.where(branch == 1, 1.0, -1.0) * np.clip(t - 0.2, 0, None) * 1.5]
    centres = np.c_[rng.uniform(0, 1, 120), rng.uniform(-1.2, 1.2, 120)]
    dist = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)
    codes = np.exp(-dist / 0.01) * (dist < 0.04)
    healthy = (t < 0.2) & (rng.uniform(size=n) < 0.6)
    obs = pd.DataFrame({"genotype": np.where(healthy, "healthy", "SNCA"), "dead": 0, "t": t})
    lat = latents_anndata(codes, obs=obs)
    pca_latents(lat, n_comps=20)
    cluster_latents(lat, n_neighbors=15, umap=False, paga=False, method="gauss")
    pseudotime(lat, root_group={"genotype": "healthy"}, root_rule="farthest")
    assert t[lat.uns["dpt_root"]["index"]] < 0.05
    assert spearmanr(lat.obs["dpt_pseudotime"], t, nan_policy="omit")[0] > 0.9
    with pytest.raises(ValueError, match="root_rule"):
        pseudotime(lat, root_rule="median")
