import numpy as np
import pytest
from scipy import sparse

from cellsae.align import FactorizedCoupling, GWResult, load_result


def _result(n=6):
    t = np.eye(n) / n
    return GWResult(coupling=t, objective=0.1, converged=True, params={"epsilon": 1e-3},
                    history=[{"iter": 1}])


def test_transfer_labels_and_accuracy():
    res = _result()
    labels = np.array(list("aabbcc"))
    df = res.transfer_labels(labels, method="argmax")
    assert (df["label"].to_numpy() == labels).all()
    assert np.allclose(df["confidence"], 1)
    df = res.transfer_labels(labels, method="barycentric")
    assert (df["label"].to_numpy() == labels).all() and "p_a" in df
    assert res.label_transfer_accuracy(labels, labels) == 1.0
    with pytest.raises(ValueError):
        res.transfer_labels(labels[:3])


def test_impute_and_projection(rng):
    t = rng.uniform(size=(5, 7))
    t /= t.sum()
    res = GWResult(coupling=t, objective=0.0, converged=True)
    expr = rng.normal(size=(7, 3))
    imp = res.impute(expr)
    assert np.allclose(imp, (t @ expr) / t.sum(1, keepdims=True))
    back = res.barycentric_projection(rng.normal(size=(5, 2)), direction="to_target")
    assert back.shape == (7, 2)


def test_foscttm_perfect_and_shuffled(rng):
    res = _result(20)
    assert res.foscttm() == 0.0
    y = rng.normal(size=(20, 3))
    assert res.foscttm(target_rep=y) == 0.0


def test_save_load_roundtrip_dense_sparse_factorized(tmp_path, rng):
    dense = _result()
    sp = GWResult(coupling=sparse.csr_matrix(np.eye(4) / 4), objective=1.0, converged=False,
                  warnings=["w"])
    left = sparse.csr_matrix(np.eye(4) / 4)
    fact = GWResult(coupling=FactorizedCoupling(left=left, core=np.eye(4) / 4 * 4,
                                                right=left), objective=0.5, converged=True)
    for i, r in enumerate((dense, sp, fact)):
        path = tmp_path / f"r{i}.npz"
        r.save(path)
        back = load_result(path)
        assert back.to_dict() == r.to_dict()
        assert np.allclose(back.dense(), r.dense())
    # no pickle inside
    with np.load(tmp_path / "r0.npz", allow_pickle=False) as z:
        assert "__meta_json__" in z


def test_predictability_finds_planted_genes(rng):
    n = 120
    image = rng.normal(size=(n, 5))
    res = GWResult(coupling=np.eye(n) / n, objective=0.0, converged=True)
    genes = np.c_[image[:, 0] * 2 + 0.1 * rng.normal(size=n), rng.normal(size=(n, 3))]
    df = res.predictability(image, genes, gene_names=["signal", "n1", "n2", "n3"],
                            n_permutations=40, fdr=0.05, seed=1)
    assert df.index[0] == "signal" and df.loc["signal", "predictable"]
    assert df.loc["signal", "r2"] > 0.9
    noise = df.loc[["n1", "n2", "n3"]]
    assert (noise["r2"] < 0.1).all()
    # a noise gene may pass by chance (p-values are uniform under the null), but not most
    assert noise["predictable"].sum() <= 1


def test_massless_cells_get_no_label_and_bad_truth_raises(rng):
    t = np.zeros((3, 2))
    t[0, 0] = t[1, 1] = 0.5   # source cell 2 receives nothing
    res = GWResult(coupling=t, objective=0.0, converged=True)
    for method in ("barycentric", "argmax"):
        df = res.transfer_labels(np.array(["a", "b"]), method=method)
        assert list(df["label"][:2]) == ["a", "b"] and df["label"][2] is None
        assert df["confidence"][2] == 0
    assert res.transfer_labels(np.array(["a", "b"]), method="argmax")["matched_index"][2] == -1
    assert res.label_transfer_accuracy(np.array(["a", "b", "a"]), np.array(["a", "b"])) == \
        pytest.approx(2 / 3)
    # FOSCTTM needs a pairing: identity only when the sides have equal sizes
    with pytest.raises(ValueError, match="pass truth"):
        res.foscttm()
    with pytest.raises(ValueError, match="target indices"):
        res.foscttm(np.array([0, 1, 2]))
    assert res.foscttm(np.array([0, 1, 1])) >= 0


def test_impute_from_anndata_layer(rng):
    import anndata as ad

    t = rng.uniform(size=(4, 6))
    t /= t.sum()
    res = GWResult(coupling=t, objective=0.0, converged=True)
    rna = ad.AnnData(X=rng.normal(size=(6, 3)))
    rna.layers["counts"] = rng.poisson(3, size=(6, 3)).astype(float)
    assert np.allclose(res.impute(rna, layer="counts"),
                       t @ rna.layers["counts"] / t.sum(1, keepdims=True))
    assert np.allclose(res.impute(rna), t @ rna.X / t.sum(1, keepdims=True))
    with pytest.raises(KeyError, match="layers \\['counts'\\]"):
        res.impute(rna, layer="raw")
    with pytest.raises(ValueError, match="only meaningful"):
        res.impute(rna.X, layer="counts")
