"""Bad and hostile input across the public entry points.

Every case in :data:`CASES` feeds one bad input to one entry point (read_h5sc, ingest,
embed extract, sae.train / encode / load, tl.gw_map, tl.gene_modules, config loading) and
expects either a specific exception whose message names the problem, or (for a bad field
in a plate) a skip recorded in the QC table. Afterwards no output file and no temporary
file may be left. ``benchmarks/scale.py`` runs the same cases and counts them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp)`` must raise ``error`` with ``match`` in its message (or,
    with ``error=None``, return normally having recorded a skip that it checks itself);
    ``outputs`` (relative to tmp) must not exist afterwards."""

    name: str
    run: Callable[[Path], None]
    error: type | tuple | None
    match: str = ""
    outputs: tuple[str, ...] = ()


CASES: list[Case] = []


def case(error, match="", outputs=()):
    def register(fn):
        CASES.append(Case(fn.__name__, fn, error, match, tuple(outputs)))
        return fn
    return register


def check_case(c: Case, tmp: Path) -> None:
    """Run a case; raise AssertionError unless it is handled as specified."""
    tmp.mkdir(parents=True, exist_ok=True)
    if c.error is None:
        c.run(tmp)
    else:
        try:
            c.run(tmp)
        except c.error as err:
            assert re.search(c.match, str(err), re.IGNORECASE), \
                f"{c.name}: message {str(err)[:300]!r} lacks {c.match!r}"
        except Exception as err:  # noqa: BLE001 - report which unexpected error it was
            raise AssertionError(f"{c.name}: expected {c.error}, got {type(err).__name__}: "
                                 f"{str(err)[:300]}") from None
        else:
            raise AssertionError(f"{c.name}: no error was raised")
    for out in c.outputs:
        assert not (tmp / out).exists(), f"{c.name}: output '{out}' was left behind"
        stray = [p.name for p in (tmp / out).parent.glob(f".{Path(out).name}*")]
        assert not stray, f"{c.name}: temporary files left behind: {stray}"


# -- fixtures built inside the cases (each case is self-contained) --------------------------


def _crops_adata(n=6, c=2, s=8, seed=0):
    from cellsae.crops import CROPS_KEY

    rng = np.random.default_rng(seed)
    return ad.AnnData(obs=pd.DataFrame({"donor": ["d0"] * n}, index=[f"c{i}" for i in range(n)]),
                      obsm={CROPS_KEY: rng.normal(size=(n, c, s, s)).astype(np.float16)})


def _h5sc(tmp: Path, name="cells.h5sc", **kw) -> Path:
    from cellsae.crops import write_h5sc

    return write_h5sc(tmp / name, _crops_adata(**kw))


def _encoder(channels=2):
    import torch

    from cellsae.embed import ResNetEncoder

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ResNetEncoder(channels, widths=(4, 6), blocks=(1, 1), strides=(1, 2)).eval()


