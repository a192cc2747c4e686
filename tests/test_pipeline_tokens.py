"""The pipeline's token-level SAE path: embed writes tokens, sae trains on them and pools."""

from __future__ import annotations

import anndata as ad
import pytest

from cellsae.config import ConfigError
from cellsae.pipeline import Pipeline, load_pipeline_config


def token_config(out, **sae) -> dict:
    return {
        "run": {"out": str(out), "seed": 0},
        "world": {"enabled": True, "n_cells": 120, "plates": False, "crop_size": 32},
        "ingest": {"enabled": False},
        "embed": {"encoder": {"arch": "resnet", "widths": [8, 16], "blocks": [1, 1]},
                  "train": {"epochs": 1, "batch_size": 32}, "tokens": True},
        "sae": {"arch": "topk", "d_sae": 32, "k": 4, "n_epochs": 2, "batch_size": 64,
                "input": "tokens", **sae},
        "analyze": {"n_bootstrap": 0},
        "align": {"enabled": False}, "pathways": {"enabled": False},
        "report": {"enabled": False},
    }


@pytest.mark.slow  # a tiny world through four stages: ~40 CPU s
def test_sae_on_tokens_pools_codes_per_cell(tmp_path):
    from cellsae.embed import TokenStore

    out = tmp_path / "run"
    status = Pipeline(load_pipeline_config(token_config(out, pool="max"))).run()
    assert status["sae"] == "ran" and status["analyze"] == "ran", status
    store = TokenStore(out / "embed" / "outputs" / "tokens.zarr")
    assert store.n_cells == 120 and store.tokens_per_cell > 1
    latents = ad.read_h5ad(out / "sae" / "outputs" / "latents.h5ad")
    assert latents.shape == (120, 32)
    assert latents.uns["sae"]["params"]["use_rep"] == "tokens"
    assert latents.uns["sae"]["params"]["pool"] == "max"
    assert latents.X.nnz > 0
    analyzed = ad.read_h5ad(out / "analyze" / "outputs" / "latents.h5ad")
    assert "dpt_pseudotime" in analyzed.obs


def test_tokens_input_without_token_store_is_a_config_error(tmp_path):
    cfg = token_config(tmp_path / "run")
    cfg["embed"]["tokens"] = False
    with pytest.raises(ConfigError, match="embed.tokens"):
        load_pipeline_config(cfg)
    cfg["sae"]["input"] = "pixels"
    with pytest.raises(ConfigError, match="input"):
        load_pipeline_config(cfg)
