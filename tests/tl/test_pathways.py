import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

import cellsae.tl as tl
from cellsae.pathways import Hierarchy
from cellsae.tl.pathways import pathway_activity


def _counts_anndata(rng, n_cells=300, n_blocks=4, genes_per_block=8, n_background=6):
    """Raw counts with ``n_blocks`` co-expressed gene blocks, plus independent genes."""
    programs = rng.normal(size=(n_cells, n_blocks))
    block = np.repeat(np.arange(n_blocks), genes_per_block)
    log_mu = np.log(4.0) + 0.8 * programs[:, block]
    log_mu = np.concatenate([log_mu, np.full((n_cells, n_background), np.log(4.0))], axis=1)
    x = rng.poisson(np.exp(log_mu)).astype(np.float32)
    names = [f"GENE{i}" for i in range(x.shape[1])]
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=names))
    truth = np.concatenate([block, np.full(n_background, -1)])
    return adata, programs, truth


def test_gene_modules_on_counts_writes_var_and_uns(rng):
    adata, _, truth = _counts_anndata(rng)
    module_genes = list(adata.var_names[truth >= 0])
    tl.gene_modules(adata, genes=module_genes, resolutions=[1.0], min_module_size=3)
    column = adata.var["gene_modules_level1"]
    assert (column[truth < 0] == "").all()  # not selected: no module
    assert adjusted_rand_score(truth[truth >= 0], column[truth >= 0]) == 1.0
    params = adata.uns["gene_modules"]["params"]
    assert params["normalized"] is True and params["selection"] == "list"
    hierarchy = tl.get_hierarchy(adata)
    assert isinstance(hierarchy, Hierarchy) and hierarchy.n_modules == [4]


def test_gene_modules_copy_hvg_and_layer(rng):
    adata, _, truth = _counts_anndata(rng)
    adata.layers["counts"] = adata.X.copy()
    out = tl.gene_modules(adata, n_top_genes=30, layer="counts", resolutions=[1.0],
                          min_module_size=3, key_added="mods", copy=True)
    assert "mods" not in adata.uns and "mods" in out.uns
    assert out.uns["mods"]["params"]["selection"] == "hvg:30"
    with pytest.raises(KeyError, match="layer 'nope' not found"):
        tl.gene_modules(adata, layer="nope")


def test_gene_modules_bad_genes_are_named(rng):
    adata, _, _ = _counts_anndata(rng)
    with pytest.raises(ValueError, match=r"not in the expression matrix: \['NOT_A_GENE'\]"):
        tl.gene_modules(adata, genes=["GENE0", "NOT_A_GENE"])
    with pytest.raises(ValueError, match="fewer than the minimum module size"):
        tl.gene_modules(adata, genes=["GENE0", "GENE1", "GENE2"], min_module_size=5)
    with pytest.raises(KeyError, match="run cellsae.tl.gene_modules"):
        tl.get_hierarchy(adata, "absent")


def test_module_scores_follow_the_planted_programs(rng):
    adata, programs, truth = _counts_anndata(rng)
    tl.gene_modules(adata, genes=list(adata.var_names[truth >= 0]), resolutions=[1.0],
                    min_module_size=3)
    tl.module_scores(adata, ctrl_size=5, n_bins=5)
    scores = adata.obsm["module_scores"]
    assert scores.shape == (adata.n_obs, 4)
    hierarchy = tl.get_hierarchy(adata)
    for name, genes in hierarchy.modules(1).items():
        block = truth[adata.var_names.get_indexer(genes)][0]
        corr = [np.corrcoef(scores[name], programs[:, b])[0, 1] for b in range(4)]
        assert np.argmax(corr) == block and corr[block] > 0.6
    assert adata.uns["module_scores"]["levels"] == [1, 1, 1, 1]


