"""Recipe options: target-L0 penalty control, dead-latent resampling, bf16 autocast, init."""

import numpy as np
import pytest
import torch

import cellsae.sae as S
from cellsae.datasets.toy import toy_superposition
from cellsae.sae.base import LossContext
from cellsae.sae.trainer import TrainConfig, _normalisation, _Run


@pytest.fixture(scope="module")
def toy():
    return toy_superposition(48, 16, 3, 3000, seed=0)


def _l0(sae, X):
    return sae.encode(X).getnnz() / len(X)


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_target_l0_controller_steers_the_penalty(arch, toy):
    common = dict(arch=arch, d_sae=64, n_steps=400, batch_size=256, seed=0, device="cpu",
                  l1_coeff=0.05, lr=3e-3)
    fixed = S.train(toy.X, **common)
    steered = S.train(toy.X, target_l0=3.0, l0_gain=0.02, **common)
    l0_fixed, l0_steered = _l0(fixed, toy.X[:1000]), _l0(steered, toy.X[:1000])
    # a far too weak fixed λ leaves many latents on; the controller raises λ until about
    # target_l0 fire
    assert l0_fixed > 12
    assert 1.5 < l0_steered < 6, l0_steered
    final_coeff = steered.train_info["history"][-1]["l1_coeff"]
    assert final_coeff > 0.05 * 5
    assert steered.hparams()["target_l0"] == 3.0


def test_controller_state_is_checkpointed(toy, tmp_path):
    common = dict(arch="relu", d_sae=32, n_steps=24, batch_size=128, seed=3, device="cpu",
                  target_l0=2.0, sparsity_warmup=0.0, chunk_size=1000, buffer_chunks=2)
    straight = S.train(toy.X, **common)
    S.train(toy.X, checkpoint_dir=tmp_path, checkpoint_every=10, keep_checkpoints=5, **common)
    resumed = S.train(toy.X, resume=tmp_path / "step_00000010.safetensors", **common)
    assert float(straight.l1_coeff_live) != common.get("l1_coeff", 5.0)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_bad_controller_settings(toy):
    with pytest.raises(ValueError, match="target_l0 must be positive"):
        S.make_sae("relu", 16, 32, target_l0=0)
    with pytest.raises(ValueError, match="l0_gain"):
        S.make_sae("gated", 16, 32, target_l0=2, l0_gain=-1)
    with pytest.raises(ValueError, match="resample_every"):
        S.train(toy.X, arch="topk", k=2, d_sae=16, n_steps=2, resample_every=0)


def _run(toy, **overrides):
    config = TrainConfig(**{"arch": "topk", "d_sae": 64, "hparams": {"k": 2},
                            "batch_size": 128, "n_steps": 50, **overrides})
    norm = _normalisation(toy.X[:1000], center=True, scale=True, l2=False)
    return _Run(config, toy.X.shape[1], norm, torch.device("cpu"), toy.X[:1000], 50 * 128)


def test_resampling_reinitialises_dead_latents(toy):
    run = _run(toy, dead_window=100)
    x = run.sae._standardise(torch.from_numpy(toy.X[:128]))
    run.train_step(torch.from_numpy(toy.X[:128]), autocast=False)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    run.samples_since_fired[:] = 0
    run.samples_since_fired[dead] = 10_000
    W_enc_alive = run.sae.W_enc[~dead].clone()
    with torch.no_grad():
        x_hat = run.sae.decode_normalised(run.sae.encode_normalised(x))
    n = run.resample_dead(x, x_hat)
    assert n == 10 and run.n_resampled == 10
    W_dec = run.sae.W_dec.detach()
    # new decoder rows are unit-norm residual directions of batch samples
    torch.testing.assert_close(W_dec[dead].norm(dim=1), torch.ones(10))
    residual = x - x_hat
    residual = residual / residual.norm(dim=1, keepdim=True)
    assert ((W_dec[dead] @ residual.T).max(1).values > 0.999).all()
    # encoder rows along the same direction at 0.2 × the alive rows' mean norm
    enc = run.sae.W_enc.detach()[dead]
    target_norm = 0.2 * W_enc_alive.norm(dim=1).mean()
    torch.testing.assert_close(enc.norm(dim=1), target_norm.expand(10))
    assert torch.equal(run.sae.W_enc.detach()[~dead], W_enc_alive)
    assert (run.sae.b_enc.detach()[dead] == 0).all()
    for state in run.optimizer.state.values():
        for moment in (state["exp_avg"], state["exp_avg_sq"]):
            if moment.shape[0] == 64:
                assert (moment[dead] == 0).all() and (moment[~dead] != 0).any()
    assert (run.samples_since_fired[dead] == 0).all()


def test_resampling_in_training_and_exact_resume(toy, tmp_path):
    common = dict(arch="topk", k=1, d_sae=96, n_steps=30, batch_size=128, seed=0,
                  device="cpu", dead_window=256, resample_every=10, aux_alpha=0.0,
                  chunk_size=1000, buffer_chunks=2)
    straight = S.train(toy.X, **common)
    assert straight.train_info["n_resampled"] > 0
    norms = straight.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    S.train(toy.X, checkpoint_dir=tmp_path, checkpoint_every=15, keep_checkpoints=5, **common)
    resumed = S.train(toy.X, resume=tmp_path / "step_00000015.safetensors", **common)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_bf16_autocast_path_runs_on_cpu(arch, toy):
    kwargs = {"k": 3} if arch != "relu" else {}
    common = dict(arch=arch, d_sae=64, n_steps=60, batch_size=256, seed=0, device="cpu",
                  **kwargs)
    amp = S.train(toy.X, autocast="always", **common)
    full = S.train(toy.X, autocast=False, **common)
    assert all(p.dtype == torch.float32 for p in amp.parameters())
    from cellsae.metrics.sae import fvu

    f_amp = fvu(toy.X[:1000], amp.decode(amp.encode(toy.X[:1000])))
    f_full = fvu(toy.X[:1000], full.decode(full.encode(toy.X[:1000])))
    assert np.isfinite(f_amp) and abs(f_amp - f_full) < 0.1


