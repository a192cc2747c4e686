"""Hostile input: no unsafe deserialisation, no path traversal, every report string escaped."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from cellsae.integrity import UnsafePathError, safe_join

SRC = Path(__file__).resolve().parent.parent / "src" / "cellsae"

UNSAFE = {
    "pickle": re.compile(r"^\s*(import pickle|from pickle|import cloudpickle|import dill)|"
                         r"pickle\.loads?\(|pd\.read_pickle\("),
    "torch.load": re.compile(r"torch\.load\("),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load without the safe loader": re.compile(r"yaml\.(load|unsafe_load|full_load)\("),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
}


def test_no_unsafe_deserialisation_in_the_package():
    found = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in UNSAFE.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(SRC)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", ["../outside", "a/../../outside", "/etc/passwd", "a\x00b",
                                  "", "C:\\Windows"])
def test_safe_join_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path / "plate", name)


def test_safe_join_refuses_a_symlink_out_of_the_folder(tmp_path):
    (tmp_path / "plate").mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", tmp_path / "plate" / "link")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(tmp_path / "plate", "link/file.tif")


def test_safe_join_keeps_names_inside(tmp_path):
    assert safe_join(tmp_path, "B/3/0") == tmp_path.resolve() / "B/3/0"
    assert safe_join(tmp_path, "B/../C/1") == tmp_path.resolve() / "B/../C/1"


def test_every_report_string_is_escaped(tmp_path):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellsae.report.html import Report

    evil = "<script>alert('x')</script>"
    report = Report(evil, subtitle=evil, figure_dir=tmp_path / "figs")
    report.section(evil).text(evil).warning(evil)
    report.kpis({evil: evil})
    report.checks([(evil, evil, evil, True)], caption=evil)
    table = pd.DataFrame({evil: [evil], "score": [1.0]}, index=pd.Index([evil], name=evil))
    report.table(table, caption=evil)
    fig, ax = plt.subplots()
    ax.set_title(evil)
    report.figure(fig, caption=evil, name=f"../../{evil}")
    plt.close(fig)
    html = report.write(tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;") >= 10
    # the figure's file name cannot climb out of the figure folder
    assert [p.parent for p in (tmp_path / "figs").rglob("*.png")] == [tmp_path / "figs"]


def test_h5sc_names_with_markup_round_trip_as_text(tmp_path):
    import anndata as ad

    from cellsae.crops import CROPS_KEY, read_h5sc, write_h5sc

    evil = "<script>alert(1)</script>"
    adata = ad.AnnData(obs=pd.DataFrame({"donor": [evil, "d1"]}, index=[evil, "c1"]),
                       obsm={CROPS_KEY: np.zeros((2, 1, 4, 4), np.float16)})
    back = read_h5sc(write_h5sc(tmp_path / "c.h5sc", adata))
    assert list(back.obs_names) == [evil, "c1"] and back.obs["donor"].iloc[0] == evil
