"""cellsae: interpretable cell states from single-cell microscopy.

Images of single cells → CNN embeddings → sparse autoencoder latents that behave like
genes → scanpy-style analysis → Gromov–Wasserstein alignment with scRNA-seq → nested
gene-module hierarchies. Subpackages are imported lazily so ``import cellsae`` is cheap.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

_SUBMODULES = {
    "datasets", "images", "embed", "sae", "metrics", "tl", "align", "pathways", "pl",
    "report", "crops", "config", "pipeline",
}

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cellsae' has no attribute {name!r}")


__all__ = ["__version__", *sorted(_SUBMODULES)]
