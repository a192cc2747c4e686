"""JumpReLU SAE (Rajamanoharan et al. 2024): per-latent thresholds, L0 penalty via STE."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import SAE, LossContext, StepOutput


def _window(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return x * (x > threshold)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_x = (x > threshold) * grad
        grad_t = (-(threshold / eps) * _window((x - threshold) / eps) * grad).sum(0)
        return grad_x, grad_t, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_t = (-(1.0 / eps) * _window((x - threshold) / eps) * grad).sum(0)
        return torch.zeros_like(x), grad_t, None


class JumpReLUSAE(SAE):
    """``z_i = pre_i · 1[pre_i > θ_i]``; loss ``‖x - x̂‖² + λ ‖z‖₀``.

    The step functions get straight-through pseudo-gradients (a rectangle kernel of width
    ``bandwidth``) for the thresholds. Thresholds start at the per-latent quantile of the
    first batch that makes about ``target_l0`` latents fire per sample, so training starts
    sparse instead of spending thousands of steps raising them.

    Parameters
    ----------
    l0_coeff
        λ, per sample, in units of the standardised inputs (``E‖x‖ = √d_in``).
    bandwidth
        Width of the straight-through kernel.
    target_l0
        Active latents per sample right after initialisation.
    """

    arch = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, *, l0_coeff: float = 1.0,
                 bandwidth: float = 0.05, target_l0: float = 32.0, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        if l0_coeff < 0 or bandwidth <= 0 or target_l0 <= 0:
            raise ValueError(f"l0_coeff must be >= 0 and bandwidth, target_l0 > 0; got "
                             f"{l0_coeff}, {bandwidth}, {target_l0}")
        self.l0_coeff = float(l0_coeff)
        self.bandwidth = float(bandwidth)
        self.target_l0 = float(target_l0)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(0.1)))

    def hparams(self):
        return {**super().hparams(), "l0_coeff": self.l0_coeff, "bandwidth": self.bandwidth,
                "target_l0": self.target_l0}

    @torch.no_grad()
    def initialise_from_data(self, x: torch.Tensor) -> None:
        threshold = (self._firing_cut(x, self.target_l0) + self.b_enc).clamp_min(1e-3)
        self.log_threshold.copy_(threshold.log())

    def _fold_thresholds(self, scale: float) -> None:
        self.log_threshold.data.add_(math.log(scale))

    def encode_normalised(self, x):
        pre = self._preacts(x, self.W_enc, self.b_enc)
        return pre * (pre > self.log_threshold.exp())

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        pre = torch.nn.functional.linear(self._centered(x), self.W_enc, self.b_enc)
        threshold = self.log_threshold.exp()
        codes = _JumpReLU.apply(pre, threshold, self.bandwidth)
        x_hat = self.decode_normalised(codes)
        recon = self._recon(x, x_hat, ctx.sample_weight)
        l0 = _Step.apply(pre, threshold, self.bandwidth).sum(-1).mean()
        loss = recon + ctx.sparsity_scale * self.l0_coeff * l0
        aux = self._auxk_dead(x, x_hat, pre.detach(), ctx)
        if aux is not None:
            loss = loss + aux
        active = codes.detach() > 0
        return StepOutput(loss=loss, x_hat=x_hat, fired=active.any(0), l0=float(l0.detach()),
                          parts={"recon": float(recon.detach()),
                                 "aux": float(aux.detach()) if aux is not None else 0.0})
