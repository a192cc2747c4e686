"""Gene predictability must not be circular: imputing through a coupling makes every gene
a smooth function of image position, so the null has to keep that smoothing."""

import numpy as np
import pytest

from cellsae.align import GWResult
from cellsae.align.predictability import gene_predictability


def _kernel_coupling(s_src, s_tgt, bandwidth):
    """A blurred coupling like an entropic GW one: Sinkhorn on a Gaussian kernel of the
    shared latent, uniform marginals."""
    d = ((s_src[:, None, :] - s_tgt[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d / bandwidth)
    n, m = k.shape
    u, v = np.ones(n), np.ones(m)
    for _ in range(300):
        u = (1 / n) / (k @ v)
        v = (1 / m) / (k.T @ u)
    return u[:, None] * k * v[None, :]


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(3)
    n, m = 140, 160
    s_img = rng.uniform(-2, 2, size=(n, 2))  # shared biology seen by the images
    s_rna = rng.uniform(-2, 2, size=(m, 2))
    u_rna = rng.normal(size=m)  # RNA-only variation
    image = np.c_[s_img, s_img**2, rng.normal(size=(n, 3))] + 0.1 * rng.normal(size=(n, 7))
    genes = np.c_[
        s_rna[:, 0] ** 2 + 0.2 * rng.normal(size=m),  # related to image geometry
        s_rna[:, 1] + 0.2 * rng.normal(size=m),  # related
        rng.normal(size=m),  # pure noise
        rng.normal(size=m),  # pure noise
        u_rna + 0.1 * rng.normal(size=m),  # RNA-only structure
    ]
    names = ["s0_sq", "s1", "noise1", "noise2", "rna_only"]
    res = GWResult(
        coupling=_kernel_coupling(s_img, s_rna, bandwidth=0.5), objective=0.0, converged=True
    )
    return res, image, genes, names


def test_row_permutation_null_is_circular(planted):
    # documents why it is not the default: smoothed noise looks predictable
    res, image, genes, names = planted
    df = res.predictability(
        image, genes, gene_names=names, n_permutations=20, seed=0, null="row_permutation"
    )
    assert df.attrs["null"] == "row_permutation"
    assert df.loc[["noise1", "noise2", "rna_only"], "predictable"].sum() >= 2


def test_target_permutation_null_calls_only_related_genes(planted):
    res, image, genes, names = planted
    df = res.predictability(image, genes, gene_names=names, n_permutations=40, seed=0)
    assert df.attrs["null"] == "target_permutation"
    assert df.loc["s0_sq", "predictable"] and df.loc["s1", "predictable"]
    assert not df.loc[["noise1", "noise2", "rna_only"], "predictable"].any()
    # the imputed noise genes still have a high raw R² (they are smooth over image space);
    # it is the null that tells them apart
    assert df.loc["noise2", "r2"] > 0.3
    assert (df["null_mean"] > 0.15).all()


def test_predictability_bad_input(planted):
    res, image, genes, names = planted
    with pytest.raises(ValueError, match="target cells"):
        res.predictability(image, genes[:-1], gene_names=names)
    with pytest.raises(ValueError, match="null must be"):
        res.predictability(image, genes, null="bogus")
    with pytest.raises(ValueError, match="n_permutations"):
        gene_predictability(image, genes[: image.shape[0]], n_permutations=0)
    with pytest.raises(ValueError, match="shape"):
        gene_predictability(
            image,
            genes[: image.shape[0]],
            n_permutations=2,
            null_imputations=lambda rng: np.zeros((3, 3)),
        )


def test_constant_gene_is_never_predictable(rng):
    image = rng.normal(size=(60, 3))
    y = np.c_[image[:, 0], np.ones(60)]
    df = gene_predictability(image, y, gene_names=["a", "const"], n_permutations=60)
    assert np.isnan(df.loc["const", "r2"]) and not df.loc["const", "predictable"]
    assert df.loc["a", "predictable"]


def test_target_null_is_calibrated_on_smoothed_noise():
    # 60 genes of pure noise over RNA cells, imputed through a blurred coupling: each is a
    # smooth function of image position (high raw R²), none may be called predictable
    rng = np.random.default_rng(11)
    n, m = 120, 130
    s_img, s_rna = rng.uniform(-2, 2, size=(n, 2)), rng.uniform(-2, 2, size=(m, 2))
    image = np.c_[s_img, s_img**2] + 0.1 * rng.normal(size=(n, 4))
    genes = np.c_[rng.normal(size=(m, 40)), rng.poisson(0.3, size=(m, 20))]
    res = GWResult(
        coupling=_kernel_coupling(s_img, s_rna, bandwidth=0.5), objective=0.0, converged=True
    )
    df = res.predictability(image, genes, n_permutations=30, seed=2)
    assert df["r2"].median() > 0.2
    assert df["predictable"].sum() <= 1
    assert df["pvalue"].min() > 1e-3
