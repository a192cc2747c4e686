"""A ResNet-style CNN for crops with any number of channels.

Two block styles:

- ``preact=True`` (the paper's): ReLU → conv3×3 → ReLU → conv3×3, plus the identity (or
  a bias-free 1×1 projection when the width or resolution changes); a normalisation
  layer, if any, precedes each ReLU.
- ``preact=False``: conv → norm → ReLU → conv → norm, add, ReLU (He et al. 2016).

``norm="none"`` with ``weight_renorm=True`` reproduces the paper's network, which has no
normalisation layer and rescales each weight to unit norm per output channel after
every optimiser step. :func:`resnet_paper` builds the paper's full configuration.

Taps: ``stem``, ``stage{i}.{j}`` (after block j of stage i, both from 1),
``stage{i}`` (after the whole stage) and ``refine`` when ``refine_blocks > 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Encoder, register_encoder, renorm_unit_per_out_channel_

NORMS = ("batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, preact: bool):
        super().__init__()
        bias = norm == "none"
        self.preact = preact
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm1 = _norm(norm, c_in if preact else c_out)
        self.norm2 = _norm(norm, c_out)
        self.act = nn.ReLU(inplace=False)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))

    def forward(self, x):
        if self.preact:
            out = self.conv1(self.act(self.norm1(x)))
            out = self.conv2(self.act(self.norm2(out)))
            return out + self.shortcut(x)
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


@register_encoder("resnet")
class ResNetEncoder(Encoder):
    """ResNet-style encoder.

    Parameters
    ----------
    in_channels : number of image channels.
    widths : channels of each stage.
    blocks : residual blocks per stage (same length as ``widths``).
    strides : stride of each stage's first block (default 1 for the first stage, 2 after).
    stem_width : channels of the stem convolution (default ``widths[0]``).
    stem_stride : stride of the 3×3 stem (2 halves the crop, as in the paper).
    refine_blocks : extra blocks at the last width and resolution (tap ``refine``).
    norm : ``batch``, ``group`` or ``none``.
    preact : pre-activation blocks (the paper's) or the classic post-activation ones.
    weight_renorm : rescale weights to unit norm per output channel at init and after
        every step (default: on exactly when ``norm="none"``).
    input_norm : see :class:`~cellsae.embed.base.Encoder`.
    """

    def __init__(self, in_channels: int = 4, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1), strides: Sequence[int] | None = None,
                 stem_width: int | None = None, stem_stride: int = 2, refine_blocks: int = 0,
                 norm: str = "group", preact: bool = True, weight_renorm: bool | None = None,
                 input_norm: str = "dataset"):
        super().__init__(in_channels, input_norm)
        widths = [int(w) for w in widths]
        blocks = [int(b) for b in blocks]
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"widths and blocks must be non-empty and equally long, got "
                             f"{widths} and {blocks}")
        if min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"widths and blocks must be positive, got {widths} and {blocks}")
        strides = [1] + [2] * (len(widths) - 1) if strides is None else [int(s) for s in strides]
        if len(strides) != len(widths) or min(strides) < 1:
            raise ValueError(f"strides must have one positive entry per stage, got {strides}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        stem_width = int(stem_width or widths[0])
        weight_renorm = (norm == "none") if weight_renorm is None else bool(weight_renorm)
        self._params.update(widths=widths, blocks=blocks, strides=strides,
                            stem_width=stem_width, stem_stride=int(stem_stride),
                            refine_blocks=int(refine_blocks), norm=norm, preact=bool(preact),
                            weight_renorm=weight_renorm)
        self.weight_renorm = weight_renorm
        self.preact = bool(preact)
        stem = [nn.Conv2d(self.in_channels, stem_width, 3, stride=int(stem_stride), padding=1,
                          bias=norm == "none")]
        if not preact:
            stem += [_norm(norm, stem_width), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self._taps: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        self._dims = {"stem": stem_width}
        self.layers = nn.ModuleList()
        c = stem_width
        for i, (width, n_blocks, stride) in enumerate(zip(widths, blocks, strides, strict=True),
                                                      start=1):
            for j in range(1, n_blocks + 1):
                block = _Block(c, width, stride if j == 1 else 1, norm, preact)
                self.layers.append(block)
                name = f"stage{i}" if j == n_blocks else f"stage{i}.{j}"
                self._taps.append((name, block))
                self._dims[name] = width
                if j == n_blocks:
                    self._dims[f"stage{i}.{j}"] = width
                c = width
        for j in range(1, int(refine_blocks) + 1):
            block = _Block(c, c, 1, norm, preact)
            self.layers.append(block)
            name = "refine" if j == int(refine_blocks) else f"refine.{j}"
            self._taps.append((name, block))
            self._dims[name] = c
        self._aliases = {f"stage{i}.{b}": f"stage{i}" for i, b in enumerate(blocks, start=1)}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.weight_renorm:
            renorm_unit_per_out_channel_(self)

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self._taps]

    @property
    def stage_dims(self) -> dict[str, int]:
        return dict(self._dims)

    def _run(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        wanted_full = {self._aliases.get(w, w) for w in wanted}
        out: dict[str, torch.Tensor] = {}
        remaining = set(wanted_full)
        for name, module in self._taps:
            x = module(x)
            if name in remaining:
                out[name] = x
                remaining.discard(name)
                if not remaining:
                    break
        return {w: out[self._aliases.get(w, w)] for w in wanted}


def resnet_paper(in_channels: int = 3, **overrides) -> ResNetEncoder:
    """The paper's encoder: stride-2 stem 64, stages 128/256/512/512 with 2/2/2/3
    pre-activation blocks at stride 1 (64×64 maps to the end for 128 px input), one
    refine block, no normalisation, unit-norm weights. Heavy: for GPUs."""
    params = dict(in_channels=in_channels, widths=(128, 256, 512, 512), blocks=(2, 2, 2, 3),
                  strides=(1, 1, 1, 1), stem_width=64, stem_stride=2, refine_blocks=1,
                  norm="none", preact=True, weight_renorm=True, input_norm="instance")
    params.update(overrides)
    return ResNetEncoder(**params)
