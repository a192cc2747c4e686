import json

import numpy as np
import pytest
import torch

from cellsae.embed import ResNetEncoder, SplitError, load_encoder, train_encoder
from cellsae.embed.augment import NO_AUGMENT

from ._helpers import planted_crops

TINY = {"widths": [4, 8], "blocks": [1, 1], "strides": [1, 2]}


def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 18, "augment": NO_AUGMENT.model_dump(), "patience": None,
            "lr": 5e-3}
    base.update(kw)
    return base


def test_supervised_recovers_a_planted_class_signal_on_held_out_donors():
    x, y, donors = planted_crops(n_per_donor=12, n_donors_per_class=3)
    result = train_encoder(x, y, donors=donors, encoder=TINY,
                           config=_cfg(epochs=6, lr=1e-2), seed=0)
    test = result.split == "test"
    assert not set(donors[test]) & set(donors[result.split == "train"])
    with torch.no_grad():
        z = result.model(torch.from_numpy(x[test]))
    from cellsae.embed import probe_split

    probe = probe_split(result.model(torch.from_numpy(x)).detach().numpy(), y, result.split)
    assert probe.accuracy > 0.8, probe
    assert z.shape == (test.sum(), 8)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert np.isfinite(result.best_val_acc)


@pytest.mark.parametrize("objective", ["moco", "supcon"])
def test_contrastive_objectives_train_with_a_queue(objective):
    x, y, donors = planted_crops(n_per_donor=8, n_donors_per_class=3)
    result = train_encoder(x, y, donors=donors, encoder=TINY,
                           config=_cfg(objective=objective, queue_size=32, proj_dim=8,
                                       proj_hidden=16, augment={}), seed=0)
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert 0 <= result.best_val_acc <= 1


def test_vit_trains_and_input_statistics_are_fitted():
    x, y, donors = planted_crops(n_per_donor=6, n_donors_per_class=3)
    x = x + 3.0
    result = train_encoder(x, y, donors=donors, config=_cfg(epochs=1),
                           encoder={"arch": "vit", "patch_size": 4, "dim": 8, "depth": 1,
                                    "heads": 2}, seed=0)
    assert result.model.config()["arch"] == "vit"
    assert np.allclose(result.model.input_mean.numpy(), x.mean((0, 2, 3)), atol=0.2)


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    x, y, donors = planted_crops(n_per_donor=8, n_donors_per_class=3)
    cfg = _cfg(objective="supcon", epochs=3, queue_size=24, proj_dim=8, proj_hidden=16,
               augment={})
    full = train_encoder(x, y, donors=donors, encoder=TINY, config=cfg, seed=0,
                         out_dir=tmp_path / "a")
    train_encoder(x, y, donors=donors, encoder=TINY, config=cfg, seed=0, out_dir=tmp_path / "b",
                  callback=lambda epoch, record: epoch == 1)
    assert json.loads((tmp_path / "b" / "last.json").read_text())["epoch"] == 1
    resumed = train_encoder(x, y, donors=donors, encoder=TINY, config=cfg, seed=0,
                            out_dir=tmp_path / "b", resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    loaded = load_encoder(tmp_path / "a" / "encoder.safetensors")
    xt = torch.from_numpy(x[:4])
    torch.testing.assert_close(loaded(xt), full.model(xt))
    assert loaded.meta["classes"] == ["class0", "class1", "class2"]


def test_early_stopping_keeps_the_best_epoch():
    x, y, donors = planted_crops(n_per_donor=6, n_donors_per_class=3)
    result = train_encoder(x, y, donors=donors, encoder=TINY,
                           config=_cfg(epochs=6, patience=1, lr=1e-6), seed=0)
    accs = [h["val_acc"] for h in result.history]
    assert result.best_val_acc == max(accs)
    assert result.stopped_early == (len(accs) < 6)


# -- bad input: a clear error before any training step ------------------------------------


def _never(epoch, record):
    raise AssertionError("training started")


def test_wrong_channel_count_for_a_given_encoder(tmp_path):
    x, y, donors = planted_crops(channels=3)
    with pytest.raises(ValueError, match="3 channels but the encoder expects 4"):
        train_encoder(x, y, donors=donors, encoder=ResNetEncoder(4, widths=(4,), blocks=(1,)),
                      config=_cfg(), callback=_never, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nan_crops():
    x, y, donors = planted_crops()
    x[5, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf in 1 crop.*cell 5"):
        train_encoder(x, y, donors=donors, encoder=TINY, config=_cfg(), callback=_never)


def test_empty_class():
    x, y, donors = planted_crops()
    with pytest.raises(ValueError, match=r"\['class9'\] have no training cells"):
        train_encoder(x, y, donors=donors, classes=["class0", "class1", "class2", "class9"],
                      encoder=TINY, config=_cfg(), callback=_never)


def test_single_donor_gives_no_held_out_split():
    x, y, _ = planted_crops()
    with pytest.raises(SplitError, match="1 donor"):
        train_encoder(x, y, donors=np.array(["d0"] * len(y)), encoder=TINY, config=_cfg(),
                      callback=_never)


def test_missing_donors_and_bad_config():
    x, y, donors = planted_crops()
    with pytest.raises(ValueError, match="donors are needed"):
        train_encoder(x, y, encoder=TINY, config=_cfg())
    from cellsae.config import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        train_encoder(x, y, donors=donors, config={"objective": "byol"})


# -- reproducibility ----------------------------------------------------------------------


def _weights(result) -> dict:
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("encoder", [TINY, {"arch": "vit", "patch_size": 4, "dim": 8, "depth": 1,
                                             "heads": 2, "dropout": 0.2}],
                         ids=["resnet", "vit-dropout"])
def test_same_seed_gives_identical_weights(encoder):
    """Every random draw (initialisation, batches, augmentation, dropout) is seeded from
    the config: two runs give bit-identical weights, and the caller's global torch
    generator is left as it was."""
    x, y, donors = planted_crops(n_per_donor=8, n_donors_per_class=3)
    cfg = _cfg(epochs=1, augment={})  # every augmentation on
    before = torch.get_rng_state()
    runs = [train_encoder(x, y, donors=donors, encoder=encoder, config=cfg, seed=5)
            for _ in range(2)]
    _assert_same_weights(_weights(runs[0]), _weights(runs[1]))
    assert runs[0].history[0]["loss"] == runs[1].history[0]["loss"]
    assert torch.equal(torch.get_rng_state(), before)
    other = train_encoder(x, y, donors=donors, encoder=encoder, config=cfg, seed=6)
    assert not torch.equal(next(iter(_weights(other).values())),
                           next(iter(_weights(runs[0]).values())))


def test_worker_processes_read_the_same_batches(tmp_path, monkeypatch):
    """Crops streamed from an .h5sc file by data-loader workers train exactly as crops in
    memory (batches keep their order; workers draw no random numbers)."""
    import anndata as ad
    import pandas as pd

    from cellsae.crops import CROPS_KEY, write_h5sc
    from cellsae.embed import _data

    x, y, donors = planted_crops(n_per_donor=6, n_donors_per_class=3)
    x = x.astype(np.float16)
    path = write_h5sc(tmp_path / "c.h5sc",
                      ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(len(y))]),
                                 obsm={CROPS_KEY: x}))
    cfg = _cfg(epochs=1, augment={})
    in_memory = train_encoder(x.astype(np.float32), y, donors=donors, encoder=TINY,
                              config=cfg, seed=1)
    monkeypatch.setattr(_data, "PRELOAD_BYTES", 0)  # force streaming from the file
    streamed = train_encoder(path, y, donors=donors, encoder=TINY,
                             config={**cfg, "num_workers": 2}, seed=1)
    _assert_same_weights(_weights(in_memory), _weights(streamed))


