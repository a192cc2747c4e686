"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, 2024 update)."""

from __future__ import annotations

import torch

from .base import SAE, LossContext, StepOutput


class ReluSAE(SAE):
    """``z = ReLU((x - b_dec) W_encᵀ + b_enc)``; loss ``‖x - x̂‖² + λ Σ_i z_i ‖W_dec,i‖``.

    Parameters
    ----------
    l1_coeff
        λ, per sample, in units of the standardised inputs (``E‖x‖ = √d_in``). The
        default 5 is Anthropic's (April 2024 update) for that scaling: with random
        feature directions the interference on a pre-activation has a standard deviation
        of about 1 in these units, and λ/2 is the amount by which a code is shrunk, so
        λ = 5 keeps codes below about 2.5 noise standard deviations off.
    target_l0
        If given, λ is steered during training so that about this many latents fire per
        sample (``l1_coeff`` is then only the starting value).
    l0_gain
        Exponent of the controller's per-step correction ``(L0 / target_l0) ** l0_gain``.
    """

    arch = "relu"

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float = 5.0,
                 target_l0: float | None = None, l0_gain: float = 0.02, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self._init_penalty(l1_coeff, target_l0, l0_gain)

    def hparams(self):
        return {**super().hparams(), "l1_coeff": self.l1_coeff, "target_l0": self.target_l0,
                "l0_gain": self.l0_gain}

    @torch.no_grad()
    def initialise_from_data(self, x: torch.Tensor) -> None:
        """With ``target_l0``: encoder biases that make about that many latents fire on
        ``x`` from the first step (zero biases fire half of all latents)."""
        if self.target_l0 is not None:
            self.b_enc.copy_(-self._firing_cut(x, self.target_l0))

    def encode_normalised(self, x):
        return torch.relu(self._preacts(x, self.W_enc, self.b_enc))

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        pre = torch.nn.functional.linear(self._centered(x), self.W_enc, self.b_enc)
        codes = torch.relu(pre)
        x_hat = self.decode_normalised(codes)
        recon = self._recon(x, x_hat, ctx.sample_weight)
        sparsity = (codes.float() * self.W_dec.norm(dim=1)).sum(-1).mean()
        loss = recon + ctx.sparsity_scale * self._penalty_coeff() * sparsity
        aux = self._auxk_dead(x, x_hat, pre.detach(), ctx)
        if aux is not None:
            loss = loss + aux
        active = codes.detach() > 0
        l0 = float(active.sum(1).float().mean())
        self._adapt_penalty(l0, ctx)
        return StepOutput(loss=loss, x_hat=x_hat, fired=active.any(0), l0=l0,
                          parts={"recon": float(recon.detach()), "sparsity": float(sparsity.detach()),
                                 "l1_coeff": float(self._penalty_coeff()),
                                 "aux": float(aux.detach()) if aux is not None else 0.0})
