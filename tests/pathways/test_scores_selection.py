import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cellsae.pathways import correlate_scores, select_genes, top_correlated


def test_correlate_scores_matches_scipy(rng):
    scores = rng.normal(size=(80, 3))
    latents = np.abs(rng.normal(size=(80, 5)))
    latents[:, 4] = 0.0  # a dead latent correlates with nothing
    latents[:, 2] = scores[:, 1] ** 3
    corr = correlate_scores(scores, latents)
    assert corr.shape == (3, 5)
    assert corr[1, 2] == pytest.approx(1.0)
    assert corr[0, 1] == pytest.approx(spearmanr(scores[:, 0], latents[:, 1])[0])
    assert (corr[:, 4] == 0).all()
    pearson = correlate_scores(scores, latents, method="pearson")
    assert pearson[0, 0] == pytest.approx(np.corrcoef(scores[:, 0], latents[:, 0])[0, 1])
    top = top_correlated(corr, ["A", "B", "C"], [f"z{i}" for i in range(5)], n_top=2)
    assert top[top["module"] == "B"].iloc[0]["feature"] == "z2"
    with pytest.raises(ValueError, match="same cells"):
        correlate_scores(scores, latents[:10])
    with pytest.raises(ValueError, match="method"):
        correlate_scores(scores, latents, method="kendall")


def test_select_genes_by_list_table_and_variance(rng):
    names = ["A", "B", "C", "D"]
    assert list(select_genes(names, genes=["C", "A"])) == [2, 0]
    table = pd.DataFrame({"r2": [0.1, 0.9, np.nan, 0.5], "predictable": [0, 1, 0, 1]},
                         index=names)
    assert list(select_genes(names, table=table, score="r2", n_top=2)) == [1, 3]
    assert list(select_genes(names, table=table, select="predictable")) == [1, 3]
    x = rng.normal(size=(50, 4)) * np.array([1, 5, 0.1, 3])
    assert list(select_genes(names, x=x, n_top=2)) == [1, 3]


def test_select_genes_errors_name_the_problem():
    names = ["Actb", "Gapdh"]
    with pytest.raises(ValueError, match=r"1 of 2 requested genes are not in the expression "
                                         r"matrix: \['ACTB'\].*case mismatch"):
        select_genes(names, genes=["ACTB", "Gapdh"])
    with pytest.raises(ValueError, match="duplicated"):
        select_genes(names, genes=["Actb", "Actb"])
    table = pd.DataFrame({"r2": [1.0]}, index=["Xyz"])
    with pytest.raises(ValueError, match="genes of the gene table"):
        select_genes(names, table=table, score="r2")
    with pytest.raises(KeyError, match="columns are"):
        select_genes(names, table=pd.DataFrame({"r2": [1.0]}, index=["Actb"]), score="R2")
