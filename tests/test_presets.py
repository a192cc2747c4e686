"""Each `paper` preset produces the documented configuration; examples/paper.yaml runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellsae.pipeline import load_pipeline_config
from cellsae.presets import PRESETS, apply_preset, deep_merge

ROOT = Path(__file__).resolve().parents[1]


def test_paper_preset_fills_every_stage_with_the_papers_settings(tmp_path):
    cfg = load_pipeline_config(
        {"preset": "paper", "run": {"out": str(tmp_path / "r")}, "world": {"enabled": True}}
    )
    assert cfg.preset == "paper"
    # ingestion: the paper's tiles
    assert cfg.ingest.unit == "tile" and cfg.ingest.use_for_analysis
    s = cfg.ingest.settings
    assert s["pattern"] == "paper" and s["tile_size"] == 128 and s["n_planes"] == 5
    assert s["crop_channels"] == ["mito", "lyso", "nucleus"]  # death is never a CNN input
    assert s["min_nucleus_fraction"] == 0.25 and s["exclude_edge_tiles"] is True
    # encoder: pre-activation, no normalisation, unit-norm weights, 64×64 maps
    enc = cfg.embed.encoder
    assert enc["norm"] == "none" and enc["preact"] and enc["weight_renorm"]
    assert enc["stem_stride"] == 2 and enc["strides"] == [1, 1, 1, 1]
    assert enc["input_norm"] == "instance"
    tr = cfg.embed.train
    assert tr["objective"] == "supcon" and tr["momentum"] == 0.995
    assert tr["queue_size"] == 65536 and tr["temperature"] == 0.07
    assert tr["optimizer"] == "sgd" and tr["lr"] == 0.1 and tr["epochs"] == 100
    assert tr["augment"]["rot90"] and not tr["augment"]["flip"]
    assert tr["augment"]["affine_p"] == 0 and tr["augment"]["noise"] == 0
    assert cfg.embed.split_mode == "random"  # the paper's split, random over units
    assert cfg.embed.tta == "none"  # its GAP features are of the plain image
    assert cfg.embed.split_fractions == pytest.approx((0.5, 1 / 6, 1 / 3))
    # SAE: the gated paper preset
    assert cfg.sae.preset == "paper" and cfg.sae.arch == "gated" and cfg.sae.d_sae == 8192
    assert cfg.sae.input == "tokens" and cfg.sae.token_norm == "paper" and cfg.sae.pool == "mean"
    # analysis
    assert cfg.analyze.preset == "paper" and cfg.analyze.n_neighbors == 5
    assert cfg.analyze.leiden_resolution == 0.45
    assert cfg.inputs.phenotype_key == "death_rate"


def test_paper_encoder_preset_is_resnet_paper():
    from cellsae.embed import TrainConfig, build_encoder, resnet_paper

    enc = dict(PRESETS["paper"]["embed"]["encoder"])
    small = {"widths": [4, 4, 4, 4], "stem_width": 4}  # same topology, cheap to build
    built = build_encoder(enc.pop("arch"), in_channels=3, **{**enc, **small})
    reference = resnet_paper(3, **small)
    assert built.config() == reference.config()
    TrainConfig(**PRESETS["paper"]["embed"]["train"])  # every training key is valid


def test_paper_sae_preset_matches_reference():
    from cellsae.sae import PRESETS as SAE_PRESETS

    p = SAE_PRESETS["paper"]
    assert p["arch"] == "gated" and p["d_sae"] == 8192
    assert p["l1_total"] == 800 and "l1_coeff" not in p  # λ 800, one source of truth
    assert p["r_mag"] is False  # the paper ties W_mag to W_gate with no rescale
    assert p["aux_alpha"] == pytest.approx(1 / 32) and p["k_aux"] == 32
    assert p["lr"] == 3e-4 and p["l2_normalise_inputs"]


def test_paper_lambda_is_averaged_over_latents():
    from cellsae.sae.trainer import _build_config

    def l1(**kw):
        arch, d_sae = kw.pop("arch", None), kw.pop("d_sae", None)
        cfg = _build_config(arch, d_sae, None, kw.pop("preset", "paper"), {"seed": 0, **kw},
                            1000, 10, None)
        return cfg.hparams["l1_coeff"]

    assert l1() == pytest.approx(800 / 8192)
    assert l1(d_sae=4096) == pytest.approx(800 / 4096)  # λ 800 stays 800 over latents
    assert l1(d_sae=256) == pytest.approx(3.125)
    assert l1(d_sae=4096, l1_coeff=0.5) == 0.5  # an explicit per-latent coefficient wins
    assert l1(d_sae=1000, l1_total=200) == pytest.approx(0.2)
    assert l1(preset=None, arch="relu", d_sae=100, l1_total=50) == pytest.approx(0.5)


def test_user_values_win_over_the_preset(tmp_path):
    cfg = load_pipeline_config(
        {
            "preset": "paper",
            "run": {"out": str(tmp_path / "r")},
            "world": {"enabled": True},
            "ingest": {"settings": {"tile_size": 64}},
            "embed": {"split_mode": "donor", "train": {"epochs": 2}},
        }
    )
    assert cfg.ingest.settings["tile_size"] == 64
    assert cfg.ingest.settings["pattern"] == "paper"  # merged key by key
    assert cfg.embed.split_mode == "donor"
    assert cfg.embed.train["epochs"] == 2 and cfg.embed.train["objective"] == "supcon"


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'nature'"):
        apply_preset({"preset": "nature"})
    assert apply_preset({"run": {}}) == {"run": {}}


def test_deep_merge_does_not_modify_inputs():
    base = {"a": {"b": 1, "c": 2}}
    out = deep_merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_paper_example_is_valid():
    cfg = load_pipeline_config(ROOT / "examples" / "paper.yaml")
    assert cfg.preset == "paper" and cfg.ingest.unit == "tile"
    assert cfg.analyze.preset == "paper" and cfg.world.design == "confounded"


@pytest.mark.slow
def test_paper_mode_runs_end_to_end(tmp_path):
    """A tiny paper-mode run: tiles from rendered fields → SupCon CNN → gated SAE → paper
    analysis → report with the design warning (the world is confounded)."""
    import json

    from cellsae.config import load_yaml
    from cellsae.pipeline import Pipeline
    from cellsae.presets import deep_merge as merge

    data = merge(
        load_yaml(ROOT / "examples" / "paper.yaml"),
        {
            "run": {"out": str(tmp_path / "run")},
            "world": {"n_cells": 240, "plate_cells": 240},
            "ingest": {"settings": {"n_workers": 0}},
            "embed": {"train": {"epochs": 1}},
            "sae": {"d_sae": 64, "n_epochs": 1},
        },
    )
    cfg = load_pipeline_config(data)
    status = Pipeline(cfg).run()
    assert status["analyze"] == "ran" and status["report"] == "ran"
    run = tmp_path / "run"
    sidecar = json.loads((run / "sae" / "outputs" / "sae.json").read_text())["training"]
    assert sidecar["token_norm"] == "paper"  # a reloaded SAE is fed normalised tokens
    assert sidecar["config"]["hparams"]["l1_coeff"] == pytest.approx(800 / 64)
    tiles = json.loads((run / "ingest" / "manifest.json").read_text())["metrics"]
    assert tiles["n_tiles"] > 0 and tiles["n_tiles_with_death_rate"] > 0
    summary = json.loads((run / "analyze" / "outputs" / "paper_summary.json").read_text())
    assert "knn_sd_ratio_k5_cnn" in summary["summary"]
    design = json.loads((run / "analyze" / "outputs" / "design_check.json").read_text())
    assert design["confounded"]
    html = (run / "report" / "outputs" / "report.html").read_text()
    assert "Design warning" in html and "Paper analysis preset" in html
