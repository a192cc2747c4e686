"""The training recipe: a tiny toy is solved, sweeps, early stopping, bad inputs."""

import numpy as np
import pytest
import torch

import cellsae.sae as S
from cellsae.datasets.toy import toy_superposition
from cellsae.metrics.sae import mmcs, recovery_at


@pytest.fixture(scope="module")
def toy():
    return toy_superposition(24, 16, 2, 6000, zipf_exponent=0.0, seed=1)


def test_tiny_toy_is_solved(toy):
    sae = S.train(toy.X, arch="topk", k=2, d_sae=48, n_steps=400, batch_size=256, seed=0,
                  device="cpu")
    true_to_learned, _ = mmcs(sae.W_dec.detach().numpy(), toy.dictionary)
    assert true_to_learned > 0.95
    assert recovery_at(sae.W_dec.detach().numpy(), toy.dictionary, 0.9) > 0.85
    report = S.evaluate(sae, toy.X[:2000], true_dictionary=toy.dictionary,
                        true_codes=toy.codes[:2000])
    assert report.fvu < 0.3 and report.mcc > 0.7
    assert len(sae.train_info["history"]) > 0


# Measured on this toy (400 steps, seed 0): MMCS topk 0.99, batchtopk 0.96, jumprelu 0.92,
# matryoshka 0.91; relu 0.76 and the tied gated form 0.82 at L0 2 (their L1 penalty shrinks
# the codes, which costs them the exact directions on a 16-d toy; the default gated form
# with r_mag was not re-measured here, see tests/sae/test_gated.py). Thresholds leave a
# margin.
SOLVED_MMCS = {"topk": 0.95, "batchtopk": 0.9, "matryoshka": 0.85, "jumprelu": 0.85,
               "relu": 0.7, "gated": 0.75}


@pytest.mark.parametrize("arch", sorted(SOLVED_MMCS))
def test_tiny_toy_is_solved_by_every_architecture(arch, toy):
    kwargs = {"k": 2} if arch in ("topk", "batchtopk", "matryoshka") else {"target_l0": 2}
    if arch in ("relu", "gated"):
        kwargs["l1_coeff"] = 2.0
    sae = S.train(toy.X, arch=arch, d_sae=48, n_steps=400, batch_size=256, seed=0,
                  device="cpu", **kwargs)
    report = S.evaluate(sae, toy.X[:2000], true_dictionary=toy.dictionary,
                        true_codes=toy.codes[:2000])
    assert report.mmcs_true_to_learned > SOLVED_MMCS[arch]
    assert 1.0 < report.l0 < 4.0  # about the true L0 of 2


def test_sweep_shares_batches_and_matches_single_runs(toy):
    configs = [{"arch": "topk", "d_sae": 32, "k": 2}, {"arch": "relu", "d_sae": 16}]
    swept = S.train_sweep(toy.X, configs, n_steps=30, batch_size=128, seed=2, device="cpu")
    single = S.train(toy.X, arch="topk", d_sae=32, k=2, n_steps=30, batch_size=128, seed=2,
                     device="cpu")
    assert [s.arch for s in swept] == ["topk", "relu"]
    assert swept[1].d_sae == 16
    assert torch.equal(swept[0].W_dec, single.W_dec)
    with pytest.raises(ValueError, match="batch_size"):
        S.train_sweep(toy.X, [{"batch_size": 64}, {"batch_size": 32}], n_steps=2)


def test_early_stop_on_plateau(toy):
    sae = S.train(toy.X, arch="topk", k=2, d_sae=32, n_steps=5000, batch_size=128,
                  eval_every=10, early_stop_patience=2, early_stop_tol=0.5, lr_decay="none",
                  device="cpu")
    assert sae.train_info["steps"] < 5000


def test_bad_inputs_give_clear_errors(toy):
    X = toy.X[:500].copy()
    X[123, 4] = np.nan
    with pytest.raises(ValueError, match="row 123"):
        S.train(X, arch="topk", k=2, d_sae=16, n_steps=2, batch_size=64, device="cpu")
    X[123, 4] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        S.train(X, arch="topk", k=2, d_sae=16, n_steps=2, batch_size=64, device="cpu")
    with pytest.raises(ValueError, match="no rows"):
        S.train(np.zeros((0, 12), np.float32), d_sae=16, n_steps=2)
    with pytest.raises(ValueError, match="unknown option 'l1_coef'"):
        S.train(toy.X, arch="relu", l1_coef=3.0, n_steps=2)
    with pytest.raises(ValueError, match="k must be"):
        S.train(toy.X, arch="topk", k=0, d_sae=16, n_steps=2)
    with pytest.raises(ValueError, match="lr_decay"):
        S.train(toy.X, arch="topk", k=2, d_sae=16, n_steps=2, lr_decay="exp")

    sae = S.train(toy.X, arch="topk", k=2, d_sae=16, n_steps=5, batch_size=64, device="cpu")
    with pytest.raises(ValueError, match="d_in=16"):
        sae.encode(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="no rows"):
        sae.encode(np.zeros((0, 16), np.float32))
    with pytest.raises(ValueError, match="row 1"):
        sae.encode(np.array([[0] * 16, [np.nan] * 16], np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        sae.encode(torch.full((2, 16), float("inf")))


def test_load_errors(tmp_path, toy):
    with pytest.raises(FileNotFoundError):
        S.load(tmp_path / "absent.safetensors")
    sae = S.train(toy.X, arch="topk", k=2, d_sae=16, n_steps=3, batch_size=64, device="cpu")
    sae.save(tmp_path / "m.safetensors")
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        S.load(tmp_path / "m.safetensors")


def test_paper_preset_trains(toy):
    sae = S.train(toy.X, preset="paper", d_sae=32, n_steps=20, batch_size=128, device="cpu")
    assert sae.arch == "gated" and sae.l2_normalise_inputs
    # a generic k (as configs pass it) is ignored for penalty-based architectures
    S.train(toy.X, "gated", 16, 32, n_steps=2, batch_size=64, device="cpu")
    assert sae.train_info["config"]["weight_decay"] == 1e-4
    codes = sae.encode(toy.X[:50])
    assert codes.shape == (50, 32)
