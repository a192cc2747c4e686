"""Augmentations for fluorescence crops, applied to whole batches on the training device.

Every transform acts on each channel separately (nothing mixes channels, since each
channel is a different stain): 90° rotations, flips, a small affine warp, per-channel
intensity scaling, Gaussian blur and Gaussian noise.

Random parameters are drawn for the *global* batch from one CPU ``torch.Generator`` and
sliced for the rows this process holds (``offset``), so a batch split across
DistributedDataParallel processes is augmented exactly as it would be in one process,
and a saved generator state resumes the same stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import StrictModel


class AugmentConfig(StrictModel):
    """Which augmentations to apply and how strongly.

    Attributes
    ----------
    rot90 : random multiple of 90° per crop.
    flip : random horizontal flip per crop (with rot90 this covers all 8 symmetries).
    affine_p : probability of a small affine warp (rotation, scale, shift).
    max_rotation : largest rotation of the affine warp, degrees.
    max_scale : largest relative zoom in or out (0.1 = 0.9–1.1).
    max_shift : largest shift as a fraction of the crop side.
    intensity_scale : s.d. of the log of a per-channel intensity factor.
    blur_p : probability of a Gaussian blur with σ drawn in ``blur_sigma``.
    blur_sigma : (low, high) range of the blur σ in pixels.
    noise : s.d. of additive Gaussian noise relative to each crop channel's s.d.
    """

    rot90: bool = True
    flip: bool = True
    affine_p: float = 0.5
    max_rotation: float = 10.0
    max_scale: float = 0.1
    max_shift: float = 0.05
    intensity_scale: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise: float = 0.05


NO_AUGMENT = AugmentConfig(rot90=False, flip=False, affine_p=0.0, intensity_scale=0.0,
                           blur_p=0.0, noise=0.0)
ROT90_ONLY = AugmentConfig(rot90=True, flip=False, affine_p=0.0, intensity_scale=0.0,
                           blur_p=0.0, noise=0.0)  # the paper's only augmentation


def _rot90_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for turns in (1, 2, 3):
        sel = torch.nonzero(k == turns).flatten()
        if len(sel):
            out[sel] = torch.rot90(x[sel], turns, dims=(-2, -1))
    return out


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator, *,
            n_total: int | None = None, offset: int = 0) -> torch.Tensor:
    """Augment a batch of crops.

    Parameters
    ----------
    x : (n, C, H, W) float tensor (raw intensities; on any device).
    config : which augmentations and how strong.
    generator : CPU ``torch.Generator`` the random parameters are drawn from.
    n_total : size of the global batch the parameters are drawn for (default ``n``).
    offset : first row of the global batch that ``x`` holds.

    Returns
    -------
    (n, C, H, W) float tensor.
    """
    n, c, h, w = x.shape
    n_total = n if n_total is None else int(n_total)
    if offset < 0 or offset + n > n_total:
        raise ValueError(f"rows {offset}:{offset + n} do not fit a global batch of {n_total}")
    rows = slice(offset, offset + n)
    dev = x.device

    def draw(*shape):
        return torch.rand(n_total, *shape, generator=generator)[rows].to(dev)

    def draw_normal(*shape):
        return torch.randn(n_total, *shape, generator=generator)[rows].to(dev)

    # draw every parameter whichever transforms are on, so the stream depends only on the
    # config's noise switch (the noise image is drawn only when used)
    k_rot = torch.randint(0, 4, (n_total,), generator=generator)[rows].to(dev)
    u_flip = draw()
    u_affine = draw()
    affine_params = draw(4)
    u_blur = draw()
    sigma_u = draw()
    log_scale = draw_normal(c)
    # drawn for the global batch and sliced like the other parameters, so DDP processes
    # add what one process would (n_total crops of float32: 4 MiB for 64 × 4×64×64)
    noise = torch.randn(n_total, c, h, w, generator=generator) if config.noise > 0 else None

    x = x.float()
    if config.rot90:
        x = _rot90_batch(x, k_rot)
    if config.flip:
        x = torch.where((u_flip < 0.5)[:, None, None, None], x.flip(-1), x)
    if config.affine_p > 0:
        sel = torch.nonzero(u_affine < config.affine_p).flatten()
        if len(sel):
            p = affine_params[sel]
            angle = (2 * p[:, 0] - 1) * math.radians(config.max_rotation)
            scale = 1 + (2 * p[:, 1] - 1) * config.max_scale
            shift = (2 * p[:, 2:4] - 1) * config.max_shift * 2  # grid units span 2
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                                 torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, [len(sel), c, h, w], align_corners=False)
            x = x.clone()
            x[sel] = F.grid_sample(x[sel], grid, mode="bilinear", padding_mode="reflection",
                                   align_corners=False)
    if config.intensity_scale > 0:
        x = x * torch.exp(config.intensity_scale * log_scale)[:, :, None, None]
    if config.blur_p > 0:
        sel = torch.nonzero(u_blur < config.blur_p).flatten()
        if len(sel):
            lo, hi = config.blur_sigma
            # separable Gaussian with each crop's own σ: a weighted sum of shifted copies
            # (2r + 1 taps per axis; no per-shape convolution set-up)
            sigma = lo + (hi - lo) * sigma_u[sel]
            radius = max(1, math.ceil(2 * hi))
            taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=dev)
            k1 = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
            k1 = (k1 / k1.sum(1, keepdim=True))[:, :, None, None, None]
            sub = F.pad(x[sel], (radius,) * 4, mode="reflect")
            sub = sum(k1[:, i] * sub[..., i:i + w] for i in range(2 * radius + 1))
            sub = sum(k1[:, i] * sub[..., i:i + h, :] for i in range(2 * radius + 1))
            x = x.clone()
            x[sel] = sub
    if config.noise > 0:
        std = x.std(dim=(2, 3), keepdim=True)
        x = x + config.noise * std * noise[rows].to(dev)
    return x
