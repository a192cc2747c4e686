import numpy as np
import pytest
from scipy.stats import hypergeom

from cellsae.pathways import benjamini_hochberg, over_representation


def test_benjamini_hochberg_known_values():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan])
    expected = np.array([0.04, 0.16 / 3, 0.16 / 3, 0.5, np.nan])
    np.testing.assert_allclose(benjamini_hochberg(p), expected)
    assert (benjamini_hochberg([0.2, 0.9]) >= np.array([0.2, 0.9])).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([1.5])


def test_hypergeometric_p_value_and_columns():
    background = [f"g{i}" for i in range(100)]
    modules = {"M1": background[:10]}
    sets = {"S": background[:5] + background[50:55]}  # 5 of the module's 10 genes
    table = over_representation(modules, sets, background=background)
    row = table.iloc[0]
    assert row["overlap"] == 5 and row["set_size"] == 10 and row["background_size"] == 100
    assert row["pvalue"] == pytest.approx(hypergeom.sf(4, 100, 10, 10))
    assert row["expected"] == pytest.approx(1.0) and row["fold_enrichment"] == pytest.approx(5)
    assert row["genes"] == ",".join(sorted(background[:5]))


def test_true_set_ranks_first_against_decoys(rng):
    background = [f"g{i}" for i in range(300)]
    module = list(rng.choice(background, 15, replace=False))
    sets = {"TRUE": module[:12] + list(rng.choice(background, 3, replace=False))}
    for i in range(30):
        sets[f"DECOY{i}"] = list(rng.choice(background, 15, replace=False))
    sets["HALF"] = module[:7] + list(rng.choice(background, 8, replace=False))
    table = over_representation({"M": module}, sets, background=background)
    assert table.iloc[0]["term"] == "TRUE"
    assert table.iloc[0]["fdr"] < 1e-6
    assert (table["fdr"] >= table["pvalue"] - 1e-15).all()


def test_sets_are_restricted_to_the_background():
    background = ["a", "b", "c", "d"]
    table = over_representation({"M": ["a", "b"]}, {"S": ["a", "b", "x", "y"]},
                               background=background)
    assert table.iloc[0]["set_size"] == 2


def test_bad_input_errors():
    background = ["a", "b", "c"]
    with pytest.raises(ValueError, match="not in the background"):
        over_representation({"M": ["a", "z"]}, {"S": ["a"]}, background=background)
    with pytest.raises(ValueError, match="same identifiers"):
        over_representation({"M": ["a"]}, {"S": ["ENSG1"]}, background=background)
    with pytest.raises(ValueError, match="duplicate"):
        over_representation({"M": ["a"]}, [("S", ["a"]), ("S", ["b"])], background=background)
