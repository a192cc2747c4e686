"""TopK SAE (Gao et al. 2024): keep each sample's k largest pre-activations."""

from __future__ import annotations

import torch

from ._sparse import topk_structure
from .base import SAE, LossContext, StepOutput


class TopKSAE(SAE):
    """``z = TopK_k(ReLU((x - b_dec) W_encᵀ + b_enc))``; loss ``‖x - x̂‖²`` (+ AuxK).

    Training uses sparse kernels: only the k active latents of each sample are decoded and
    receive gradients.

    Parameters
    ----------
    k
        Active latents per sample.
    """

    arch = "topk"
    sparse_training = True

    def __init__(self, d_in: int, d_sae: int, *, k: int = 32, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        if not 1 <= k <= d_sae:
            raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
        self.k = int(k)

    def hparams(self):
        return {**super().hparams(), "k": self.k}

    def encode_normalised(self, x):
        pre = self._preacts(x, self.W_enc, self.b_enc)
        values, idx = pre.topk(self.k, dim=1, sorted=False)
        return torch.zeros_like(pre).scatter_(1, idx, torch.relu(values))

    def _select(self, pre: torch.Tensor, ctx: LossContext):
        return topk_structure(pre, self.k)

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        with torch.no_grad():
            pre = self._preacts(x, self.W_enc, self.b_enc)
            crow, cols = self._select(pre, ctx)
        x_hat, vals, recon, aux = self._sparse_step(x, pre, crow, cols, ctx)
        loss = recon if aux is None else recon + aux
        active = vals.detach() > 0
        return StepOutput(loss=loss, x_hat=x_hat, fired=self._fired_from_cols(cols, vals),
                          l0=float(active.sum()) / x.shape[0],
                          parts={"recon": float(recon.detach()),
                                 "aux": float(aux.detach()) if aux is not None else 0.0})