def _x(n=64, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


SAE_SMALL = dict(arch="topk", d_sae=16, k=2, n_steps=3, batch_size=16, device="cpu",
                 progress=False)


def _flip_byte(path: Path, where: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _plate(tmp: Path, wells=("B02", "B03"), n_fields=1):
    from cellsae.images.toy import make_toy_plate

    return make_toy_plate(tmp / "plates", wells=wells, n_fields=n_fields, size=96, n_cells=6,
                          n_planes=1, seed=1)


INGEST = {"crop_size": 16, "n_workers": 0, "calibration_fields": 2}


def _ingest(plate_dir, tmp: Path, **kw):
    from cellsae.images import ingest

    return ingest(plate_dir, tmp / "out.h5sc", **{**INGEST, **kw})


# -- crops files ----------------------------------------------------------------------------

from cellsae.crops import CropFormatError  # noqa: E402
from cellsae.integrity import IntegrityError, UnsafePathError  # noqa: E402


@case(CropFormatError, "truncated or corrupt")
def h5sc_truncated(tmp):
    from cellsae.crops import read_h5sc

    path = _h5sc(tmp)
    _truncate(path)
    read_h5sc(path)


@case(CropFormatError, "not a readable HDF5")
def h5sc_not_hdf5(tmp):
    from cellsae.crops import read_h5sc

    (tmp / "x.h5sc").write_bytes(b"\x89PNG not an hdf5 file" * 10)
    read_h5sc(tmp / "x.h5sc")


@case(CropFormatError, "not a crops file")
def h5sc_without_crops(tmp):
    from cellsae.crops import read_h5sc

    ad.AnnData(np.zeros((3, 2), np.float32)).write_h5ad(tmp / "x.h5sc")
    read_h5sc(tmp / "x.h5sc")


@case(ValueError, "must be unique", outputs=("dup.h5sc",))
def h5sc_duplicated_cell_names(tmp):
    from cellsae.crops import write_h5sc

    adata = _crops_adata()
    adata.obs_names = ["cell"] * adata.n_obs
    write_h5sc(tmp / "dup.h5sc", adata)


@case(ValueError, "not valid UTF-8", outputs=("u.h5sc",))
def h5sc_non_utf8_text(tmp):
    from cellsae.crops import write_h5sc

    adata = _crops_adata()
    adata.obs["donor"] = os.fsdecode(b"donor\xff")  # a name decoded from latin-1 bytes
    write_h5sc(tmp / "u.h5sc", adata)


@case(ValueError, "NaN or Inf", outputs=("nan.h5sc",))
def h5sc_nan_crops(tmp):
    from cellsae.crops import CROPS_KEY, write_h5sc

    adata = _crops_adata()
    adata.obsm[CROPS_KEY][2, 0, 1, 1] = np.nan
    write_h5sc(tmp / "nan.h5sc", adata)


# -- ingestion ------------------------------------------------------------------------------


@case(None)
def ingest_truncated_tiff_is_a_recorded_skip(tmp):
    plate = _plate(tmp)
    victim = sorted(plate["plate_dir"].glob("r02c03*"))[0]
    _truncate(victim, 0.3)
    result = _ingest(plate["plate_dir"], tmp, platemap=plate["platemap"])
    skipped = result.qc[result.qc["status"] == "skipped"]
    assert len(skipped) == 1 and victim.name in skipped["reason"].iloc[0]
    assert result.n_cells > 0 and result.path.exists()


@case(None)
def ingest_mismatched_channel_shapes_is_a_recorded_skip(tmp):
    import tifffile

    plate = _plate(tmp)
    victim = sorted(plate["plate_dir"].glob("r02c03*-ch2*"))[0]
    tifffile.imwrite(victim, np.zeros((50, 70), np.uint16))
    result = _ingest(plate["plate_dir"], tmp, platemap=plate["platemap"])
    skipped = result.qc[result.qc["status"] == "skipped"]
    assert len(skipped) == 1 and "shape" in skipped["reason"].iloc[0]


@case(None)
def ingest_missing_channel_is_a_recorded_skip(tmp):
    plate = _plate(tmp)
    sorted(plate["plate_dir"].glob("r02c03*-ch4*"))[0].unlink()
    result = _ingest(plate["plate_dir"], tmp, platemap=plate["platemap"])
    skipped = result.qc[result.qc["status"] == "skipped"]
    assert len(skipped) == 1 and "missing" in skipped["reason"].iloc[0]


@case(ValueError, "no field could be read|no cells", outputs=("out.h5sc", "out.h5sc.parts"))
def ingest_every_tiff_corrupt(tmp):
    plate = _plate(tmp)
    for path in plate["plate_dir"].glob("*.tiff"):
        path.write_bytes(b"II*\x00garbage")
    _ingest(plate["plate_dir"], tmp, platemap=plate["platemap"])


@case(ValueError, "more than once", outputs=("out.h5sc",))
def ingest_duplicated_wells_in_platemap(tmp):
    plate = _plate(tmp)
    table = pd.read_csv(plate["platemap"])
    pd.concat([table, table.iloc[:1]]).to_csv(tmp / "map.csv", index=False)
    _ingest(plate["plate_dir"], tmp, platemap=tmp / "map.csv")


@case(ValueError, "not a readable CSV", outputs=("out.h5sc",))
def ingest_platemap_not_utf8(tmp):
    plate = _plate(tmp)
    (tmp / "map.csv").write_bytes(b"well,donor\nB02,d\xe9\xff\xfe0\nB03,d1\n")
    _ingest(plate["plate_dir"], tmp, platemap=tmp / "map.csv")


@case(ValueError, "not valid UTF-8", outputs=("out.h5sc", "out.h5sc.parts"))
def ingest_plate_folder_name_not_utf8(tmp):
    plate = _plate(tmp)
    bad = os.fsencode(plate["plate_dir"].parent) + b"/plate\xff"
    os.rename(os.fsencode(plate["plate_dir"]), bad)
    _ingest(plate["plate_dir"].parent, tmp)


@case(UnsafePathError, "outside", outputs=("out.h5sc",))
def ingest_omezarr_path_traversal(tmp):
    import zarr

    root = tmp / "evil.zarr"
    group = zarr.open_group(str(root), mode="w")
    group.attrs["plate"] = {"wells": [{"path": "../../../etc/B/3"}], "version": "0.4"}
    (tmp / "inner").mkdir()
    _ingest(root, tmp)


@case(UnsafePathError, "outside", outputs=("out.h5sc",))
def ingest_omezarr_image_path_traversal(tmp):
    import zarr

    root = tmp / "evil.zarr"
    group = zarr.open_group(str(root), mode="w")
    group.attrs["plate"] = {"wells": [{"path": "B/3"}], "version": "0.4"}
    well = group.require_group("B").require_group("3")
    well.attrs["well"] = {"images": [{"path": "../../../../secret"}]}
    _ingest(root, tmp)


# -- embedding extraction -------------------------------------------------------------------


@case(ValueError, "NaN or Inf", outputs=("tokens.zarr",))
def extract_nan_crops(tmp):
    from cellsae.embed import extract

    x = np.random.default_rng(0).normal(size=(6, 2, 16, 16)).astype(np.float32)
    x[4, 1, 3, 3] = np.inf
    extract(_encoder(), x, tokens_out=tmp / "tokens.zarr", batch_size=2, device="cpu")


@case(ValueError, "channels", outputs=("tokens.zarr",))
def extract_wrong_channel_count(tmp):
    from cellsae.embed import extract

    x = np.zeros((4, 3, 16, 16), np.float32)
    extract(_encoder(2), x, tokens_out=tmp / "tokens.zarr", device="cpu")


@case(ValueError, "adata has 5 cells but there are 6", outputs=("tokens.zarr",))
def extract_mismatched_cell_counts(tmp):
    from cellsae.embed import extract

    path = _h5sc(tmp, s=16)
    meta = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]))
    extract(_encoder(), path, adata=meta, tokens_out=tmp / "tokens.zarr", device="cpu")


