"""Gated SAE: the r_mag form (default) and the paper's tied form."""

import pytest
import torch

import cellsae.sae as S
from cellsae.datasets.toy import toy_superposition


@pytest.fixture(scope="module")
def toy():
    return toy_superposition(24, 16, 2, 6000, zipf_exponent=0.0, seed=1)


def _randomised(r_mag: bool, pre_bias: bool) -> S.SAE:
    sae = S.make_sae("gated", 16, 32, r_mag=r_mag, pre_bias=pre_bias)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(32, generator=g) * 0.3)
        sae.b_mag.copy_(torch.randn(32, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(16, generator=g) * 0.3)
        if r_mag:
            sae.r_mag.copy_(torch.randn(32, generator=g) * 0.5)
    sae.input_mean.copy_(torch.randn(16, generator=g))
    sae.input_scale.fill_(2.5)
    return sae


def test_gated_learns_a_tiny_toy(toy):
    sae = S.train(toy.X, arch="gated", d_sae=48, target_l0=2.0, n_steps=400, batch_size=256,
                  seed=0, device="cpu")
    assert sae.hparams()["r_mag"] is True
    report = S.evaluate(sae, toy.X[:2000], true_dictionary=toy.dictionary,
                        true_codes=toy.codes[:2000])
    assert report.mmcs_true_to_learned > 0.9, report.mmcs_true_to_learned
    # measured (seed 0): MMCS 0.985, recovery 1.0, FVU 0.115; the tied form gets FVU 0.21
    assert report.recovery_at_0_9 > 0.9, report.recovery_at_0_9
    assert report.fvu < 0.18, report.fvu
    assert 1.0 < report.l0 < 4.0


@pytest.mark.parametrize("r_mag", [True, False])
@pytest.mark.parametrize("pre_bias", [True, False])
def test_folding_is_exact_with_magnitude_rescale(r_mag, pre_bias, toy):
    # without pre_bias the input mean folds into b_mag through exp(r_mag) ⊙ W_enc
    sae = _randomised(r_mag, pre_bias)
    x = torch.from_numpy(toy.X[:300]) * 3 + 1
    before = sae.encode(x)
    assert (before > 0).any()
    recon = sae.decode(before)
    sae.fold_normalisation()
    assert sae.is_folded
    torch.testing.assert_close(sae.encode(x), before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(before), recon, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("r_mag", [True, False])
def test_save_load_round_trip(r_mag, toy, tmp_path):
    sae = S.train(toy.X, arch="gated", d_sae=32, r_mag=r_mag, target_l0=2.0, n_steps=20,
                  batch_size=128, seed=0, device="cpu")
    assert hasattr(sae, "r_mag") == r_mag
    sae.save(tmp_path / "g")
    loaded = S.load(tmp_path / "g.safetensors")
    assert loaded.hparams() == sae.hparams()
    a, b = sae.encode(toy.X[:300]), loaded.encode(toy.X[:300])
    assert a.nnz > 0 and (a != b).nnz == 0


def test_tied_file_loads_as_r_mag_zero(toy):
    # a state dict written before r_mag existed is the tied form, i.e. r_mag = 0
    tied = _randomised(False, True)
    state = tied.state_dict()
    assert "r_mag" not in state
    new = S.make_sae("gated", 16, 32)
    new.load_state_dict(state, strict=True)
    torch.testing.assert_close(new.r_mag.detach(), torch.zeros(32))
    x = torch.from_numpy(toy.X[:200])
    torch.testing.assert_close(new.encode(x), tied.encode(x))


def test_paper_preset_is_the_tied_form():
    paper = S.PRESETS["paper"]
    sae = S.make_sae("gated", 64, 32, **{k: v for k, v in paper.items()
                                        if k in S.registry.architecture_params("gated")})
    assert sae.hparams()["r_mag"] is False and not hasattr(sae, "r_mag")
    assert "r_mag" not in dict(sae.named_parameters())
