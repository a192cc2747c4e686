from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellsae.crops import CropStore, read_h5sc
from cellsae.images import pipeline
from cellsae.images.pipeline import ingest
from cellsae.metrics.segmentation import detection_f1

SETTINGS = {"crop_size": 24, "n_workers": 0, "calibration_fields": 4}


def _no_output_left(out):
    folder = out.parent
    return not out.exists() and not [p for p in folder.glob(f".{out.name}*")]


def test_end_to_end_recovers_positions_and_death(toy_plate, tmp_path):
    out = tmp_path / "out" / "cells.h5sc"
    result = ingest(toy_plate["plate_dir"].parent, out, platemap=toy_plate["platemap"], **SETTINGS)
    adata = read_h5sc(out)
    truth = pd.read_csv(toy_plate["truth"])
    assert result.n_cells == adata.n_obs == len(truth)
    assert adata.uns["single_cell_images"]["channel_names"].tolist() == [
        "mito",
        "lyso",
        "nucleus",
        "death",
        "mask",
    ]
    crops = CropStore(out)[np.arange(adata.n_obs)]
    assert crops.shape == (adata.n_obs, 5, 24, 24) and np.isfinite(crops).all()
    assert set(np.unique(crops[:, -1])) <= {0.0, 1.0}
    names = list(adata.uns["X_measure_names"])
    assert adata.obsm["X_measure"].shape == (adata.n_obs, len(names))
    assert {"nucleus_area", "mito_puncta", "lyso_puncta", "death_nucleus_mean"} <= set(names)
    assert {
        "plate",
        "well",
        "field",
        "x",
        "y",
        "donor",
        "genotype",
        "dead",
        "touches_border",
    } <= set(adata.obs.columns)
    from scipy.spatial import cKDTree

    correct = []
    for (well, field), group in truth.groupby(["well", "field"]):
        obs = adata.obs[(adata.obs["well"] == well) & (adata.obs["field"] == field)]
        xy_true, xy = group[["x", "y"]].to_numpy(), obs[["x", "y"]].to_numpy()
        assert detection_f1(xy_true, xy, max_distance=3).f1 == 1.0
        _, nearest = cKDTree(xy_true).query(xy)
        correct += list(obs["dead"].to_numpy() == group["dead"].to_numpy()[nearest])
    assert np.mean(correct) >= 0.9
    rates = adata.uns["death_rates_well"]
    assert set(rates["well"]) == {"B02", "B03"} and rates["n_cells"].sum() == adata.n_obs
    assert len(adata.uns["qc"]) == 4 and (adata.uns["qc"]["status"] == "ok").all()
    assert (out.parent / "cells.qc.csv").exists()
    assert not (out.parent / "cells.h5sc.parts").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        ingest(toy_plate["plate_dir"], out, platemap=toy_plate["platemap"], **SETTINGS)


def test_worker_processes_give_the_same_cells(toy_plate, tmp_path):
    a = ingest(toy_plate["plate_dir"], tmp_path / "a.h5sc", **{**SETTINGS, "n_workers": 2})
    b = ingest(toy_plate["plate_dir"], tmp_path / "b.h5sc", **SETTINGS)
    np.testing.assert_array_equal(
        CropStore(tmp_path / "a.h5sc")[:], CropStore(tmp_path / "b.h5sc")[:]
    )
    assert a.n_cells == b.n_cells