@case(CropFormatError, "truncated or corrupt", outputs=("tokens.zarr",))
def extract_truncated_h5sc(tmp):
    from cellsae.embed import extract

    path = _h5sc(tmp, s=16)
    _truncate(path)
    extract(_encoder(), path, tokens_out=tmp / "tokens.zarr", device="cpu")


def _token_store_chunk(tmp):
    """Write a small token store under ``tmp`` and return the path of one data chunk."""
    from cellsae.embed import extract

    x = np.random.default_rng(0).normal(size=(4, 2, 16, 16)).astype(np.float32)
    extract(_encoder(), x, tokens_out=tmp / "t.zarr", batch_size=2, device="cpu")
    return next(p for p in (tmp / "t.zarr" / "tokens").rglob("*")
                if p.is_file() and p.name != "zarr.json")


@case(ValueError, "token store .* cannot be read")
def tokens_corrupt_chunk(tmp):
    from cellsae.embed.extract import TokenStore

    _token_store_chunk(tmp).write_bytes(b"\x00\x01garbage")
    list(TokenStore(tmp / "t.zarr").iter_batches(8))


@case(ValueError, "token store .* cannot be read")
def tokens_flipped_byte(tmp):
    from cellsae.embed.extract import TokenStore

    chunk = _token_store_chunk(tmp)
    _flip_byte(chunk, len(chunk.read_bytes()) // 2)
    list(TokenStore(tmp / "t.zarr").iter_batches(8))


# -- SAE ------------------------------------------------------------------------------------


@case(ValueError, "NaN or Inf in row 17")
def sae_train_nan_row(tmp):
    from cellsae import sae

    x = _x()
    x[17, 3] = np.nan
    sae.train(x, **SAE_SMALL)


@case(ValueError, "NaN or Inf in row 5")
def sae_train_inf_row(tmp):
    from cellsae import sae

    x = _x()
    x[5, 0] = -np.inf
    sae.train(x, **SAE_SMALL)


@case(ValueError, "no rows")
def sae_train_empty(tmp):
    from cellsae import sae

    sae.train(np.zeros((0, 8), np.float32), **SAE_SMALL)


@case(TypeError, "numeric")
def sae_train_wrong_dtype(tmp):
    from cellsae import sae

    sae.train(np.array([["a"] * 8] * 20), **SAE_SMALL)


@case(ValueError, "overflows")
def sae_train_enormous_values(tmp):
    from cellsae import sae

    sae.train(_x() * np.float32(1e37), **SAE_SMALL)


@case(None)
def sae_train_zero_variance_features(tmp):
    from cellsae import sae

    x = _x()
    x[:, 4:] = 3.0  # constant features: trained around, never NaN
    model = sae.train(x, **SAE_SMALL)
    assert np.isfinite(model.train_info["final"]["fvu"])
    assert np.isfinite(model.encode(x).toarray()).all()


@case(ValueError, "no rows")
def tl_sae_encode_empty_anndata(tmp):
    from cellsae import sae, tl

    model = sae.train(_x(), **SAE_SMALL)
    tl.sae_encode(ad.AnnData(np.zeros((0, 8), np.float32)), model, use_rep="X")


@case(ValueError, "not a readable .npy")
def sae_train_truncated_npy(tmp):
    from cellsae import sae

    np.save(tmp / "x.npy", _x(256))
    _truncate(tmp / "x.npy")
    sae.train(tmp / "x.npy", **SAE_SMALL)


@case(ValueError, "Python objects")
def sae_train_pickled_npy_is_refused(tmp):
    from cellsae import sae

    np.save(tmp / "x.npy", np.array([{"evil": 1}] * 4, dtype=object), allow_pickle=True)
    sae.train(tmp / "x.npy", **SAE_SMALL)


@case(ValueError, "cannot be read")
def sae_train_corrupt_zarr_chunk(tmp):
    import zarr

    from cellsae import sae

    z = zarr.open_array(str(tmp / "x.zarr"), mode="w", shape=(64, 8), chunks=(16, 8),
                        dtype="float32")
    z[:] = _x()
    chunk = next(p for p in (tmp / "x.zarr").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:5])
    sae.train(tmp / "x.zarr", **SAE_SMALL)


