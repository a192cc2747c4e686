import json

import numpy as np
import pandas as pd
import pytest

from cellsae.pathways import Hierarchy, build_hierarchy, nesting_consistency

GENES = [f"g{i}" for i in range(10)]
COARSE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
FINE = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])


def test_nesting_consistency_perfect_and_broken():
    assert nesting_consistency(COARSE, FINE) == 1.0
    broken = FINE.copy()
    broken[5] = 2  # gene 5 now sits in a fine module whose parent is coarse module 1
    assert nesting_consistency(COARSE, broken) == pytest.approx(0.9)
    unassigned = COARSE.copy()
    unassigned[0] = -1  # assigned below but not above: not nested
    assert nesting_consistency(unassigned, FINE) == pytest.approx(0.9)
    assert np.isnan(nesting_consistency(COARSE, np.full(10, -1)))
    with pytest.raises(ValueError, match="differ in shape"):
        nesting_consistency(COARSE, FINE[:5])


def test_build_hierarchy_parents_and_tree_names():
    fine = FINE.copy()
    fine[9] = -1
    h = build_hierarchy([COARSE, fine], GENES, [0.5, 2.0])
    assert h.n_levels == 2 and h.n_modules == [2, 4]
    assert h.module_names[0] == ["M1", "M2"]
    modules = h.modules(2)
    assert modules["M1.1"] == ["g0", "g1", "g2"]
    assert modules["M2.1"] == ["g6", "g7"]  # the larger child of M2 comes first
    assert modules["M2.2"] == ["g8"]
    assert h.parent_of("M2.2") == "M2" and h.parent_of("M1") is None
    assert h.nesting_consistency == 1.0
    table = h.gene_table()
    assert table.loc["g9", "level_2"] == "" and table.loc["g9", "level_1"] == "M2"
    modules_table = h.module_table()
    assert list(modules_table["size"]) == [6, 4, 3, 3, 2, 1]
    with pytest.raises(KeyError, match="no module named"):
        h.parent_of("M9")
    with pytest.raises(ValueError, match="level must be"):
        h.modules(3)


def test_build_hierarchy_bad_input():
    with pytest.raises(ValueError, match="strictly increasing"):
        build_hierarchy([COARSE, FINE], GENES, [2.0, 0.5])
    with pytest.raises(ValueError, match="2 partitions but 1 resolutions"):
        build_hierarchy([COARSE, FINE], GENES, [0.5])
    with pytest.raises(ValueError, match="unique"):
        build_hierarchy([COARSE], ["a"] * 10, [0.5])
    with pytest.raises(ValueError, match="shape"):
        build_hierarchy([COARSE[:5]], GENES, [0.5])


def test_json_round_trip_with_stability_and_enrichment(tmp_path):
    h = build_hierarchy([COARSE, FINE], GENES, [0.5, 2.0], params={"objective": "modularity"})
    h.module_stability = [np.array([1.0, 0.75]), np.array([1.0, 0.5, 0.9, 0.8])]
    h.gene_stability = np.linspace(0, 1, 20).reshape(2, 10)
    h = h.enrich({"SET_A": ["g0", "g1", "g2"], "SET_B": ["g6", "g7", "g8", "g9"]})
    path = h.save(tmp_path / "h.json")
    data = json.loads(path.read_text())
    assert data["format"] == "cellsae.pathways.Hierarchy" and data["n_modules"] == [2, 4]
    level2 = data["levels"][1]
    assert level2["modules"][0]["parent"] == "M1" and level2["nesting_consistency"] == 1.0
    assert {"name", "genes", "parent", "size", "stability", "enrichment"} <= set(
        level2["modules"][0])
    back = Hierarchy.load(path)
    np.testing.assert_array_equal(back.labels, h.labels)
    assert back.module_names == h.module_names
    assert [list(p) for p in back.parents] == [list(p) for p in h.parents]
    np.testing.assert_allclose(back.module_stability[1], h.module_stability[1])
    np.testing.assert_allclose(back.gene_stability, h.gene_stability)
    assert back.params == {"objective": "modularity"}
    pd.testing.assert_frame_equal(
        back.enrichment[["level", "module", "term", "pvalue"]].reset_index(drop=True),
        h.enrichment[["level", "module", "term", "pvalue"]].reset_index(drop=True))
    assert back.module_table()["top_term"].iloc[0] == "SET_A"
    small = json.loads(h.save(tmp_path / "small.json", max_terms=1).read_text())
    assert all(len(m["enrichment"]) <= 1 for lv in small["levels"] for m in lv["modules"])


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a cellsae hierarchy"):
        Hierarchy.load(tmp_path / "x.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Hierarchy.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('{"format": "cellsae.pathways.Hierarchy", '
                                          '"version": 1, "genes": ["a"], "levels": [{}]}')
    with pytest.raises(ValueError, match="malformed"):
        Hierarchy.load(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        Hierarchy.load(tmp_path / "absent.json")
