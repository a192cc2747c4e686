import pytest

from cellsae.pathways import GMTError, read_gmt, validate_gene_sets, write_gmt


def test_gmt_round_trip_keeps_order_and_genes(tmp_path):
    sets = {"SET_B": ["G1", "G2", "G3"], "SET_A": ["G4"], "SET C": ["G5", "G1"]}
    path = write_gmt(sets, tmp_path / "sets.gmt", descriptions={"SET_B": "first set"})
    assert read_gmt(path) == sets
    assert path.read_text().splitlines()[0] == "SET_B\tfirst set\tG1\tG2\tG3"


def test_read_gmt_skips_blank_and_comment_lines_and_dedupes_genes(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("# header\n\nS1\tNA\tA\tB\tA\t\nS2\thttp://x\tC\r\n")
    assert read_gmt(path) == {"S1": ["A", "B"], "S2": ["C"]}


def test_malformed_line_names_the_line(tmp_path):
    path = tmp_path / "bad.gmt"
    path.write_text("S1\tNA\tA\tB\nS2 NA C D\n")
    with pytest.raises(GMTError, match=r"bad.gmt:2: malformed GMT line.*no tabs"):
        read_gmt(path)


def test_set_without_genes_is_malformed(tmp_path):
    path = tmp_path / "bad.gmt"
    path.write_text("S1\tNA\n")
    with pytest.raises(GMTError, match=r":1: malformed"):
        read_gmt(path)


def test_duplicate_set_names_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "dup.gmt"
    path.write_text("S1\tNA\tA\nS2\tNA\tB\nS1\tNA\tC\n")
    with pytest.raises(GMTError, match=r"dup.gmt:3: duplicate gene-set name 'S1'.*line 1"):
        read_gmt(path)


def test_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.gmt").write_text("# nothing\n")
    with pytest.raises(GMTError, match="no gene sets"):
        read_gmt(tmp_path / "empty.gmt")
    with pytest.raises(FileNotFoundError, match="GMT file not found"):
        read_gmt(tmp_path / "absent.gmt")


def test_min_size(tmp_path):
    path = write_gmt({"S1": ["A"], "S2": ["A", "B"]}, tmp_path / "s.gmt")
    with pytest.raises(GMTError, match="'S1' has 1 gene"):
        read_gmt(path, min_size=2)


def test_write_gmt_rejects_bad_sets_and_leaves_no_file(tmp_path):
    target = tmp_path / "out.gmt"
    with pytest.raises(GMTError, match="duplicate gene-set name 'S'"):
        write_gmt(validate_gene_sets([("S", ["A"]), ("S", ["B"])]), target)
    with pytest.raises(GMTError, match="empty"):
        write_gmt({"S": []}, target)
    with pytest.raises(GMTError, match="tab"):
        write_gmt({"S\t1": ["A"]}, target)
    with pytest.raises(GMTError, match="string"):
        write_gmt({"S": "ABC"}, target)
    assert list(tmp_path.iterdir()) == []