@case(ValueError, "not a readable HDF5")
def sae_train_truncated_h5(tmp):
    import h5py

    from cellsae import sae

    with h5py.File(tmp / "x.h5", "w") as f:
        f["X"] = _x(512)
    _truncate(tmp / "x.h5")
    sae.train(tmp / "x.h5", key="X", **SAE_SMALL)


@case(ValueError, "d_in=8")
def sae_encode_wrong_width(tmp):
    from cellsae import sae

    model = sae.train(_x(), **SAE_SMALL)
    model.encode(_x(d=5))


@case(IntegrityError, "corrupt")
def sae_load_flipped_byte(tmp):
    from cellsae import sae

    sae.train(_x(), **SAE_SMALL).save(tmp / "m")
    _flip_byte(tmp / "m.safetensors")
    sae.load(tmp / "m")


@case(IntegrityError, "truncated or corrupt")
def sae_load_truncated(tmp):
    from cellsae import sae

    sae.train(_x(), **SAE_SMALL).save(tmp / "m")
    _truncate(tmp / "m.safetensors", 0.6)
    sae.load(tmp / "m")


@case(ValueError, "not valid JSON")
def sae_checkpoint_bad_json(tmp):
    from cellsae import sae

    sae.train(_x(), checkpoint_dir=tmp / "ck", checkpoint_every=1, **SAE_SMALL)
    last = sorted((tmp / "ck").glob("step_*.json"))[-1]
    last.write_text(last.read_text()[:40])
    sae.train(_x(), resume=tmp / "ck", **SAE_SMALL)


@case(IntegrityError, "corrupt")
def sae_checkpoint_flipped_byte(tmp):
    from cellsae import sae

    sae.train(_x(), checkpoint_dir=tmp / "ck", checkpoint_every=1, **SAE_SMALL)
    _flip_byte(sorted((tmp / "ck").glob("step_*.safetensors"))[-1])
    sae.train(_x(), resume=tmp / "ck", **SAE_SMALL)


@case(IntegrityError, "corrupt")
def encoder_file_flipped_byte(tmp):
    from cellsae.embed import load_encoder, save_encoder

    save_encoder(_encoder(), tmp / "enc.safetensors")
    _flip_byte(tmp / "enc.safetensors")
    load_encoder(tmp / "enc.safetensors")


# -- analysis: tl.gw_map, tl.gene_modules ----------------------------------------------------

GW = dict(n_pcs=5, n_top_genes=20, device="cpu", n_neighbors=10, epsilon=5e-3)


def _rna(n=70, g=50, seed=1):
    return ad.AnnData(np.random.default_rng(seed).poisson(2, size=(n, g)).astype(np.float32))


@case(ValueError, r"\(0, 10\)")
def gw_map_empty_anndata(tmp):
    from cellsae import tl

    tl.gw_map(ad.AnnData(np.zeros((0, 10), np.float32)), _rna(), **GW)