def test_module_scores_need_the_module_genes(rng):
    adata, _, truth = _counts_anndata(rng)
    tl.gene_modules(adata, genes=list(adata.var_names[truth >= 0]), resolutions=[1.0],
                    min_module_size=3)
    hierarchy = tl.get_hierarchy(adata)
    smaller = adata[:, adata.var_names[8:]].copy()
    with pytest.raises(ValueError, match="module genes are not in the expression matrix"):
        tl.module_scores(smaller, hierarchy)


class _IdentityCoupling:
    """Stands in for a GWResult: image cell i is coupled to RNA cell i."""

    def __init__(self, n):
        self.shape = (n, n)

    def impute(self, expression):
        return np.asarray(expression)


def test_map_scores_to_cells_and_correlate_with_latents(rng):
    rna, programs, truth = _counts_anndata(rng)
    tl.gene_modules(rna, genes=list(rna.var_names[truth >= 0]), resolutions=[1.0],
                    min_module_size=3)
    tl.module_scores(rna, ctrl_size=5, n_bins=5)
    latents = np.maximum(0, np.column_stack([programs[:, 2], rng.normal(size=(rna.n_obs, 3))]))
    cells = ad.AnnData(X=latents.astype(np.float32),
                       obs=pd.DataFrame(index=[f"img{i}" for i in range(rna.n_obs)]),
                       var=pd.DataFrame(index=["lat0", "lat1", "lat2", "lat3"]))
    tl.map_module_scores(cells, rna, _IdentityCoupling(rna.n_obs))
    np.testing.assert_allclose(cells.obsm["module_scores"].to_numpy(),
                               rna.obsm["module_scores"].to_numpy())
    tl.module_latent_correlation(cells, n_top=1)
    result = cells.uns["module_latents"]
    assert result["correlation"].shape == (4, 4)
    hierarchy = tl.get_hierarchy(rna)
    module_of_block2 = next(n for n, g in hierarchy.modules(1).items()
                            if truth[rna.var_names.get_indexer(g)][0] == 2)
    top = result["top"].set_index("module").loc[module_of_block2]
    assert top["feature"] == "lat0" and top["correlation"] > 0.5
    with pytest.raises(ValueError, match="coupling is 3 x 3"):
        tl.map_module_scores(cells, rna, _IdentityCoupling(3))


def test_pathway_activity_with_decoupler(rng):
    pytest.importorskip("decoupler")
    adata, programs, truth = _counts_anndata(rng)
    sets = {f"B{b}": list(adata.var_names[truth == b]) for b in range(4)}
    pathway_activity(adata, sets, method="ulm")
    scores = adata.obsm["pathway_activity"]
    assert list(scores.columns) == ["B0", "B1", "B2", "B3"]
    assert np.corrcoef(scores["B1"], programs[:, 1])[0, 1] > 0.6
    with pytest.raises(ValueError, match="no method"):
        pathway_activity(adata, sets, method="not_a_method")


def _patchseq(shared_data):
    path = shared_data / "gouwens2020_patchseq" / "adata_RNA_TEM.h5ad"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return ad.read_h5ad(path)  # 448 neurons, log-normalised: used as is


def test_gene_modules_on_real_patchseq_rna(shared_data):
    adata = _patchseq(shared_data)
    tl.gene_modules(adata, n_top_genes=100, resolutions=[0.3, 1.0], n_seeds=1, seed=0)
    params = adata.uns["gene_modules"]["params"]
    assert params["normalized"] is False and params["n_genes"] == 100
    hierarchy = tl.get_hierarchy(adata)
    assert hierarchy.n_modules[0] >= 2 and hierarchy.n_modules[1] >= hierarchy.n_modules[0]
    assert hierarchy.nesting_consistency >= 0.8


@pytest.mark.slow
def test_automatic_levels_on_real_patchseq_rna(shared_data):
    adata = _patchseq(shared_data)
    tl.gene_modules(adata, n_top_genes=300, n_bootstrap=5, seed=0)
    hierarchy = tl.get_hierarchy(adata)
    assert hierarchy.n_levels >= 2 and hierarchy.nesting_consistency >= 0.9
    assert np.nanmean(hierarchy.module_stability[0]) >= 0.8