def test_interrupted_run_leaves_no_output_and_resumes(toy_plate, tmp_path, monkeypatch):
    out = tmp_path / "cells.h5sc"
    calls = []
    original = pipeline.process_field

    def flaky(task):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(task["field"])
        return original(task)

    monkeypatch.setattr(pipeline, "process_field", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest(toy_plate["plate_dir"], out, **SETTINGS)
    assert _no_output_left(out)
    assert len(list((tmp_path / "cells.h5sc.parts" / "plate01").glob("*.npz"))) == 3  # +calib
    calls.clear()
    monkeypatch.setattr(
        pipeline, "process_field", lambda task: (calls.append(1), original(task))[1]
    )
    result = ingest(toy_plate["plate_dir"], out, **SETTINGS)
    assert len(calls) == 2 and result.n_fields == 4 and out.exists()
    # different settings must not silently reuse finished fields
    monkeypatch.setattr(pipeline, "process_field", flaky)
    calls[:] = [0, 0]
    with pytest.raises(KeyboardInterrupt):
        ingest(toy_plate["plate_dir"], tmp_path / "c.h5sc", **SETTINGS)
    with pytest.raises(ValueError, match="different settings"):
        ingest(toy_plate["plate_dir"], tmp_path / "c.h5sc", **{**SETTINGS, "crop_size": 32})


def test_bad_files_are_skipped_and_recorded(toy_plate, tmp_path):
    folder = toy_plate["plate_dir"]
    corrupt = folder / "r02c02f01p01-ch3sk1fk1fl1.tiff"
    corrupt.write_bytes(corrupt.read_bytes()[:64])  # truncated
    (folder / "r02c02f02p02-ch1sk1fk1fl1.tiff").unlink()  # missing z-plane
    tifffile.imwrite(folder / "r02c03f01p01-ch4sk1fk1fl1.tiff", np.zeros((40, 40), np.uint16))
    out = tmp_path / "cells.h5sc"
    result = ingest(folder, out, platemap=toy_plate["platemap"], **SETTINGS)
    qc = result.qc.set_index(["well", "field"])
    assert qc.loc[("B02", 1), "status"] == "skipped"
    assert "r02c02f01p01-ch3sk1fk1fl1.tiff" in qc.loc[("B02", 1), "reason"]
    assert "z-plane" in qc.loc[("B02", 2), "reason"]
    assert "r02c03f01p01-ch4" in qc.loc[("B03", 1), "reason"]
    assert qc.loc[("B03", 2), "status"] == "ok"
    assert read_h5sc(out).obs["well"].astype(str).eq("B03").all()
    table = pd.read_csv(tmp_path / "cells.qc.csv")
    assert (table["status"] == "skipped").sum() == 3


def test_unmapped_wells_skip_or_stop(toy_plate, tmp_path):
    platemap = tmp_path / "map.csv"
    platemap.write_text("well,donor,genotype\nB02,d1,WT\n")
    result = ingest(toy_plate["plate_dir"], tmp_path / "a.h5sc", platemap=platemap, **SETTINGS)
    skipped = result.qc[result.qc["well"] == "B03"]
    assert (skipped["status"] == "skipped").all()
    assert skipped["reason"].str.contains("not in the plate map").all()
    out = tmp_path / "b.h5sc"
    with pytest.raises(ValueError, match=r"\['B03'\].*not in the plate map"):
        ingest(toy_plate["plate_dir"], out, platemap=platemap, unmapped_wells="error", **SETTINGS)
    assert _no_output_left(out) and not (tmp_path / "b.h5sc.parts").exists()


def test_empty_field_is_flagged_not_fatal(toy_plate, tmp_path):
    folder = toy_plate["plate_dir"]
    rng = np.random.default_rng(5)
    for path in folder.glob("r02c03f02*.tiff"):
        image = tifffile.imread(path)
        tifffile.imwrite(path, rng.normal(200, 20, image.shape).astype(image.dtype))
    result = ingest(folder, tmp_path / "cells.h5sc", **SETTINGS)
    row = result.qc.set_index(["well", "field"]).loc[("B03", 2)]
    assert row["status"] == "qc_failed" and "empty" in row["reason"]
    assert result.n_cells > 0


def test_whole_run_problems_stop_before_output(toy_plate, tmp_path):
    out = tmp_path / "cells.h5sc"
    with pytest.raises(ValueError, match=r"channel\(s\) \[7\].*not in the files"):
        ingest(toy_plate["plate_dir"], out, channels="1=nucleus,7=death", **SETTINGS)
    with pytest.raises(ValueError, match="nucleus channel 'nucleus' is not in the channel map"):
        ingest(toy_plate["plate_dir"], out, channels="3=mito", **SETTINGS)
    with pytest.raises(FileNotFoundError, match="plate map"):
        ingest(toy_plate["plate_dir"], out, platemap=tmp_path / "nope.csv", **SETTINGS)
    from cellsae.config import ConfigError

    with pytest.raises(ConfigError, match="crop_size"):
        ingest(toy_plate["plate_dir"], out, crop_size=2)
    with pytest.raises(ConfigError, match="unknown field"):
        ingest(toy_plate["plate_dir"], out, crop_sise=32)
    assert _no_output_left(out)


def test_cli_ingest(toy_plate, tmp_path):
    from typer.testing import CliRunner

    from cellsae.cli import app

    out = tmp_path / "cli.h5sc"
    args = [
        "ingest",
        str(toy_plate["plate_dir"].parent),
        "--out",
        str(out),
        "--crop-size",
        "24",
        "--channels",
        "1=nucleus,2=death,3=mito,4=lyso",
        "--workers",
        "0",
        "--border",
        "drop",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    adata = read_h5sc(out)
    assert adata.uns["single_cell_images"]["channel_names"][0] == "nucleus"
    assert not adata.obs["touches_border"].any()
    assert "donor" in adata.obs  # platemap.csv beside the plates is picked up
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_per_field_ome_tiff_stacks(tmp_path):
    from cellsae.images.toy import make_toy_field

    plate = tmp_path / "stacks" / "p1"
    plate.mkdir(parents=True)
    n_true = 0
    for i, well in enumerate(["B02", "C05"]):
        stack, truth = make_toy_field(96, 5, n_planes=2, seed=i)
        n_true += len(truth)
        tifffile.imwrite(plate / f"{well}_f1.ome.tif", stack, metadata={"axes": "CZYX"})
    result = ingest(
        plate,
        tmp_path / "s.h5sc",
        pattern="stack",
        channels="1=nucleus,2=death,3=mito,4=lyso",
        **SETTINGS,
    )
    assert result.n_cells == n_true
    assert result.channel_names == ["nucleus", "death", "mito", "lyso", "mask"]


def test_ome_zarr_hcs_plate(tmp_path):
    import zarr

    from cellsae.images.io import OmeZarrPlate, discover_plates
    from cellsae.images.toy import make_toy_field

    path = tmp_path / "p7.zarr"
    root = zarr.open_group(str(path), mode="w")
    wells, n_true = [], 0
    for i, (row, col) in enumerate([("B", "2"), ("C", "4")]):
        well = root.require_group(f"{row}/{col}")
        images = []
        for f in range(2):
            stack, truth = make_toy_field(96, 4, n_planes=2, seed=10 * i + f)
            n_true += len(truth)
            image = well.require_group(str(f))
            image.create_array("0", data=stack)
            image.attrs["multiscales"] = [
                {"axes": [{"name": a} for a in "czyx"], "datasets": [{"path": "0"}]}
            ]
            images.append({"path": str(f)})
        well.attrs["well"] = {"images": images}
        wells.append({"path": f"{row}/{col}"})
    root.attrs["plate"] = {"wells": wells}
    plates = discover_plates(tmp_path)
    assert len(plates) == 1 and isinstance(plates[0], OmeZarrPlate)
    assert plates[0].fields() == [("B02", 1), ("B02", 2), ("C04", 1), ("C04", 2)]
    result = ingest(
        path, tmp_path / "z.h5sc", channels="1=nucleus,2=death,3=mito,4=lyso", **SETTINGS
    )
    assert result.n_cells == n_true
    assert set(read_h5sc(tmp_path / "z.h5sc").obs["plate"]) == {"p7"}


def test_field_with_other_shape_than_plate_is_skipped(toy_plate, tmp_path):
    folder = toy_plate["plate_dir"]
    for path in folder.glob("r02c03f02*.tiff"):
        tifffile.imwrite(path, tifffile.imread(path)[:64, :64])
    result = ingest(
        folder, tmp_path / "cells.h5sc", calibration_fields=2, crop_size=24, n_workers=0, seed=3
    )
    row = result.qc.set_index(["well", "field"]).loc[("B03", 2)]
    assert row["status"] == "skipped"
    assert "r02c03f02" in row["reason"] and "differs from the plate" in row["reason"]


def test_field_missing_a_channel_is_skipped_with_the_expected_file(toy_plate, tmp_path):
    folder = toy_plate["plate_dir"]
    for path in folder.glob("r02c02f01p*-ch2sk1fk1fl1.tiff"):
        path.unlink()
    result = ingest(folder, tmp_path / "cells.h5sc", **SETTINGS)
    row = result.qc.set_index(["well", "field"]).loc[("B02", 1)]
    assert row["status"] == "skipped"
    assert "channel 2 is missing" in row["reason"]
    assert "r02c02f01p01-ch2sk1fk1fl1.tiff" in row["reason"]
    assert result.n_fields_skipped == 1
