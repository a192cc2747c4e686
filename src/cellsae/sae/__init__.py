"""Sparse autoencoders: architectures, training, checkpoints, pooling and evaluation.

>>> sae = cellsae.sae.train(X, arch="batchtopk", d_sae=4096, k=32)
>>> codes = sae.encode(X)            # (n, d_sae) CSR
>>> sae.save("model.safetensors"); sae = cellsae.sae.load("model.safetensors")
"""

from .base import SAE
from .batchtopk import BatchTopKSAE
from .data import BatchStream, open_source
from .evaluate import evaluate
from .gated import GatedSAE
from .io import FORMAT_VERSION, load
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .pooling import pool_codes
from .registry import ARCHITECTURES, PRESETS, get_architecture, make_sae, register
from .relu import ReluSAE
from .topk import TopKSAE
from .trainer import TrainConfig, train, train_sweep

__all__ = [
    "ARCHITECTURES", "PRESETS", "SAE", "BatchStream", "BatchTopKSAE", "FORMAT_VERSION",
    "GatedSAE", "JumpReLUSAE", "MatryoshkaSAE", "ReluSAE", "TopKSAE", "TrainConfig",
    "evaluate", "get_architecture", "load", "make_sae", "open_source", "pool_codes",
    "register", "train", "train_sweep",
]
