"""Procedural rendering of neuron crops from visual parameters (vectorised over cells).

Every cell is drawn as sums of Gaussian spots (mitochondria, lysosomes, neurite beads,
nuclear fragments) and smooth ellipses (nucleus, soma). Spots are splatted with separable
Gaussians, so an image of K spots is one batched (S×K)·(K×S) matrix product: no Python
loop over cells or spots.
"""

from __future__ import annotations

import numpy as np
import torch

CHANNELS = ("mito", "lyso", "nucleus", "death")


def _grid(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float32) + 0.5


def splat(px, py, amp, sigma, size: int) -> np.ndarray:
    """Sum of isotropic Gaussian spots.

    Parameters
    ----------
    px, py, amp, sigma : (n, k) arrays
        Spot centres (pixels), amplitudes (0 disables a spot) and widths.
    size : crop side S.

    Returns
    -------
    (n, S, S) float32 image, rows = y, columns = x.
    """
    grid = _grid(size)
    inv = 1.0 / np.maximum(sigma, 1e-3)[..., None]
    gx = np.exp(-0.5 * ((grid - px[..., None]) * inv) ** 2, dtype=np.float32)
    gy = np.exp(-0.5 * ((grid - py[..., None]) * inv) ** 2, dtype=np.float32)
    gy *= amp[..., None].astype(np.float32)
    # torch's batched GEMM: numpy's stacked matmul is ~100x slower on these shapes
    return torch.bmm(torch.from_numpy(gy).transpose(1, 2), torch.from_numpy(gx)).numpy()


def ellipse(cx, cy, a, b, theta, size: int, sharpness: float = 6.0) -> np.ndarray:
    """Soft-edged filled ellipses, (n, S, S) in [0, 1]; a, b are semi-axes in pixels."""
    grid = _grid(size)
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * cos + dy * sin) / a[:, None, None]
    v = (-dx * sin + dy * cos) / b[:, None, None]
    q = np.sqrt(u * u + v * v)
    return (1.0 / (1.0 + np.exp(np.clip((q - 1.0) * sharpness * 2, -30, 30)))).astype(np.float32)


def _polar_points(rng, n, k, cx, cy, r_min, r_max, concentration):
    """k points per cell in an annulus; higher ``concentration`` pulls them inward."""
    u = rng.random((n, k), dtype=np.float32) ** (1.0 + 3.0 * concentration[:, None])
    rho = r_min[:, None] + (r_max - r_min)[:, None] * u
    ang = rng.random((n, k), dtype=np.float32) * 2 * np.pi
    return cx[:, None] + rho * np.cos(ang), cy[:, None] + rho * np.sin(ang)


