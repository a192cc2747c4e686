"""What every encoder architecture shares: input normalisation, taps, registry.

An encoder maps crops ``(n, C, H, W)`` to a pooled embedding ``(n, d)`` and exposes
named taps (``stage_names``): ``forward_features(x, [name])`` returns the spatial map
``(n, d_tap, h, w)`` at that tap, from which the cell embedding is the global average
and the spatial tokens are the ``h * w`` positions.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

INPUT_NORMS = ("dataset", "instance", "none")

_REGISTRY: dict[str, type[Encoder]] = {}


def register_encoder(name: str):
    """Class decorator adding an encoder class to the registry under ``name``."""

    def deco(cls):
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return deco


def encoder_names() -> list[str]:
    return sorted(_REGISTRY)


def build_encoder(arch: str = "resnet", **params: Any) -> Encoder:
    """Build an encoder by architecture name (``resnet``, ``vit``) and keyword parameters."""
    if arch not in _REGISTRY:
        raise ValueError(f"unknown encoder architecture {arch!r}; available: {encoder_names()}")
    return _REGISTRY[arch](**params)


class Encoder(nn.Module, abc.ABC):
    """Base class: holds the per-channel input statistics and the tap interface.

    Parameters
    ----------
    in_channels : number of image channels C (any number, not tied to RGB).
    input_norm : ``"dataset"`` (subtract / divide by per-channel statistics fitted on
        the training crops, stored in the model), ``"instance"`` (per crop and channel,
        as the paper's SafeInstanceNormalize; discards absolute intensity), ``"none"``.
    """

    arch = "base"

    def __init__(self, in_channels: int, input_norm: str = "dataset"):
        super().__init__()
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.in_channels = int(in_channels)
        self.input_norm = input_norm
        self.register_buffer("input_mean", torch.zeros(self.in_channels))
        self.register_buffer("input_std", torch.ones(self.in_channels))
        self._params: dict[str, Any] = {"in_channels": self.in_channels, "input_norm": input_norm}

    # -- configuration ------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this architecture (weights aside)."""
        return {"arch": self.arch, **self._params}

    @property
    @abc.abstractmethod
    def stage_names(self) -> list[str]:
        """Names of the taps, input to output (each architecture defines them)."""

    @property
    @abc.abstractmethod
    def stage_dims(self) -> dict[str, int]:
        """Channels of each tap."""

    @property
    def default_layer(self) -> str:
        return self.stage_names[-1]

    @property
    def embed_dim(self) -> int:
        return self.stage_dims[self.default_layer]

    def set_input_stats(self, mean, std) -> None:
        """Store per-channel input statistics ``(C,)`` used by ``input_norm="dataset"``."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.in_channels or std.numel() != self.in_channels:
            raise ValueError(f"input statistics must have {self.in_channels} entries, got "
                             f"{mean.numel()} and {std.numel()}")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    # -- forward ------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"crops must be (n, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"crops have {x.shape[1]} channels but this {self.arch} encoder "
                             f"was built for {self.in_channels}; pass crops with the channels "
                             "the model was trained on, in the same order")

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.input_norm == "dataset":
            return (x - self.input_mean[None, :, None, None]) / self.input_std[None, :, None, None]
        if self.input_norm == "instance":
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True).clamp_min(0.01)
            return (x - mean) / std
        return x

    @abc.abstractmethod
    def _run(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        """Run the trunk on normalised input, returning the maps at the ``wanted`` taps."""

    def forward_features(self, x: torch.Tensor, layers: Sequence[str] | str | None = None
                         ) -> dict[str, torch.Tensor]:
        """Spatial maps ``(n, d_tap, h, w)`` at the named taps (default: the last)."""
        self.check_input(x)
        if layers is None:
            layers = [self.default_layer]
        elif isinstance(layers, str):
            layers = [layers]
        unknown = [name for name in layers if name not in self.stage_dims]
        if unknown:
            raise KeyError(f"unknown layer(s) {unknown} for this {self.arch} encoder; "
                           f"available: {self.stage_names}")
        return self._run(self.normalize_input(x), set(layers))

    def forward(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Global-average-pooled embedding ``(n, d)`` at ``layer`` (default: the last)."""
        layer = layer or self.default_layer
        return self.forward_features(x, [layer])[layer].mean(dim=(2, 3))


def renorm_unit_per_out_channel_(module: nn.Module) -> None:
    """Rescale every Conv2d / Linear weight to unit L2 norm per output channel, in place.

    The paper's encoder uses no normalisation layer; this rescaling after each optimiser
    step keeps activations at a stable scale instead.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                w = m.weight
                norm = w.reshape(w.shape[0], -1).norm(dim=1).clamp_min(1e-12)
                w.div_(norm.reshape(-1, *([1] * (w.ndim - 1))))
