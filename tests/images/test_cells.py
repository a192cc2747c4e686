from __future__ import annotations

import numpy as np
import pytest

from cellsae.images.cells import count_puncta, extract_crops, measure_cells


def _disc(shape, centre, radius, label=1, out=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.int32) if out is None else out
    out[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = label
    return out


def test_crops_are_centred_with_mask_channel():
    nuclei = _disc((64, 64), (30, 34), 4)
    nuclei = _disc((64, 64), (3, 3), 3, label=2, out=nuclei)
    image = np.stack([nuclei * 1.0, np.arange(64 * 64, dtype=float).reshape(64, 64)])
    result = extract_crops(image, nuclei, size=16, border="pad")
    assert result.crops.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(result.centres[0], [30, 34])
    mask = result.crops[0, 2]
    assert mask.sum() == (nuclei == 1).sum()
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - 8) <= 0.5 and abs(xs.mean() - 8) <= 0.5
    assert result.crops[0, 1, 8, 8] == image[1, 30, 34]
    assert list(result.touches_border) == [False, True]
    assert result.crops[1, 0, 0, 0] == 0  # zero padding outside the field
    dropped = extract_crops(image, nuclei, size=16, border="drop")
    assert list(dropped.labels) == [1]
    with pytest.raises(ValueError, match="border"):
        extract_crops(image, nuclei, border="wrap")


def test_crop_order_follows_labels_under_permutation(rng):
    nuclei = np.zeros((40, 40), np.int32)
    for k, c in enumerate([(10, 10), (10, 30), (30, 20)], 1):
        _disc(nuclei.shape, c, 3, label=k, out=nuclei)
    image = rng.random((1, 40, 40))
    perm = np.array([0, 3, 1, 2])  # relabel 1->3, 2->1, 3->2
    a = extract_crops(image, nuclei, size=8)
    b = extract_crops(image, perm[nuclei], size=8)
    np.testing.assert_allclose(a.crops[[0, 1, 2]], b.crops[[2, 0, 1]])


def test_measurements_recover_planted_values():
    nuclei = _disc((60, 60), (20, 20), 5)
    nuclei = _disc((60, 60), (40, 40), 3, label=2, out=nuclei)
    cells = _disc((60, 60), (20, 20), 9)
    cells = _disc((60, 60), (40, 40), 7, label=2, out=cells)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    mito = np.zeros((60, 60))
    for y, x in [(14, 20), (20, 26), (26, 20)]:  # three spots in cell 1
        mito[y, x] = 50
    death = (nuclei == 2) * 10.0
    image = np.stack([mito, death])
    features, names = measure_cells(image, nuclei, cells, ["mito", "death"])
    f = dict(zip(names, features.T, strict=True))
    assert features.shape == (2, len(names))
    assert f["nucleus_area"][0] == (nuclei == 1).sum()
    assert f["cell_area"][1] == (cells == 2).sum()
    assert list(f["mito_puncta"]) == [3, 0]
    np.testing.assert_allclose(f["death_nucleus_mean"], [0, 10])
    np.testing.assert_allclose(f["death_integrated"], [0, 10 * (nuclei == 2).sum()])
    assert "lyso_puncta" not in names
    sub, _ = measure_cells(image, nuclei, cells, ["mito", "death"], labels=np.array([2]))
    np.testing.assert_allclose(sub[0], features[1])


def test_puncta_ignore_flat_background(rng):
    image = rng.normal(100, 1, (40, 40))
    cells = np.ones((40, 40), np.int32)
    assert count_puncta(image, cells, 1)[0] < 5


def test_crop_count_matches_nuclei_for_any_layout():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None)
    @given(
        st.integers(20, 60),
        st.integers(20, 60),
        st.integers(0, 5),
        st.integers(4, 24),
        st.integers(0, 10_000),
    )
    def check(h, w, n, size, seed):
        rng = np.random.default_rng(seed)
        nuclei = np.zeros((h, w), np.int32)
        for k in range(1, n + 1):
            y, x = rng.integers(0, h), rng.integers(0, w)
            nuclei[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = k
        present = len(np.unique(nuclei)) - 1
        image = rng.random((2, h, w))
        padded = extract_crops(image, nuclei, size=size)
        assert padded.crops.shape == (present, 3, size, size)
        dropped = extract_crops(image, nuclei, size=size, border="drop")
        assert len(dropped.labels) == (~padded.touches_border).sum()
        for crop, k in zip(padded.crops, padded.labels, strict=True):
            assert crop[-1].sum() <= (nuclei == k).sum()

    check()
