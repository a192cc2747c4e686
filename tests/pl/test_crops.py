from __future__ import annotations

import numpy as np
import pytest

from cellsae.pl import composite, crops_gallery


def test_composite_range_and_errors(rng):
    crops = rng.random((5, 3, 8, 8))
    rgb = composite(crops, ["mito", "lyso", "nucleus"])
    assert rgb.shape == (5, 8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    with pytest.raises(ValueError, match="not found"):
        composite(crops, ["mito", "lyso", "nucleus"], channels=["death"])


def test_gallery_rows_per_group(rng):
    crops = rng.random((20, 4, 16, 16))
    groups = np.repeat(["a", "b"], 10)
    fig = crops_gallery(crops, groups, n_per_group=4)
    assert len(fig.axes) == 8
    with pytest.raises(ValueError, match="labels"):
        crops_gallery(crops, groups[:5])
