"""Small planted data sets for the embed tests."""

from __future__ import annotations

import numpy as np


def planted_crops(n_per_donor: int = 12, n_donors_per_class: int = 3, n_classes: int = 3,
                  channels: int = 3, size: int = 16, seed: int = 0):
    """Crops where class k puts a bright blob in channel k; donors only add noise.

    Returns crops (n, C, S, S) float32, labels (n,) str, donors (n,) str.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 3) ** 2)
    crops, labels, donors = [], [], []
    for k in range(n_classes):
        for d in range(n_donors_per_class):
            x = rng.normal(0, 0.5, size=(n_per_donor, channels, size, size))
            x[:, k % channels] += 2.0 * blob * rng.uniform(0.7, 1.3, size=(n_per_donor, 1, 1))
            crops.append(x)
            labels += [f"class{k}"] * n_per_donor
            donors += [f"c{k}d{d}"] * n_per_donor
    return (np.concatenate(crops).astype(np.float32), np.array(labels), np.array(donors))
