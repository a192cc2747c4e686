from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CELLSAE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$CELLSAE_SHARED_DATA``."""
    return Path(os.environ.get("CELLSAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.exists():
        pytest.skip(f"reference data folder not found at {path} (see shared/data/README.md)")
    return path