def test_sparse_values_are_fp32_under_autocast():
    from cellsae.sae._sparse import gather_preacts, topk_structure

    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(8, 16, generator=g), torch.randn(32, 16, generator=g), torch.zeros(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pre = torch.nn.functional.linear(x, W, b)
    assert pre.dtype == torch.bfloat16
    crow, cols = topk_structure(pre.float(), 4)
    vals = gather_preacts(pre, x, W, b, torch.zeros(16), crow, cols, pre_bias=False)
    exact = (x @ W.T)[torch.arange(8).repeat_interleave(4), cols]
    assert vals.dtype == torch.float32
    torch.testing.assert_close(vals, exact, atol=1e-5, rtol=1e-5)


def test_batchtopk_encoder_rescale_uses_the_batch_selection(toy):
    # the initial encoder scale is fitted to the latents BatchTopK actually selects, so the
    # first reconstructions are a least-squares fit, not an overshoot
    x = torch.from_numpy(toy.X[:1000])
    x = (x - x.mean(0)) / (x - x.mean(0)).norm(dim=1).mean() * 4
    sae = S.make_sae("batchtopk", 16, 64, k=3)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    c = sae.rescale_encoder_init(x)
    assert 0 < c <= 1
    with torch.no_grad():
        pre = sae._preacts(x, sae.W_enc, sae.b_enc)
        crow, cols = sae._select(pre, LossContext(update_state=False))
        from cellsae.sae._sparse import gather_preacts, sparse_decode

        vals = torch.relu(gather_preacts(pre, x, sae.W_enc, sae.b_enc, sae.b_dec, crow, cols,
                                         pre_bias=True))
        x_hat = sparse_decode(crow, cols, vals, sae.W_dec)
        # least squares: a further rescaling by s would not reduce the error
        s = float((x * x_hat).sum() / (x_hat * x_hat).sum())
    assert abs(s - 1) < 1e-3 or c == 1.0


@pytest.mark.parametrize("arch", ["relu", "gated", "jumprelu"])
def test_target_l0_archs_start_sparse_and_scaled(arch, toy):
    # with a target L0 the encoder biases/thresholds are set from data so about that many
    # latents fire from the first step (zero biases fire half of all latents), and the
    # encoder is then rescaled without changing which latents fire
    config = TrainConfig(arch=arch, d_sae=64, hparams={"target_l0": 3.0}, batch_size=256,
                         n_steps=10)
    norm = _normalisation(toy.X, center=True, scale=True, l2=False)
    run = _Run(config, 16, norm, torch.device("cpu"), toy.X[:1000], 3000)
    x = run.sae._standardise(torch.from_numpy(toy.X[1000:2000]))
    with torch.no_grad():
        codes = run.sae.encode_normalised(x)
    l0 = float((codes > 0).sum(1).float().mean())
    assert 1.5 < l0 < 6, l0
    # the rescale is a least-squares fit of the reconstruction: no further scaling helps
    with torch.no_grad():
        x_hat = codes @ run.sae.W_dec
        target = x - run.sae.b_dec
        s = float((target * x_hat).sum() / (x_hat * x_hat).sum())
    assert s > 0.9, s  # c is capped at 1, so s may exceed 1 only if no shrinking was needed


def test_sample_weights_score_each_error_relative_to_its_norm():
    from cellsae.sae.trainer import _sample_weights

    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 10.0], [0.0, 0.0]])
    assert _sample_weights(x, 0.0) is None
    w = _sample_weights(x, 2.0)
    assert float(w.mean()) == pytest.approx(1.0)
    # ∝ 1/‖x‖² above the floor (5 % of the mean norm, 0.2 here): norms 5, 1 and 10.
    assert float(w[1] / w[0]) == pytest.approx(25.0)
    assert float(w[0] / w[2]) == pytest.approx(4.0)
    assert float(w[3] / w[1]) == pytest.approx(1 / 0.2 ** 2)  # the empty row is floored


def test_sample_weighting_trains_and_is_checked(toy):
    # Measured on this toy (300 steps, seed 0): MMCS 0.887 / MCC 0.60 with the weights,
    # 0.843 / 0.55 without.
    sae = S.train(toy.X, arch="topk", k=3, d_sae=96, n_steps=300, batch_size=256, seed=0,
                  device="cpu", sample_weight_power=2.0)
    report = S.evaluate(sae, toy.X[:2000], true_dictionary=toy.dictionary,
                        true_codes=toy.codes[:2000])
    assert report.mmcs_true_to_learned > 0.85 and report.mcc > 0.55
    assert sae.train_info["config"]["sample_weight_power"] == 2.0
    # The logged FVU is the plain (unweighted) one, comparable across settings.
    assert abs(sae.train_info["history"][-1]["fvu"] - report.fvu) < 0.03
    with pytest.raises(ValueError, match="sample_weight_power"):
        S.train(toy.X, arch="topk", k=2, d_sae=8, n_steps=2, sample_weight_power=-1)
