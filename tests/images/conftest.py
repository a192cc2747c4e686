from __future__ import annotations

import pytest

from cellsae.images.toy import make_toy_plate


@pytest.fixture
def toy_plate(tmp_path):
    """A 2-well x 2-field plate of 96x96 fields, 6 cells each, in the phenix layout."""
    return make_toy_plate(
        tmp_path / "plates",
        wells=("B02", "B03"),
        n_fields=2,
        size=96,
        n_cells=6,
        n_planes=2,
        seed=1,
    )
