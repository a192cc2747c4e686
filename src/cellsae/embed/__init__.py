"""cellsae.embed: encoders for single-cell crops, their training, extraction and evaluation.

- Architectures (one file each): :class:`ResNetEncoder` (any channel count; batch, group
  or no normalisation; pre-activation blocks; :func:`resnet_paper`), :class:`ViTEncoder`.
  Every encoder exposes named taps (``stage_names``) for pooled embeddings and spatial
  tokens.
- :func:`train_encoder`: supervised (class-balanced), MoCo v2 or SupCon with a momentum
  encoder and queue; donor-held-out splits; checkpoints with exact resume; DDP.
- :func:`extract`: embeddings into ``obsm["X_cnn"]`` and spatial tokens into a zarr
  token store (:class:`TokenStore`).
- :func:`linear_probe`, :func:`crop_statistics`, :func:`pixel_pca`: evaluation and
  baselines.
- :mod:`cellsae.embed.splits`: random / field / well / plate / donor splits.
"""

from .augment import AugmentConfig, augment
from .base import Encoder, build_encoder, encoder_names, renorm_unit_per_out_channel_
from .evaluate import (ProbeResult, crop_statistics, linear_probe, measurement_features,
                       segmented_measurements,
                       pixel_pca, probe_split)
from .extract import ExtractResult, TokenStore, extract  # the function shadows the module name
from .io import load_encoder, save_encoder
from .resnet import ResNetEncoder, resnet_paper
from .splits import SplitError, check_split, make_split, split_cells, split_groups
from .train import TrainConfig, TrainResult, train_encoder
from .vit import ViTEncoder

__all__ = [
    "AugmentConfig", "Encoder", "ExtractResult", "TokenStore", "extract", "ProbeResult", "ResNetEncoder", "SplitError", "TrainConfig",
    "TrainResult", "ViTEncoder", "augment", "build_encoder", "check_split", "crop_statistics",
    "encoder_names", "linear_probe", "load_encoder", "make_split", "measurement_features",
    "pixel_pca", "probe_split", "renorm_unit_per_out_channel_", "resnet_paper", "save_encoder",
    "segmented_measurements",
    "split_cells", "split_groups", "train_encoder",
]
