from __future__ import annotations

import numpy as np
import pytest

from cellsae.images.preprocess import (
    PlateCalibration,
    correct_field,
    estimate_flatfield,
    focus_score,
    normalize_percentile,
    project,
)


def test_projections(rng):
    stack = rng.random((2, 3, 8, 9)).astype(np.float32)
    np.testing.assert_allclose(project(stack), stack.max(1))
    np.testing.assert_allclose(project(stack, "mean"), stack.mean(1), rtol=1e-6)
    np.testing.assert_allclose(project(stack, "sum"), stack.sum(1), rtol=1e-6)
    assert project(stack, "median").shape == (2, 8, 9)
    with pytest.raises(ValueError, match="projection must be one of"):
        project(stack, "min")


def test_best_focus_picks_the_sharp_plane(rng):
    from scipy import ndimage as ndi

    sharp = (rng.random((32, 32)) > 0.9).astype(np.float32) * 100 + 10
    stack = np.stack([ndi.gaussian_filter(sharp, 3), sharp, ndi.gaussian_filter(sharp, 2)])
    np.testing.assert_array_equal(project(stack, "best_focus"), sharp)
    assert focus_score(sharp) > focus_score(stack[0])


def test_flatfield_recovers_vignetting(rng):
    yy, xx = np.mgrid[:64, :64] / 64 - 0.5
    vignette = 1 - 0.6 * (xx**2 + yy**2)
    fields = []
    for _ in range(9):
        scene = 100 + 400 * (rng.random((64, 64)) > 0.97)
        fields.append(scene * vignette + rng.normal(0, 2, (64, 64)))
    flat = estimate_flatfield(fields)
    assert abs(flat.mean() - 1) < 1e-5
    truth = vignette / vignette.mean()
    assert np.abs(flat - truth).max() < 0.05
    corrected = fields[0] / flat
    background = corrected[fields[0] < 300]
    assert background.std() < (fields[0][fields[0] < 300]).std()


def test_calibration_round_trip_and_correction(tmp_path, rng):
    fields = [rng.random((2, 16, 16)).astype(np.float32) * 100 for _ in range(3)]
    cal = PlateCalibration.estimate(fields, ["a", "b"], nucleus_channel=0)
    cal.save(tmp_path / "cal.npz")
    back = PlateCalibration.load(tmp_path / "cal.npz")
    np.testing.assert_allclose(back.flatfield, cal.flatfield)
    assert back.channel_names == ["a", "b"]
    corrected, normalised = correct_field(fields[0], back)
    assert corrected.min() >= 0 and normalised.shape == (2, 16, 16)
    with pytest.raises(ValueError, match="differs from the plate"):
        correct_field(np.zeros((2, 8, 8)), back)
    np.testing.assert_allclose(normalize_percentile(np.array([1.0, 3.0, 5.0]), 1, 3), [0, 1, 2])
