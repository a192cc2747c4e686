import numpy as np
import pytest
from scipy import sparse

from cellsae.metrics.sae import (
    dead_fraction,
    dense_fraction,
    fvu,
    l0,
    mcc,
    mcc_decoder,
    mean_abs_cos,
    mmcs,
    probe_accuracy_recovered,
    recovery_at,
    sae_report,
    shrinkage,
)


def test_reconstruction_metrics(rng):
    X = rng.normal(size=(200, 5))
    assert fvu(X, X) == 0
    assert fvu(X, np.broadcast_to(X.mean(0), X.shape)) == pytest.approx(1.0)
    m = X.mean(0)
    assert shrinkage(X, m + 0.5 * (X - m)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        fvu(X, X[:, :3])


def test_sparsity_metrics():
    codes = sparse.csr_matrix(np.array([[1, 0, 0, 2], [0, 0, 0, 3], [1, 0, 0, 1.0]]))
    assert l0(codes) == pytest.approx(5 / 3)
    assert dead_fraction(codes) == pytest.approx(0.5)
    assert dense_fraction(codes, threshold=0.5) == pytest.approx(0.5)
    assert l0(codes.toarray()) == l0(codes)


def test_dictionary_metrics(rng):
    true = rng.normal(size=(20, 8))
    learned = np.vstack([true * 3, rng.normal(size=(10, 8))])  # scale does not matter
    t2l, l2t = mmcs(learned, true)
    assert t2l == pytest.approx(1.0)
    assert l2t < 1.0
    assert recovery_at(learned, true, 0.99) == 1.0
    assert recovery_at(rng.normal(size=(5, 8)), true, 0.99) == 0.0
    eye = np.eye(6)
    assert mean_abs_cos(eye) == 0.0
    assert mean_abs_cos(np.ones((3, 4))) == pytest.approx(1.0)


def test_mcc_is_one_for_a_permutation_and_low_for_noise(rng):
    true = sparse.random(500, 10, density=0.2, random_state=1, format="csr")
    perm = rng.permutation(10)
    learned = sparse.hstack([true[:, perm] * 2.0, sparse.csr_matrix((500, 5))]).tocsr()
    assert mcc(learned, true) == pytest.approx(1.0)
    noise = sparse.random(500, 15, density=0.2, random_state=2, format="csr")
    assert mcc(noise, true) < 0.3


def test_mcc_decoder_matches_one_to_one_and_counts_missing_features(rng):
    true = rng.normal(size=(6, 16))
    perm = rng.permutation(6)
    learned = -3.0 * true[perm]  # scaled, sign-flipped, permuted: the same dictionary
    assert mcc_decoder(learned, true) == pytest.approx(1.0)
    # Two copies of one feature can be matched to it only once.
    copies = np.vstack([true[:5], true[:1]])
    unit = true / np.linalg.norm(true, axis=1, keepdims=True)
    expected = (5 + abs(unit[5] @ unit[0])) / 6
    assert mcc_decoder(copies, true) == pytest.approx(expected)
    assert mcc_decoder(true[:3], true) == pytest.approx(0.5)  # 3 of 6 features, no atom for 3
    with pytest.raises(ValueError, match="dims"):
        mcc_decoder(true[:, :8], true)


def test_probe_and_report(rng):
    labels = np.repeat([0, 1], 150)
    X = rng.normal(size=(300, 4)) + labels[:, None] * 3
    codes = np.maximum(X, 0)
    acc_codes, acc_inputs, recovered = probe_accuracy_recovered(codes, X, labels)
    assert acc_inputs > 0.9 and recovered > 0.8
    report = sae_report(X, X * 0.9, sparse.csr_matrix(codes), np.eye(4),
                        true_dictionary=np.eye(4), true_codes=codes, labels=labels)
    d = report.to_dict()
    assert d["mmcs_true_to_learned"] == pytest.approx(1.0) and d["mcc"] == pytest.approx(1.0)
    assert d["l0"] > 0 and 0 <= d["fvu"] < 0.1 and "probe_accuracy_recovered" in d
    assert "SAEReport(" in repr(report)
