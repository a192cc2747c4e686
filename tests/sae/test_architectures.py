"""Every architecture: shapes, sparsity, unit decoder norms, save/load, exact resume."""

import numpy as np
import pytest
import torch
from scipy import sparse

import cellsae.sae as S
from cellsae.datasets.toy import toy_superposition

ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"]
TOPK_FAMILY = {"topk", "batchtopk", "matryoshka"}


@pytest.fixture(scope="module")
def toy():
    return toy_superposition(48, 16, 3, 3000, seed=0)


def _kwargs(arch, k=3):
    return {"k": k} if arch in TOPK_FAMILY else {}


@pytest.fixture(scope="module")
def trained(toy):
    out = {}
    for arch in ARCHS:
        out[arch] = S.train(toy.X, arch=arch, d_sae=96, n_steps=80, batch_size=256, seed=0,
                            device="cpu", **_kwargs(arch))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_sparsity(arch, trained, toy):
    sae = trained[arch]
    codes = sae.encode(toy.X[:500])
    assert sparse.isspmatrix_csr(codes) and codes.shape == (500, 96)
    assert codes.dtype == np.float32
    assert (codes.data >= 0).all()
    l0 = codes.getnnz() / 500
    if arch == "topk":
        assert np.all(np.diff(codes.indptr) <= 3)
    elif arch in TOPK_FAMILY:  # learned threshold: about k on average
        assert 0.5 < l0 < 8
    else:
        assert l0 < 96 * 0.5  # genuinely sparse
    x_hat = sae.decode(codes)
    assert x_hat.shape == (500, 16)
    np.testing.assert_allclose(sae.decode(codes, batch_size=64), x_hat, rtol=1e-5, atol=1e-6)
    torch_codes = sae.encode(torch.from_numpy(toy.X[:10]))
    assert isinstance(torch_codes, torch.Tensor) and torch_codes.shape == (10, 96)
    # same codes up to float32 summation order (BLAS threads may differ between the paths)
    np.testing.assert_allclose(torch_codes.numpy(), codes[:10].toarray(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_rows_stay_unit_norm(arch, trained):
    norms = trained[arch].W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruction_beats_the_mean(arch, trained, toy):
    sae = trained[arch]
    codes = sae.encode(toy.X[:1000])
    from cellsae.metrics.sae import fvu

    assert fvu(toy.X[:1000], sae.decode(codes)) < 0.6


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_gives_identical_codes(arch, trained, toy, tmp_path):
    sae = trained[arch]
    sae.save(tmp_path / "model")
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "model.json").exists()
    loaded = S.load(tmp_path / "model.safetensors")
    assert loaded.arch == arch and loaded.hparams() == sae.hparams()
    a, b = sae.encode(toy.X[:300]), loaded.encode(toy.X[:300])
    assert (a != b).nnz == 0
    assert loaded.train_info["config"]["arch"] == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_normalisation_changes_nothing(arch, toy):
    sae = S.make_sae(arch, 16, 32, **_kwargs(arch))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.2)
    sae.input_mean.copy_(torch.randn(16))
    sae.input_scale.fill_(2.5)
    x = torch.from_numpy(toy.X[:200]) * 3 + 1
    before = sae.encode(x)
    recon_before = sae.decode(before)
    sae.fold_normalisation()
    assert sae.is_folded
    torch.testing.assert_close(sae.encode(x), before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(before), recon_before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_equals_uninterrupted_training(arch, toy, tmp_path):
    common = dict(arch=arch, d_sae=32, n_steps=24, batch_size=128, seed=3, device="cpu",
                  chunk_size=1000, buffer_chunks=2, **_kwargs(arch, 2))
    straight = S.train(toy.X, **common)
    S.train(toy.X, checkpoint_dir=tmp_path, checkpoint_every=10, keep_checkpoints=5, **common)
    assert (tmp_path / "step_00000010.safetensors").exists()
    resumed = S.train(toy.X, resume=tmp_path / "step_00000010.safetensors", **common)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert resumed.train_info["resumed_from_step"] == 10


def test_resume_refuses_a_different_run(toy, tmp_path):
    S.train(toy.X, arch="topk", d_sae=32, k=2, n_steps=10, batch_size=128, device="cpu",
            checkpoint_dir=tmp_path, checkpoint_every=5)
    with pytest.raises(ValueError, match="d_sae"):
        S.train(toy.X, arch="topk", d_sae=64, k=2, n_steps=10, batch_size=128,
                device="cpu", resume=tmp_path)


def test_registry_and_presets():
    assert set(ARCHS) <= set(S.ARCHITECTURES)
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        S.get_architecture("nope")
    with pytest.raises(ValueError, match="does not take"):
        S.make_sae("relu", 8, 16, k=3)
    paper = S.PRESETS["paper"]
    assert paper["arch"] == "gated" and paper["d_sae"] == 8192
    sae = S.make_sae("gated", 512, 64, **{k: v for k, v in paper.items()
                                         if k in S.registry.architecture_params("gated")})
    assert sae.l2_normalise_inputs and not sae.pre_bias
