"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, 2024 update)."""

from __future__ import annotations

import torch

from .base import SAE, LossContext, StepOutput


class ReluSAE(SAE):
    """``z = ReLU((x - b_dec) W_encᵀ + b_enc)``; loss ``‖x - x̂‖² + λ Σ_i z_i ‖W_dec,i‖``.

    Parameters
    ----------
    l1_coeff
        λ, per sample, in units of the standardised inputs (``E‖x‖ = √d_in``).
    """

    arch = "relu"

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float = 3.0, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        if l1_coeff < 0:
            raise ValueError(f"l1_coeff must be non-negative, got {l1_coeff}")
        self.l1_coeff = float(l1_coeff)

    def hparams(self):
        return {**super().hparams(), "l1_coeff": self.l1_coeff}

    def encode_normalised(self, x):
        return torch.relu(self._preacts(x, self.W_enc, self.b_enc))

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        pre = torch.nn.functional.linear(self._centered(x), self.W_enc, self.b_enc)
        codes = torch.relu(pre)
        x_hat = self.decode_normalised(codes)
        recon = self._recon(x, x_hat)
        sparsity = (codes.float() * self.W_dec.norm(dim=1)).sum(-1).mean()
        loss = recon + ctx.sparsity_scale * self.l1_coeff * sparsity
        aux = self._auxk_dead(x, x_hat, pre.detach(), ctx)
        if aux is not None:
            loss = loss + aux
        active = codes.detach() > 0
        return StepOutput(loss=loss, x_hat=x_hat, fired=active.any(0),
                          l0=float(active.sum(1).float().mean()),
                          parts={"recon": float(recon.detach()), "sparsity": float(sparsity.detach()),
                                 "aux": float(aux.detach()) if aux is not None else 0.0})
