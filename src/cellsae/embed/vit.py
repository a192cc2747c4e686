"""A small vision transformer for crops with any number of channels.

Patch embedding (a ``patch_size`` × ``patch_size`` convolution), learned position
embeddings, ``depth`` pre-norm transformer blocks. Taps: ``patch_embed`` and
``block{i}`` (from 1); each returns the patch tokens as a spatial map ``(n, d, h, w)``
with ``h = H / patch_size``, so pooled embeddings and spatial tokens come out exactly
as for the CNN. The last tap applies the final LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Encoder, register_encoder


@register_encoder("vit")
class ViTEncoder(Encoder):
    """Small ViT.

    Parameters
    ----------
    in_channels : number of image channels.
    image_size : crop side H = W the position embeddings are made for.
    patch_size : side of each patch; must divide ``image_size``.
    dim : token width.
    depth : number of transformer blocks.
    heads : attention heads (must divide ``dim``).
    mlp_ratio : hidden width of each block's MLP relative to ``dim``.
    dropout : dropout inside the blocks.
    input_norm : see :class:`~cellsae.embed.base.Encoder`.
    """

    def __init__(self, in_channels: int = 4, image_size: int = 64, patch_size: int = 8,
                 dim: int = 96, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0, input_norm: str = "dataset"):
        super().__init__(in_channels, input_norm)
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        if dim % heads:
            raise ValueError(f"heads {heads} must divide dim {dim}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._params.update(image_size=int(image_size), patch_size=int(patch_size), dim=int(dim),
                            depth=int(depth), heads=int(heads), mlp_ratio=float(mlp_ratio),
                            dropout=float(dropout))
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.grid = self.image_size // self.patch_size
        self.dim = int(dim)
        self.patch_embed = nn.Conv2d(self.in_channels, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(dim)

    @property
    def stage_names(self) -> list[str]:
        return ["patch_embed"] + [f"block{i}" for i in range(1, len(self.blocks) + 1)]

    @property
    def stage_dims(self) -> dict[str, int]:
        return {name: self.dim for name in self.stage_names}

    def _run(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this ViT was built for {self.image_size}×{self.image_size} crops, "
                             f"got {tuple(x.shape[-2:])}")
        n = x.shape[0]
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed

        def as_map(t):
            return t.transpose(1, 2).reshape(n, self.dim, self.grid, self.grid)

        out = {}
        if "patch_embed" in wanted:
            out["patch_embed"] = as_map(tokens)
        last = len(self.blocks)
        for i, block in enumerate(self.blocks, start=1):
            if len(out) == len(wanted):
                break
            tokens = block(tokens)
            name = f"block{i}"
            if name in wanted:
                out[name] = as_map(self.norm(tokens) if i == last else tokens)
        return out
