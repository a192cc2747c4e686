from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from cellsae._utils import as_rng, atomic_path, atomic_write_text, check_finite, resolve_device
from cellsae.config import ConfigError, StrictModel, load_config


def test_as_rng():
    assert as_rng(3).integers(100) == as_rng(3).integers(100)
    g = np.random.default_rng(0)
    assert as_rng(g) is g
    with pytest.raises(ValueError):
        as_rng(-1)
    with pytest.raises(TypeError):
        as_rng(1.5)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


def test_atomic_path_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_check_finite_names_row():
    x = np.ones((4, 2))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        check_finite(x, "codes")


class _Section(StrictModel):
    k: int = 5
    metric: Literal["euclidean", "cosine"] = "euclidean"


class _Config(StrictModel):
    name: str = "run"
    knn: _Section = _Section()


def test_config_errors_name_field_value_and_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("knn:\n  k: 7\n  metric: manhattan\n")
    with pytest.raises(ConfigError) as err:
        load_config(_Config, path)
    msg = str(err.value)
    assert "knn.metric" in msg and "manhattan" in msg and "euclidean" in msg
    path.write_text("knn:\n  kk: 7\n")
    with pytest.raises(ConfigError, match="knn.kk: unknown field"):
        load_config(_Config, path)
    path.write_text("knn: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_Config, path)
    with pytest.raises(FileNotFoundError):
        load_config(_Config, tmp_path / "missing.yaml")
    path.write_text("knn:\n  k: 9\n")
    assert load_config(_Config, path).knn.k == 9
