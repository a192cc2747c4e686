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
