from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellsae.images.io import (
    CorruptImageError,
    FilenamePattern,
    MissingImageError,
    PlateSource,
    ShapeMismatchError,
    discover_plates,
    parse_channel_map,
    parse_well,
    read_image,
    read_platemap,
    to_czyx,
    well_name,
)


def test_well_names_round_trip():
    assert well_name(2, 3) == "B03"
    assert parse_well("b3") == (2, 3)
    assert well_name(*parse_well("AA12")) == "AA12"
    with pytest.raises(ValueError, match="not a well name"):
        parse_well("3B")


@pytest.mark.parametrize(
    "spec",
    [
        "phenix",
        "r{row}c{col}f{field}p{plane}-ch{channel}sk1fk1fl1.tiff",
        "r{row:02d}c{col:02d}f{field:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff",
    ],
)
def test_phenix_names_parse(spec):
    pattern = FilenamePattern.from_spec(spec)
    got = pattern.match("r02c03f04p05-ch2sk1fk1fl1.tiff")
    assert got == {"row": 2, "col": 3, "well": "B03", "field": 4, "channel": 2, "plane": 5}
    assert pattern.match("r02c03f04p05-ch2sk1fk1fl1.png") is None


def test_other_presets_parse():
    mx = FilenamePattern.from_spec("metaxpress").match("plate_B03_s2_w1.tif")
    assert (mx["well"], mx["field"], mx["channel"], mx["plane"]) == ("B03", 2, 1, 1)
    cv = FilenamePattern.from_spec("cellvoyager").match("x_C10_T0001F003L01A01Z02C04.tif")
    assert (cv["well"], cv["field"], cv["channel"], cv["plane"]) == ("C10", 3, 4, 2)


def test_bad_patterns_are_explained():
    with pytest.raises(ValueError, match="unknown placeholder"):
        FilenamePattern.from_spec("{wel}_{field}.tif")
    with pytest.raises(ValueError, match="identify the well"):
        FilenamePattern.from_spec(r"(?P<field>\d+)\.tif")
    with pytest.raises(ValueError, match="neither a preset"):
        FilenamePattern.from_spec("nonsense")


def test_channel_map_forms():
    assert parse_channel_map("3=mito,4=lyso,1=nucleus,2=death", [1, 2, 3, 4]) == {
        3: "mito",
        4: "lyso",
        1: "nucleus",
        2: "death",
    }
    assert parse_channel_map("nucleus,death", [1, 2, 3]) == {1: "nucleus", 2: "death"}
    assert parse_channel_map(["a", "", "c"], [1, 2, 3]) == {1: "a", 3: "c"}
    with pytest.raises(ValueError, match="not in the files"):
        parse_channel_map("5=mito", [1, 2])
    with pytest.raises(ValueError, match="unique"):
        parse_channel_map("1=a,2=a")
    with pytest.raises(ValueError, match="mixes"):
        parse_channel_map("1=a,b")


def test_platemap_reading(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("plate,well,donor\np1,b3,d1\np1,C10,d2\n")
    table = read_platemap(path)
    assert list(table["well"]) == ["B03", "C10"] and list(table["row"]) == [2, 3]
    path.write_text("donor\nd1\n")
    with pytest.raises(ValueError, match="'well' column"):
        read_platemap(path)
    path.write_text("well,donor\nB03,d1\nB3,d2\n")
    with pytest.raises(ValueError, match="more than once"):
        read_platemap(path)
    with pytest.raises(FileNotFoundError, match="plate map"):
        read_platemap(tmp_path / "absent.csv")


def test_plate_source_reads_one_field_in_channel_order(toy_plate):
    source = PlateSource(toy_plate["plate_dir"])
    assert source.channels == [1, 2, 3, 4] and source.planes == [1, 2]
    assert source.fields() == [("B02", 1), ("B02", 2), ("B03", 1), ("B03", 2)]
    stack = source.read_field("B03", 2, [3, 1])
    assert stack.shape == (2, 2, 96, 96) and stack.dtype == np.uint16
    ref = tifffile.imread(toy_plate["plate_dir"] / "r02c03f02p02-ch1sk1fk1fl1.tiff")
    np.testing.assert_array_equal(stack[1, 1], ref)


def test_missing_channel_and_plane_name_the_file(toy_plate):
    folder = toy_plate["plate_dir"]
    (folder / "r02c02f01p02-ch4sk1fk1fl1.tiff").unlink()
    (folder / "r02c03f01p01-ch2sk1fk1fl1.tiff").unlink()
    (folder / "r02c03f01p02-ch2sk1fk1fl1.tiff").unlink()
    source = PlateSource(folder)
    with pytest.raises(MissingImageError, match=r"z-plane\(s\) \[2\].*r02c02f01p02-ch4"):
        source.read_field("B02", 1, [1, 4])
    with pytest.raises(MissingImageError, match="channel 2 is missing.*r02c03f01p01-ch2"):
        source.read_field("B03", 1, [1, 2])


def test_corrupt_and_mismatched_files_name_the_file(toy_plate):
    folder = toy_plate["plate_dir"]
    bad = folder / "r02c02f01p01-ch3sk1fk1fl1.tiff"
    bad.write_bytes(bad.read_bytes()[:100])
    tifffile.imwrite(folder / "r02c02f02p01-ch2sk1fk1fl1.tiff", np.zeros((50, 60), np.uint16))
    source = PlateSource(folder)
    with pytest.raises(CorruptImageError, match="r02c02f01p01-ch3"):
        source.read_field("B02", 1, [1, 3])
    with pytest.raises(ShapeMismatchError, match="r02c02f02p01-ch2"):
        source.read_field("B02", 2, [1, 2])


def test_stack_files_ome_tiff_and_ome_zarr(tmp_path):
    import zarr

    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (3, 2, 16, 20)).astype(np.uint16)  # C, Z, Y, X
    plate = tmp_path / "p1"
    plate.mkdir()
    tifffile.imwrite(plate / "B02_f1.ome.tif", data, metadata={"axes": "CZYX"})
    group = zarr.open_group(str(plate / "B02_f2.zarr"), mode="w")
    group.create_array("0", data=data[:, :, ::-1])
    group.attrs["multiscales"] = [
        {"axes": [{"name": n} for n in "czyx"], "datasets": [{"path": "0"}]}
    ]
    source = PlateSource(plate, pattern="stack")
    assert source.fields() == [("B02", 1), ("B02", 2)]
    np.testing.assert_array_equal(source.read_field("B02", 1), data)
    np.testing.assert_array_equal(source.read_field("B02", 2, [2, 0]), data[[2, 0], :, ::-1])
    arr, axes = read_image(plate / "B02_f2.zarr")
    assert axes == "CZYX" and arr.shape == data.shape
    assert to_czyx(data[0, 0], "YX").shape == (1, 1, 16, 20)


def test_discover_plates_and_clear_error(tmp_path, toy_plate):
    plates = discover_plates(toy_plate["plate_dir"].parent)
    assert [p.name for p in plates] == ["plate01"]
    assert len(discover_plates(toy_plate["plate_dir"])) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--pattern"):
        discover_plates(tmp_path / "empty")
    assert isinstance(pd.read_csv(toy_plate["truth"]), pd.DataFrame)