# -- donor adversary ----------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["supervised", "supcon"])
def test_donor_adversary_trains_and_resumes_exactly(tmp_path, objective):
    x, y, donors = planted_crops(n_per_donor=8, n_donors_per_class=3)
    cfg = _cfg(objective=objective, epochs=2, donor_adversary=1.0, queue_size=24, proj_dim=8,
               proj_hidden=16, augment={})
    kw = {"donors": donors, "encoder": TINY, "seed": 0, "fractions": (2, 0, 1)}  # last epoch kept
    full = train_encoder(x, y, config=cfg, **kw)
    assert all(np.isfinite(h["loss"]) for h in full.history)
    plain = train_encoder(x, y, config={**cfg, "donor_adversary": 0.0}, **kw)
    assert not torch.equal(full.model.stem[0].weight, plain.model.stem[0].weight)
    train_encoder(x, y, config=cfg, out_dir=tmp_path, callback=lambda epoch, record: epoch == 1,
                  **kw)
    resumed = train_encoder(x, y, config=cfg, out_dir=tmp_path, resume=True, **kw)
    _assert_same_weights(_weights(full), _weights(resumed))


def test_donor_adversary_needs_donors():
    x, y, donors = planted_crops()
    split = np.where(np.isin(donors, ["c0d0", "c1d0", "c2d0"]), "test", "train")
    with pytest.raises(ValueError, match="donor_adversary needs the donor"):
        train_encoder(x, y, split=split, encoder=TINY, config=_cfg(donor_adversary=1.0),
                      callback=_never)


def test_wrong_channel_count_for_a_loaded_encoder(tmp_path):
    """A saved 4-channel encoder refuses 3-channel crops, for fine-tuning and extraction."""
    from cellsae.embed import save_encoder
    from cellsae.embed.extract import extract

    save_encoder(ResNetEncoder(4, widths=(4,), blocks=(1,)), tmp_path / "enc.safetensors")
    loaded = load_encoder(tmp_path / "enc.safetensors")
    x, y, donors = planted_crops(channels=3)
    with pytest.raises(ValueError, match="3 channels but the encoder expects 4"):
        train_encoder(x, y, donors=donors, encoder=loaded, config=_cfg(), callback=_never)
    with pytest.raises(ValueError, match="3 channels but the encoder expects 4"):
        extract(loaded, x, device="cpu")