@case(ValueError, "NaN or Inf")
def gw_map_nan_features(tmp):
    from cellsae import tl

    x = _x(60, 10)
    x[3, 3] = np.nan
    tl.gw_map(ad.AnnData(x), _rna(), **GW)


@case(ValueError, "constant")
def gw_map_zero_variance(tmp):
    from cellsae import tl

    tl.gw_map(ad.AnnData(np.ones((60, 10), np.float32)), _rna(), **GW)


@case(ValueError, "non-negative")
def gw_map_negative_counts(tmp):
    from cellsae import tl

    tl.gw_map(ad.AnnData(_x(60, 10)), ad.AnnData(-_rna().X), **GW)


@case(ValueError, "NaN or Inf")
def gene_modules_nan_expression(tmp):
    from cellsae import tl

    x = _rna(40, 30).X
    x[0, 0] = np.nan
    tl.gene_modules(ad.AnnData(x))


@case(ValueError, "duplicated")
def gene_modules_duplicated_genes(tmp):
    from cellsae import tl

    rna = _rna(40, 30)
    rna.var_names = ["G"] * 30
    tl.gene_modules(rna)


@case(ValueError, "at least 2 cells")
def gene_modules_empty_anndata(tmp):
    from cellsae import tl

    tl.gene_modules(ad.AnnData(np.zeros((0, 30), np.float32)))


# -- configuration ----------------------------------------------------------------------------


@case(ValueError, "not valid YAML")
def yaml_python_object_tag_is_refused(tmp):
    from cellsae.config import load_yaml

    (tmp / "c.yaml").write_text("a: !!python/object/apply:os.system ['echo pwned']\n")
    load_yaml(tmp / "c.yaml")


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_handled(bad, tmp_path):
    check_case(bad, tmp_path)


def test_cases_cover_every_entry_point():
    names = " ".join(c.name for c in CASES)
    for entry in ("h5sc", "ingest", "extract", "sae_train", "sae_load", "gw_map",
                  "gene_modules"):
        assert entry in names
    assert len(CASES) >= 30


# -- property-based -------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 6), row=st.integers(0, 39),
       col=st.integers(0, 5), value=st.sampled_from([np.nan, np.inf, -np.inf]),
       dtype=st.sampled_from([np.float16, np.float32, np.float64]))
def test_any_non_finite_value_is_named_by_row(n, d, row, col, value, dtype):
    from cellsae.sae.data import BatchStream, open_source

    row, col = row % n, col % d
    x = np.random.default_rng(0).normal(size=(n, d)).astype(dtype)
    x[row, col] = value
    stream = BatchStream(open_source(x), batch_size=max(1, n // 2), chunk_size=7)
    with pytest.raises(ValueError, match=f"row {row}"):
        for _ in zip(range(4 * n), stream.batches(), strict=False):
            pass


@settings(max_examples=20, deadline=None)
@given(fraction=st.floats(0.0, 0.98))
def test_any_truncation_of_a_crops_file_is_detected(fraction, tmp_path_factory):
    from cellsae.crops import read_h5sc

    tmp = tmp_path_factory.mktemp("trunc")
    path = _h5sc(tmp)
    _truncate(path, fraction)
    with pytest.raises(CropFormatError):
        read_h5sc(path)


_SAE_FILES: dict[str, bytes] = {}


@settings(max_examples=12, deadline=None)
@given(position=st.integers(0, 10**6))
def test_a_flipped_byte_never_loads_as_different_weights(position, tmp_path_factory):
    """Anywhere a byte flips, loading fails with a clear error or (a flip in the
    header's free-text metadata) returns exactly the saved weights."""
    from cellsae import sae

    tmp = tmp_path_factory.mktemp("flip")
    if not _SAE_FILES:
        model = sae.train(_x(), **SAE_SMALL)
        model.save(tmp / "m")
        _SAE_FILES.update({name: (tmp / name).read_bytes()
                           for name in ("m.safetensors", "m.json")})
    for name, data in _SAE_FILES.items():
        (tmp / name).write_bytes(data)
    original = {k: v.clone() for k, v in sae.load(tmp / "m").state_dict().items()}
    _flip_byte(tmp / "m.safetensors", position % len(_SAE_FILES["m.safetensors"]))
    try:
        loaded = sae.load(tmp / "m").state_dict()
    except (IntegrityError, ValueError, json.JSONDecodeError):
        return
    for key, value in original.items():
        assert (loaded[key] == value).all(), f"{key} changed silently"
