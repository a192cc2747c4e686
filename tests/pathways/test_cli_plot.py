import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellsae.pathways import Hierarchy, build_hierarchy, read_gmt
from cellsae.pl import module_tree

matplotlib.use("Agg")


@pytest.fixture
def expression_file(tmp_path, make_planted):
    x, genes, truth = make_planted(np.random.default_rng(2), n_cells=200, genes_per_module=5,
                                   n_background=5)
    adata = ad.AnnData(X=x, var=pd.DataFrame(index=genes),
                       obs=pd.DataFrame(index=[f"c{i}" for i in range(len(x))]))
    path = tmp_path / "expr.h5ad"
    adata.write_h5ad(path)
    return path, genes, truth


def _invoke(args):
    from cellsae.cli import app

    return CliRunner().invoke(app, args)


def test_cli_writes_hierarchy_tables_gmt_and_plot(tmp_path, expression_file):
    path, genes, truth = expression_file
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("L2_SET\tNA\t" + "\t".join(g for g, t in zip(genes, truth[2], strict=True)
                                               if t == "L2_0") + "\n")
    gene_list = tmp_path / "genes.txt"
    gene_list.write_text("\n".join(g for g, t in zip(genes, truth[1], strict=True) if t) + "\n")
    out = tmp_path / "out"
    result = _invoke(["pathways", str(path), "--out", str(out), "--resolutions", "0.4,1.8",
                      "--gmt", str(gmt), "--genes", str(gene_list), "--bootstrap", "2",
                      "--min-module-size", "3"])
    assert result.exit_code == 0, result.output
    for name in ("hierarchy.json", "modules.tsv", "genes.tsv", "modules.gmt",
                 "enrichment.tsv", "tree.png"):
        assert (out / name).exists(), name
    h = Hierarchy.load(out / "hierarchy.json")
    assert h.resolutions == [0.4, 1.8] and h.module_stability is not None
    assert set(read_gmt(out / "modules.gmt")) == set(h.all_modules())


def test_cli_bad_input_fails_before_writing(tmp_path, expression_file):
    path, _, _ = expression_file
    out = tmp_path / "out"
    result = _invoke(["pathways", str(path), "--out", str(out), "--resolutions", "1.0,0.5"])
    assert result.exit_code != 0 and "strictly increasing" in str(result.exception)
    bad = tmp_path / "bad.gmt"
    bad.write_text("S1 NA A B\n")
    result = _invoke(["pathways", str(path), "--out", str(out), "--gmt", str(bad)])
    assert result.exit_code != 0 and "malformed GMT line" in str(result.exception)
    genes = tmp_path / "genes.txt"
    genes.write_text("G0000\nNOPE\n")
    result = _invoke(["pathways", str(path), "--out", str(out), "--genes", str(genes),
                      "--resolutions", "1.0"])
    assert result.exit_code != 0 and "NOPE" in str(result.exception)
    assert not out.exists()


def test_module_tree_returns_a_figure_with_a_box_per_module():
    coarse = np.array([0, 0, 0, 0, 1, 1, 1, -1])
    fine = np.array([0, 0, 1, 1, 2, 2, -1, -1])
    h = build_hierarchy([coarse, fine], [f"g{i}" for i in range(8)], [0.5, 1.0])
    fig = module_tree(h)
    ax = fig.axes[0]
    assert len(ax.patches) == sum(h.n_modules)
    labels = " ".join(t.get_text() for t in ax.texts)
    assert "M1.1" in labels and "2 genes" in labels
    with pytest.raises(ValueError, match="no modules"):
        module_tree(build_hierarchy([np.full(3, -1)], ["a", "b", "c"], [1.0]))


@pytest.mark.parametrize("case, match", [
    ("duplicate_sets", "duplicate gene-set name 'S1'"),
    ("too_few_genes", "fewer than the minimum module size"),
    ("decreasing_resolutions", "strictly increasing"),
])
def test_cli_bad_input_names_the_problem(tmp_path, expression_file, case, match):
    """Each of the issue's bad inputs stops the CLI before any output, with the reason."""
    path, genes, _ = expression_file
    out = tmp_path / "out"
    args = ["pathways", str(path), "--out", str(out)]
    if case == "duplicate_sets":
        gmt = tmp_path / "dup.gmt"
        gmt.write_text(f"S1\tNA\t{genes[0]}\t{genes[1]}\nS1\tNA\t{genes[2]}\t{genes[3]}\n")
        args += ["--gmt", str(gmt), "--resolutions", "1.0"]
    elif case == "too_few_genes":
        listed = tmp_path / "genes.txt"
        listed.write_text("\n".join(genes[:3]) + "\n")
        args += ["--genes", str(listed), "--min-module-size", "5", "--resolutions", "1.0"]
    else:
        args += ["--resolutions", "0.5,0.5"]
    result = _invoke(args)
    assert result.exit_code != 0
    assert match in str(result.exception) + result.output
    assert not out.exists()
