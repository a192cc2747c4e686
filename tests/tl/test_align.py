import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import cellsae.pl as cpl
from cellsae.tl.align import gw_map, rna_representation


def _pair(rng, n=120):
    lab = rng.integers(0, 3, n)
    latent = np.eye(3)[lab] * 4 + rng.normal(size=(n, 3)) * 0.5
    img = ad.AnnData(np.c_[latent @ rng.normal(size=(3, 12)), rng.normal(size=(n, 4)) * 0.1])
    img.obs["type"] = lab.astype(str)
    rates = np.exp(latent @ rng.normal(size=(3, 60)) * 0.5 + 1)
    rna = ad.AnnData(sparse.csr_matrix(rng.poisson(rates).astype(np.float32)))
    rna.obs["type"] = lab.astype(str)
    rna.var_names = [f"g{i}" for i in range(60)]
    return img, rna


def test_gw_map_writes_both_objects(rng):
    img, rna = _pair(rng)
    res = gw_map(img, rna, n_pcs=5, n_neighbors=(10, 20), epsilon=(1e-2,), labels_key="type",
                 device="cpu")
    assert "gw_map" in img.uns and "gw_map" in rna.uns
    assert img.obsm["X_gw_map"].shape == (120, 5) and rna.obsm["X_gw_map"].shape == (120, 5)
    assert "gw_map_type" in img.obs and "gw_map_type_confidence" in img.obs
    assert np.allclose(img.obs["gw_map_mass"], 1, atol=1e-2)
    assert res.selection["criterion"] == "consensus"
    # plots return figures
    fig = cpl.coupling_heatmap(res, img.obs["type"], rna.obs["type"])
    assert fig.axes
    assert cpl.gw_joint_embedding(img, rna, color_img="type").axes
    assert cpl.gw_confusion(img.obs["type"], img.obs["gw_map_type"]).axes
    table = res.predictability(img.obsm["X_gw_map"], rna[:, :5].X.toarray(),
                               gene_names=list(rna.var_names[:5]), n_permutations=5)
    assert cpl.gw_predictability(table).axes


def test_bad_inputs(rng):
    img, rna = _pair(rng, n=40)
    with pytest.raises(KeyError, match="labels_key"):
        gw_map(img, rna, labels_key="nope")
    with pytest.raises(KeyError, match="obsm"):
        gw_map(img, rna, use_rep_img="X_missing")
    with pytest.raises(ValueError, match="refine"):
        gw_map(img, rna, refine=1.5)
    bad = rna.copy()
    bad.X = bad.X.toarray()
    bad.X[0] = 0
    with pytest.raises(ValueError, match="zero counts"):
        rna_representation(bad)


def test_cli_align(tmp_path, rng):
    from typer.testing import CliRunner

    from cellsae.cli import app

    img, rna = _pair(rng, n=60)
    img.write_h5ad(tmp_path / "img.h5ad")
    rna.write_h5ad(tmp_path / "rna.h5ad")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["align", str(tmp_path / "img.h5ad"), str(tmp_path / "rna.h5ad"),
                                 "--out", str(out), "--n-pcs", "5", "--n-neighbors", "10",
                                 "--epsilon", "0.01", "--labels-key", "type",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (out / "gw_result.npz").exists() and (out / "summary.json").exists()
    assert (out / "image.h5ad").exists()
