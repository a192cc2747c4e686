"""Dask fan-out of extraction and ingestion: same results as one process, clear errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

distributed = pytest.importorskip("distributed")

from cellsae._dask import dask_client, dask_map  # noqa: E402
from cellsae.crops import CROPS_KEY, read_h5sc, write_h5sc  # noqa: E402
from cellsae.embed import ResNetEncoder  # noqa: E402
from cellsae.embed.extract import TokenStore, extract  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # threads in this process: starts in well under a second (process workers would
    # re-import torch and cellsae, ~10 s on a busy 2-core machine)
    with dask_client(True, n_workers=2, processes=False) as c:
        yield c


@pytest.fixture
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ResNetEncoder(3, widths=(4, 6), blocks=(1, 1), strides=(1, 2)).eval()


def _square(x, *, add=0):
    return x * x + add


def test_dask_map_returns_every_result_with_bounded_queue(client):
    got = dict(dask_map(client, _square, range(20), max_in_flight=3, add=1))
    assert got == {i: i * i + 1 for i in range(20)}


def _fail_on_three(x):
    if x == 3:
        raise ValueError("item 3 is bad")
    return x


def test_dask_map_reraises_the_task_error(client):
    with pytest.raises(ValueError, match="item 3 is bad"):
        list(dask_map(client, _fail_on_three, range(6)))


def test_bad_dask_spec_is_a_clear_error():
    with pytest.raises(TypeError, match="scheduler address"):
        with dask_client(3.5):
            pass


@pytest.mark.parametrize("from_file", [False, True])
def test_extract_on_dask_equals_one_process(model, rng, tmp_path, client, from_file):
    x = rng.normal(size=(23, 3, 16, 16)).astype(np.float16)
    crops = x.astype(np.float32)
    if from_file:
        adata = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(23)]),
                           obsm={CROPS_KEY: x})
        crops = write_h5sc(tmp_path / "c.h5sc", adata)
    one = extract(model, crops, tokens_out=tmp_path / "one.zarr", tokens_layer="stage1",
                  batch_size=4, device="cpu")
    many = extract(model, crops, tokens_out=tmp_path / "many.zarr", tokens_layer="stage1",
                   batch_size=4, device="cpu", dask=client, dask_block_batches=2)
    np.testing.assert_allclose(many.embeddings, one.embeddings, rtol=1e-5, atol=1e-6)
    a, b = TokenStore(tmp_path / "one.zarr"), TokenStore(tmp_path / "many.zarr")
    np.testing.assert_array_equal(np.asarray(b.tokens[:]), np.asarray(a.tokens[:]))
    np.testing.assert_array_equal(np.asarray(b.cell_index[:]), np.asarray(a.cell_index[:]))
    np.testing.assert_array_equal(np.asarray(b.position[:]), np.asarray(a.position[:]))
    np.testing.assert_allclose(b.pooled_norm, a.pooled_norm, rtol=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))


def test_extract_dask_failure_leaves_no_store(model, rng, tmp_path, client):
    x = rng.normal(size=(12, 3, 16, 16)).astype(np.float32)
    x[9, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        extract(model, x, tokens_out=tmp_path / "t.zarr", batch_size=2, device="cpu",
                dask=client, dask_block_batches=1)
    assert not (tmp_path / "t.zarr").exists()
    assert not list(tmp_path.iterdir())


def test_ingest_on_dask_equals_local_processes(tmp_path):
    from cellsae.images import ingest
    from cellsae.images.toy import make_toy_plate

    plate = make_toy_plate(tmp_path / "plates", wells=("B02", "B03"), n_fields=2, size=96,
                           n_cells=6, n_planes=2, seed=1)
    settings = {"crop_size": 24, "calibration_fields": 4}
    local = ingest(plate["plate_dir"], tmp_path / "local.h5sc", platemap=plate["platemap"],
                   n_workers=0, **settings)
    viadask = ingest(plate["plate_dir"], tmp_path / "dask.h5sc", platemap=plate["platemap"],
                     n_workers=2, dask=True, dask_processes=False, **settings)
    a, b = read_h5sc(local.path, load_crops=True), read_h5sc(viadask.path, load_crops=True)
    assert a.n_obs == b.n_obs > 0
    np.testing.assert_array_equal(a.obsm[CROPS_KEY], b.obsm[CROPS_KEY])
    np.testing.assert_array_equal(a.obsm["X_measure"], b.obsm["X_measure"])
    assert list(a.obs_names) == list(b.obs_names)


def test_extract_through_a_scheduler_address(model, rng):
    # the multi-machine path: connect to an existing scheduler by its address
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        x = rng.normal(size=(10, 3, 16, 16)).astype(np.float32)
        one = extract(model, x, batch_size=4, device="cpu")
        remote = extract(model, x, batch_size=4, device="cpu", dask=cluster.scheduler_address)
    np.testing.assert_allclose(remote.embeddings, one.embeddings, rtol=1e-5, atol=1e-6)


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises((ConnectionError, OSError), match="scheduler|connect|timed out"):
        with dask_client("tcp://127.0.0.1:9", timeout="1s"):
            pass
