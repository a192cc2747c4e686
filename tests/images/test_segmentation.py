from __future__ import annotations

import numpy as np
import pytest

from cellsae.images import segmentation
from cellsae.images.segmentation import (
    available_backends,
    register_backend,
    segment_cells,
    segment_nuclei,
)
from cellsae.images.toy import make_toy_field
from cellsae.metrics.segmentation import detection_f1, match_instances


def _discs(centres, radius, shape=(80, 80)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (y, x) in enumerate(centres, 1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = k
    return labels


def test_separate_nuclei_are_found_exactly(rng):
    truth = _discs([(15, 15), (15, 60), (60, 20), (55, 60)], 7)
    image = (truth > 0) * 800.0 + 100 + rng.normal(0, 10, truth.shape)
    result = match_instances(truth, segment_nuclei(image))
    assert result.f1 == 1.0 and result.mean_matched_iou > 0.8


def test_touching_nuclei_are_split(rng):
    truth = _discs([(40, 28), (40, 41)], 7)  # centres 13 px apart, radius 7: they touch
    image = (truth > 0) * 800.0 + 100 + rng.normal(0, 10, truth.shape)
    assert match_instances(truth, segment_nuclei(image, diameter=14)).tp == 2


def test_toy_field_detection():
    stack, truth = make_toy_field(128, 8, seed=3)
    labels = segment_nuclei(stack[0].max(0))
    from cellsae.images.cells import nucleus_centres

    yx = nucleus_centres(labels)
    assert detection_f1(truth[["y", "x"]].to_numpy(), yx, max_distance=4).f1 == 1.0


def test_blank_and_constant_images_give_no_nuclei(rng):
    assert segment_nuclei(np.zeros((32, 32))).max() == 0
    assert segment_nuclei(np.full((32, 32), 7.0)).max() == 0


def test_input_validation():
    with pytest.raises(ValueError, match="2-D"):
        segment_nuclei(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="unknown segmentation backend"):
        segment_nuclei(np.zeros((8, 8)), backend="nope")
    with pytest.raises(TypeError, match="unknown classical segmentation parameter"):
        segment_nuclei(np.zeros((8, 8)), diamter=3)
    with pytest.raises(ValueError, match="NaN"):
        segment_nuclei(np.full((8, 8), np.nan))


def test_custom_backend_and_optional_packages(monkeypatch):
    monkeypatch.setattr(segmentation, "_BACKENDS", dict(segmentation._BACKENDS))
    register_backend("half", lambda image, **kw: (image > image.mean()).astype(np.int32))
    assert "half" in available_backends() and "cellpose" in available_backends()
    image = np.zeros((8, 8))
    image[2:4, 2:4] = 1
    assert segment_nuclei(image, backend="half").sum() == 4
    register_backend("wrong", lambda image: np.zeros((3, 3)))
    with pytest.raises(ValueError, match="returned labels of shape"):
        segment_nuclei(image, backend="wrong")
    import importlib.util

    if importlib.util.find_spec("cellpose") is None:
        with pytest.raises(ImportError, match="pip install cellpose"):
            segment_nuclei(image, backend="cellpose")


def test_cells_contain_their_nucleus(rng):
    nuclei = _discs([(20, 20), (20, 50), (55, 35)], 5)
    yy, xx = np.mgrid[:80, :80]
    cyto = sum(
        np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 150) for y, x in [(20, 20), (20, 50), (55, 35)]
    )
    cells = segment_cells(nuclei, cyto + rng.normal(0, 0.01, cyto.shape))
    for k in (1, 2, 3):
        assert np.all(cells[nuclei == k] == k)
        assert (cells == k).sum() > (nuclei == k).sum()
    ring = segment_cells(nuclei, None, max_distance=3)
    assert (ring == 1).sum() > (nuclei == 1).sum()
    with pytest.raises(ValueError, match="differs from nuclei"):
        segment_cells(nuclei, np.zeros((10, 10)))


def test_default_reaches_target_on_annotated_nuclei(shared_data):
    import tifffile

    folder = shared_data / "nuclei_groundtruth"
    if not (folder / "stardist_img2d.tif").exists():
        pytest.skip("annotated nuclei not found")
    image = tifffile.imread(folder / "stardist_img2d.tif")
    truth = tifffile.imread(folder / "stardist_mask2d.tif")
    assert match_instances(truth, segment_nuclei(image)).f1 >= 0.80


def test_in_memory_field_core():
    from cellsae.images import ingest_field_arrays

    stack, truth = make_toy_field(96, 5, seed=2)
    image = stack.max(1).astype(np.float32)
    out = ingest_field_arrays(image, ["nucleus", "death", "mito", "lyso"], crop_size=16)
    assert out["crops"].crops.shape == (len(truth), 5, 16, 16)
    assert out["features"].shape == (len(truth), len(out["feature_names"]))
    with pytest.raises(ValueError, match="nucleus channel"):
        ingest_field_arrays(image, ["a", "b", "c", "d"])