def render_cells(params: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Render clean (noise-free) 4-channel crops.

    Parameters
    ----------
    params : dict of (n,) arrays in [0, 1], one per visual factor (see
        ``cellsae.datasets.world.FACTOR_NAMES``), plus ``dead`` (bool).
    size : crop side S (pixels); geometry scales with S.

    Returns
    -------
    (n, 4, S, S) float32, channels ``mito, lyso, nucleus, death``.
    """
    p = params
    n = len(p["mito_count"])
    s = size / 64.0
    f32 = np.float32
    cx = (size / 2 + rng.normal(0, 0.7 * s, n)).astype(f32)
    cy = (size / 2 + rng.normal(0, 0.7 * s, n)).astype(f32)

    # nucleus: area, eccentricity, condensation shrink it; fragmentation breaks it up
    r_nuc = (5.0 + 3.5 * p["nuclear_area"]) * s * (1.0 - 0.3 * p["nuclear_condensation"])
    ecc = 1.0 + 0.7 * p["nuclear_eccentricity"]
    theta = rng.random(n, dtype=f32) * np.pi
    nuc_body = ellipse(cx, cy, r_nuc * np.sqrt(ecc), r_nuc / np.sqrt(ecc), theta, size)
    k_frag = 6
    fx, fy = _polar_points(rng, n, k_frag, cx, cy, 0.2 * r_nuc, 1.4 * r_nuc, np.zeros(n, f32))
    frag_sigma = np.broadcast_to((0.9 + 0.6 * rng.random((n, 1), dtype=f32)) * s, (n, k_frag))
    frags = splat(fx, fy, np.ones((n, k_frag), f32), frag_sigma, size)
    frags /= np.maximum(frags.reshape(n, -1).max(1), 1e-6)[:, None, None]
    fr = p["nuclear_fragmentation"][:, None, None]
    nucleus = (1 - fr) * nuc_body + fr * frags
    chromatin = 1.0 + 0.25 * _smooth_noise(rng, n, size)
    nuc_level = (0.45 + 0.5 * p["nuclear_intensity"]) * (1.0 + 0.8 * p["nuclear_condensation"])
    nucleus_img = nucleus * chromatin * nuc_level[:, None, None]

    # soma: the cytoplasm around the nucleus
    r_soma = r_nuc * (1.6 + 1.1 * p["soma_size"])
    soma = ellipse(cx + rng.normal(0, s, n).astype(f32), cy + rng.normal(0, s, n).astype(f32),
                   r_soma * 1.1, r_soma * 0.95, rng.random(n, dtype=f32) * np.pi, size,
                   sharpness=3.0)
    soma_level = 0.05 + 0.12 * p["soma_intensity"]

    # neurites: chains of beads from the soma edge outward, some with a side branch
    n_neurite_max, beads = 5, 12
    n_neurite = 1 + np.rint(4 * p["neurite_count"]).astype(int)
    ang0 = rng.random((n, n_neurite_max), dtype=f32) * 2 * np.pi
    length = (10 + 18 * p["neurite_length"])[:, None] * s * (0.8 + 0.4 * rng.random((n, n_neurite_max), dtype=f32))
    step = np.linspace(0, 1, beads, dtype=f32)
    rad = r_soma[:, None, None] + length[..., None] * step
    wob = 0.15 * rng.standard_normal((n, n_neurite_max, 1), dtype=f32) * step
    ang = ang0[..., None] + wob
    nx, ny = cx[:, None, None] + rad * np.cos(ang), cy[:, None, None] + rad * np.sin(ang)
    alive = (np.arange(n_neurite_max)[None, :] < n_neurite[:, None]).astype(f32)
    # side branches start half way, at ±45 degrees
    has_branch = (rng.random((n, n_neurite_max)) < p["neurite_branching"][:, None]).astype(f32) * alive
    bstep = np.linspace(0, 0.6, beads // 2, dtype=f32)
    bang = ang0[..., None] + np.where(rng.random((n, n_neurite_max, 1)) < 0.5, 0.8, -0.8).astype(f32)
    bx0, by0 = nx[:, :, beads // 2], ny[:, :, beads // 2]
    bx = bx0[..., None] + length[..., None] * bstep * np.cos(bang)
    by = by0[..., None] + length[..., None] * bstep * np.sin(bang)
    thick = (0.7 + 0.8 * p["neurite_thickness"])[:, None] * s
    px = np.concatenate([nx.reshape(n, -1), bx.reshape(n, -1)], 1)
    py = np.concatenate([ny.reshape(n, -1), by.reshape(n, -1)], 1)
    amp = np.concatenate([np.repeat(alive, beads, 1), np.repeat(has_branch, beads // 2, 1)], 1)
    neurites = splat(px, py, amp * 0.35, np.broadcast_to(thick, px.shape), size)

    # mitochondria: chains of beads; long when healthy, short and many when fragmented
    k_mito, bead_max = 48, 4
    n_mito = (12 + 36 * p["mito_count"] * (0.6 + 0.4 * p["mito_fragmentation"])).astype(int)
    mx, my = _polar_points(rng, n, k_mito, cx, cy, 0.7 * r_nuc, 1.15 * r_soma, p["mito_perinuclear"])
    n_bead = 1 + np.rint((bead_max - 1) * p["mito_length"] * (1 - 0.8 * p["mito_fragmentation"]))
    mang = rng.random((n, k_mito, 1), dtype=f32) * 2 * np.pi
    off = np.arange(bead_max, dtype=f32) * 1.3 * s
    bx_ = mx[..., None] + off * np.cos(mang)
    by_ = my[..., None] + off * np.sin(mang)
    on = (np.arange(k_mito)[None, :, None] < n_mito[:, None, None]) & \
         (np.arange(bead_max)[None, None, :] < n_bead[:, None, None])
    mamp = on.astype(f32) * (0.3 + 0.7 * p["mito_intensity"])[:, None, None]
    mito = splat(bx_.reshape(n, -1), by_.reshape(n, -1), mamp.reshape(n, -1),
                 np.full((n, k_mito * bead_max), 0.9 * s, f32), size)

    # lysosomes: round puncta, count / size / brightness / perinuclear clustering
    k_lyso = 36
    n_lyso = (6 + 30 * p["lyso_count"]).astype(int)
    lx, ly = _polar_points(rng, n, k_lyso, cx, cy, 0.8 * r_nuc, 1.1 * r_soma, p["lyso_clustering"])
    lsig = ((0.8 + 1.4 * p["lyso_size"])[:, None] * s * (0.8 + 0.4 * rng.random((n, k_lyso), dtype=f32)))
    lamp = (np.arange(k_lyso)[None, :] < n_lyso[:, None]) * (0.3 + 0.9 * p["lyso_brightness"])[:, None]
    lyso = splat(lx, ly, lamp.astype(f32), lsig, size)

    out = np.empty((n, 4, size, size), f32)
    out[:, 0] = mito + 0.6 * neurites + soma * soma_level[:, None, None]
    out[:, 1] = lyso + 0.15 * neurites + soma * (0.6 * soma_level)[:, None, None]
    out[:, 2] = nucleus_img
    death_level = 0.03 + 0.9 * p["death_dye"]
    out[:, 3] = nucleus * death_level[:, None, None] + 0.02 * soma
    return out


_NOISE_BANK: dict[int, np.ndarray] = {}


def _smooth_noise(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, S, S) smooth unit-scale noise drawn from a small per-size bank (cheap)."""
    if size not in _NOISE_BANK:
        bank_rng = np.random.default_rng(size)
        white = bank_rng.standard_normal((16, size, size)).astype(np.float32)
        freq = np.fft.fftfreq(size)
        kern = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) * (size / 6.0) ** 2 * 8)
        smooth = np.fft.ifft2(np.fft.fft2(white) * kern).real
        smooth /= smooth.std(axis=(1, 2), keepdims=True)
        _NOISE_BANK[size] = smooth.astype(np.float32)
    bank = _NOISE_BANK[size]
    pick = bank[rng.integers(0, len(bank), n)]
    k = int(rng.integers(0, 4))
    return np.rot90(pick, k, axes=(1, 2))


def gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Blur each image (n, C, S, S) with its own Gaussian width ``sigma`` (n,) via FFT."""
    size_y, size_x = images.shape[-2:]
    fy = np.fft.fftfreq(size_y)[:, None]
    fx = np.fft.rfftfreq(size_x)[None, :]
    f2 = (fy**2 + fx**2).astype(np.float32)
    transfer = np.exp(-2 * np.pi**2 * sigma[:, None, None, None] ** 2 * f2)
    return np.fft.irfft2(np.fft.rfft2(images) * transfer, s=(size_y, size_x)).astype(np.float32)


def add_nuisance(clean: np.ndarray, rng: np.random.Generator, *, gain: np.ndarray,
                 offset: np.ndarray, blur_sigma: np.ndarray, photons: float = 300.0,
                 debris_rate: float = 0.5) -> np.ndarray:
    """Acquisition nuisances on clean crops: debris, per-cell intensity gain and background
    offset (donor / plate effects), illumination gradient, blur, shot and read noise.

    gain, offset : (n, C) multiplicative gain and additive background per cell and channel.
    blur_sigma : (n,) optical blur in pixels.
    """
    n, c, size, _ = clean.shape
    img = clean.copy()
    # neighbour debris: bright small blobs near the crop edge in random channels
    k = 3
    edge = rng.random((n, k)) < debris_rate / k
    side = rng.integers(0, 4, (n, k))
    pos = rng.random((n, k)) * size
    near = rng.random((n, k)) * size * 0.12
    dx = np.where(side == 0, near, np.where(side == 1, size - near, pos)).astype(np.float32)
    dy = np.where(side == 2, near, np.where(side == 3, size - near, pos)).astype(np.float32)
    chan = rng.integers(0, c, (n, k))
    sig = (1.0 + 2.0 * rng.random((n, k))).astype(np.float32) * size / 64
    for ch in range(c):
        amp = (edge & (chan == ch)).astype(np.float32) * 0.8
        if amp.any():
            img[:, ch] += splat(dx, dy, amp, sig, size)
    # illumination gradient across the crop (a slice of the field's flat-field)
    grid = (np.arange(size, dtype=np.float32) / size - 0.5)
    ang = rng.random(n) * 2 * np.pi
    ramp = 1.0 + 0.15 * (np.cos(ang)[:, None, None] * grid[None, None, :]
                         + np.sin(ang)[:, None, None] * grid[None, :, None])
    img = img * ramp[:, None] * gain[:, :, None, None] + offset[:, :, None, None]
    img = gaussian_blur(img, blur_sigma)
    img = 2.0 * np.tanh(np.clip(img, 0, None) / 2.0)  # detector saturation
    img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    img += rng.normal(0, 0.005, img.shape).astype(np.float32)
    return img
