import numpy as np
import pytest

from cellsae.datasets.paired import load_gouwens2020, load_scgem, load_snareseq


def test_missing_folder_raises_clearly(tmp_path):
    for loader in (load_snareseq, load_scgem, load_gouwens2020):
        with pytest.raises(FileNotFoundError, match="not found"):
            loader(tmp_path)


def test_loaders_on_shared_data(shared_data):
    snare = load_snareseq(shared_data)
    assert snare.source.shape == (1047, 19) and snare.target.shape == (1047, 10)
    assert set(snare.target_labels) == {"BJ", "GM", "H1", "K562"}
    scgem = load_scgem(shared_data / "scgem")
    assert scgem.n_cells == 177 and (scgem.source_labels == scgem.target_labels).all()
    morph = load_gouwens2020(shared_data, modality="morph")
    assert morph.source.shape == (448, 514) and morph.target.shape == (448, 1252)
    assert "Sst" in set(morph.target_labels)
    assert np.array_equal(morph.truth, np.arange(448))
    with pytest.raises(ValueError, match="modality"):
        load_gouwens2020(shared_data, modality="spikes")
