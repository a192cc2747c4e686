"""Named presets of the pipeline's stages; ``paper`` reproduces Park et al. (2026).

A preset is a partial pipeline configuration merged *under* the user's own: every value
the user writes wins, sub-dictionaries (``ingest.settings``, ``embed.train``, …) merge key
by key. ``preset: paper`` in a YAML file therefore gives the paper's pipeline (REFERENCE_
CODE.md) as options of the existing stages — there is no second pipeline:

- ingest: ``unit: tile`` (:func:`cellsae.images.tiles.ingest_tiles`): maximum projection
  of the first 5 planes, 128 × 128 grid tiles, the four-test QC, the paper's file names
  and per-tile death rates (``death_rate`` = the intensity-weighted rate);
- embed: :func:`cellsae.embed.resnet_paper` (pre-activation ResNet, no normalisation
  layers, unit-norm weights, 64 × 64 maps from a stride-2 stem, per-image per-channel
  standardisation) trained by SupCon with a MoCo momentum encoder (m 0.995, queue 65,536,
  τ 0.07), rot90-only augmentation, SGD 0.1 Nesterov, 100 epochs, batch 512, on a random
  50 / 16.7 / 33.3 % split of units (the paper's; ``embed.split_mode`` changes it);
- sae: the ``paper`` preset of :mod:`cellsae.sae` (gated, tied gate/magnitude weights,
  λ 800 averaged over latents, i.e. ``l1_coeff`` = 800 / d_sae, AuxK, unit-norm inputs)
  trained on every spatial token of the last stage's 64 × 64 map (``embed.tokens``,
  ``sae.input: tokens``) normalised as the paper does (``sae.token_norm: paper``,
  :mod:`cellsae.sae.tokennorm`), token codes mean-pooled per unit;
- analyze: ``preset: paper`` (:func:`cellsae.tl.paper.paper_analysis`) with neighbours
  k 5 and Leiden 0.45 for the latent graph.

Use :func:`apply_preset` on a raw config mapping, or ``preset: paper`` in YAML.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PRESETS", "apply_preset", "deep_merge", "preset_names"]

# The paper's encoder (REFERENCE_CODE.md §3), as keyword arguments of ResNetEncoder; the
# same as cellsae.embed.resnet_paper().config().
PAPER_ENCODER: dict[str, Any] = {
    "arch": "resnet",
    "widths": [128, 256, 512, 512],
    "blocks": [2, 2, 2, 3],
    "strides": [1, 1, 1, 1],
    "stem_width": 64,
    "stem_stride": 2,
    "refine_blocks": 1,
    "norm": "none",
    "preact": True,
    "weight_renorm": True,
    "input_norm": "instance",
}

PAPER_TRAIN: dict[str, Any] = {
    "objective": "supcon",
    "epochs": 100,
    "batch_size": 512,
    "optimizer": "sgd",
    "lr": 0.1,
    "weight_decay": 1e-4,
    "warmup_epochs": 4,
    "grad_clip": 1.0,
    "momentum": 0.995,
    "queue_size": 65536,
    "temperature": 0.07,
    "proj_hidden": 2048,
    "proj_dim": 512,
    "l2_pool": True,
    "patience": None,
    "augment": {
        "rot90": True,
        "flip": False,
        "affine_p": 0.0,
        "intensity_scale": 0.0,
        "blur_p": 0.0,
        "noise": 0.0,
    },
}

# TileConfig defaults are the paper's; named here so the run's config records them.
PAPER_TILES: dict[str, Any] = {
    "pattern": "paper",
    "channels": "3=mito,4=lyso,1=nucleus,2=death",
    "crop_channels": ["mito", "lyso", "nucleus"],
    "tile_size": 128,
    "n_planes": 5,
    "min_nucleus_fraction": 0.25,
    "exclude_edge_tiles": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "inputs": {"phenotype_key": "death_rate", "label_key": "genotype"},
        "ingest": {"unit": "tile", "use_for_analysis": True, "settings": PAPER_TILES},
        "embed": {
            "encoder": PAPER_ENCODER,
            "train": PAPER_TRAIN,
            "split_mode": "random",
            "split_fractions": [0.5, 1 / 6, 1 / 3],
            # the SAE trains on every spatial token of the last stage (the paper's stage5_out)
            "tokens": True,
            "token_layer": "stage4",
            # its GAP caches are of the plain image (no test-time rotations or flips)
            "tta": "none",
        },
        "sae": {
            "preset": "paper",
            "arch": "gated",
            "d_sae": 8192,
            "k": None,
            "n_epochs": 8,
            "input": "tokens",
            # REFERENCE_CODE §4: gap-scalar, per-unit centring (the downstream caches'),
            # unit norm; "paper_batch" centres on one mean as its SAE training did
            "token_norm": "paper",
            "pool": "mean",
        },
        "analyze": {"preset": "paper", "n_neighbors": 5, "leiden_resolution": 0.45, "knn_k": 5},
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``base`` with ``override`` on top, sub-dicts merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_preset(data: dict) -> dict:
    """Expand ``data["preset"]`` (if any) under the user's values.

    Parameters
    ----------
    data : a raw pipeline configuration mapping (as read from YAML).

    Returns
    -------
    A new mapping; ``data`` itself is not modified.

    Raises
    ------
    ValueError
        An unknown preset name (the message lists the known ones).
    """
    name = data.get("preset")
    if name is None:
        return dict(data)
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {preset_names()}")
    return deep_merge(PRESETS[name], data)
