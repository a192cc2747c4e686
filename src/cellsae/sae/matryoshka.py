"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

Nested prefixes of the dictionary must each reconstruct the input on their own, so the
first latents learn general features and later ones refine them, which counters feature
absorption when features are hierarchical.
"""

from __future__ import annotations

import torch

from ._sparse import sparse_decode
from .base import LossContext, StepOutput
from .batchtopk import BatchTopKSAE


def default_group_sizes(d_sae: int) -> list[int]:
    """Prefix groups of d_sae/32, /32, /16, /8, /4 and the rest."""
    sizes = [max(1, d_sae // f) for f in (32, 32, 16, 8, 4)]
    sizes = [s for s in sizes if s > 0]
    while sum(sizes) >= d_sae and sizes:
        sizes.pop()
    return sizes + [d_sae - sum(sizes)]


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose loss is the mean reconstruction error over nested prefixes.

    Parameters
    ----------
    group_sizes
        Sizes of consecutive latent groups; prefix ``g`` is groups ``0..g``. They must sum
        to ``d_sae``. Default: d_sae/32, /32, /16, /8, /4 and the remainder.
    """

    arch = "matryoshka"

    def __init__(self, d_in: int, d_sae: int, *, k: int = 32,
                 group_sizes: list[int] | None = None, **kwargs) -> None:
        super().__init__(d_in, d_sae, k=k, **kwargs)
        group_sizes = default_group_sizes(d_sae) if group_sizes is None else \
            [int(g) for g in group_sizes]
        if sum(group_sizes) != d_sae or min(group_sizes) < 1:
            raise ValueError(f"group_sizes must be positive and sum to d_sae={d_sae}, got "
                             f"{group_sizes}")
        self.group_sizes = group_sizes

    def hparams(self):
        return {**super().hparams(), "group_sizes": list(self.group_sizes)}

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        with torch.no_grad():
            pre = self._preacts(x, self.W_enc, self.b_enc)
            crow, cols = self._select(pre, ctx)
        x_hat, vals, recon, aux = self._sparse_step(x, pre, crow, cols, ctx)
        # Prefix reconstructions, built up group by group from the same active set.
        ends = torch.tensor(self.group_sizes, device=x.device).cumsum(0)
        group_of = torch.bucketize(cols, ends, right=True)
        partial = self.b_dec.expand_as(x)
        prefix_losses = []
        for g in range(len(self.group_sizes) - 1):
            part = sparse_decode(crow, cols, vals * (group_of == g), self.W_dec)
            partial = partial + part
            prefix_losses.append(self._recon(x, partial, ctx.sample_weight))
        prefix_losses.append(recon)
        loss = torch.stack(prefix_losses).mean()
        if aux is not None:
            loss = loss + aux
        active = vals.detach() > 0
        return StepOutput(loss=loss, x_hat=x_hat, fired=self._fired_from_cols(cols, vals),
                          l0=float(active.sum()) / x.shape[0],
                          parts={"recon": float(recon.detach()),
                                 "recon_first_prefix": float(prefix_losses[0].detach()),
                                 "aux": float(aux.detach()) if aux is not None else 0.0})
