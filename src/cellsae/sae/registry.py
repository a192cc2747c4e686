"""Architecture registry and named presets."""

from __future__ import annotations

import inspect
from typing import Any

from .base import SAE
from .batchtopk import BatchTopKSAE
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .relu import ReluSAE
from .topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Add an SAE class to the registry under ``cls.arch`` (usable as a decorator)."""
    if not cls.arch:
        raise ValueError(f"{cls.__name__} must set a non-empty class attribute `arch`")
    ARCHITECTURES[cls.arch] = cls
    return cls


for _cls in (ReluSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, MatryoshkaSAE):
    register(_cls)


# Presets: keyword arguments for `train`. The paper's gated SAE (REFERENCE_CODE.md §5):
# gate and magnitude weights tied with no r_mag rescale, unit-norm tokens, no
# standardisation, λ = 800 averaged over latents (``l1_total``, the one source of λ: the
# trainer turns it into l1_coeff = 800 / d_sae, 800/8192 at the default size), AuxK on the top
# 32 gate-off latents with α = 1/32, AdamW 3e-4 (wd 1e-4), clip 1.0, 10 % warm-up then
# cosine decay, λ held at 0 for 100 steps then ramped over 10 % of training.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        arch="gated", d_sae=8192, l1_total=800.0, r_mag=False, init_std=0.02,
        gate_bias_init=0.1, pre_bias=False, l2_normalise_inputs=True, center=False, scale=False,
        lr=3e-4, weight_decay=1e-4, grad_clip=1.0, lr_warmup=0.1, lr_decay="cosine",
        sparsity_delay=100, sparsity_warmup=0.1, aux_alpha=1 / 32, k_aux=32,
        decoder_bias_init="zero",
    ),
}


def get_architecture(arch: str) -> type[SAE]:
    """The SAE class registered as ``arch``; a ValueError lists the known names."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {arch!r}; choose one of "
                         f"{sorted(ARCHITECTURES)}") from None


def architecture_params(arch: str) -> set[str]:
    """Names of the keyword arguments an architecture accepts (its own and the base's)."""
    names: set[str] = set()
    for klass in get_architecture(arch).__mro__:
        if klass is object or not issubclass(klass, SAE):
            continue
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if p.kind is p.KEYWORD_ONLY:
                names.add(name)
    return names


def make_sae(arch: str, d_in: int, d_sae: int, **hparams: Any) -> SAE:
    """Build an untrained SAE; unknown hyperparameters raise a ValueError naming them."""
    allowed = architecture_params(arch)
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ValueError(f"architecture {arch!r} does not take {unknown}; it takes "
                         f"{sorted(allowed)}")
    return get_architecture(arch)(d_in, d_sae, **hparams)
