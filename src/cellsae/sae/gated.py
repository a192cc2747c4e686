"""Gated SAE (Rajamanoharan et al. 2024), and the paper's tied variant.

``gate_pre = (x - b_dec) W_encᵀ + b_enc`` (``b_enc`` is the gate bias), ``mag_pre =
exp(r_mag) ⊙ (x - b_dec) W_encᵀ + b_mag``, ``z = 1[gate_pre > 0] ⊙ ReLU(mag_pre)``.

Two forms (``r_mag``):

* ``r_mag=True`` (default), Rajamanoharan et al.: the magnitude path rescales the shared
  weights per latent by ``exp(r_mag)``. Loss ``‖x - x̂‖² + λ Σ_i ReLU(gate_pre_i)
  ‖W_dec,i‖ + ‖x - x̂_gate‖²`` where ``x̂_gate`` decodes ``ReLU(gate_pre)`` with a detached
  decoder: that term gives the gate its scale (without it the gate could shrink its weights
  for free, as ``r_mag`` makes up the magnitudes, and the penalty would vanish), and the
  Heaviside gate passes no gradient from the reconstruction. The penalty then only moves
  the gate, and the magnitudes stay unshrunk. Dead latents get the shared AuxK loss.
* ``r_mag=False``, the paper's form (``paper`` preset): ``W_mag`` is literally ``W_gate``.
  In training the binary gate passes a sigmoid gradient (straight-through), and an
  AuxK-style term asks the ``k_aux`` strongest gate-off latents (by ``ReLU(mag_pre)``),
  decoded with a detached decoder, to explain the detached residual (weight
  ``aux_alpha``). The penalty on ``gate_pre`` here also shrinks every magnitude (they share
  one scale), which costs this form much of its reconstruction when λ must be large.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SAE, LossContext, StepOutput


class _GateSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre):
        ctx.save_for_backward(pre)
        return (pre > 0).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        (pre,) = ctx.saved_tensors
        s = torch.sigmoid(pre)
        return grad * s * (1 - s)


class GatedSAE(SAE):
    """Gated SAE (see module docstring).

    Parameters
    ----------
    l1_coeff
        λ per sample. The paper's ``λ = 800`` averaged over 8192 latents on unit-norm
        inputs is ``l1_coeff = 800 / 8192`` with ``l2_normalise_inputs=True`` and no
        standardisation (the ``paper`` preset, via ``l1_total``). The default 5 is the
        ReLU SAE's (see :class:`~cellsae.sae.ReluSAE`): the penalty acts on the gate
        pre-activation, whose interference noise has the same scale.
    r_mag
        Per-latent magnitude rescale ``exp(r_mag)`` and the gate's own reconstruction loss
        (Rajamanoharan et al. 2024). ``False``: the paper's tied form.
    target_l0
        If given, λ is steered during training so that about this many latents fire per
        sample (``l1_coeff`` is then only the starting value).
    l0_gain
        Exponent of the controller's per-step correction ``(L0 / target_l0) ** l0_gain``.
    init_std
        Standard deviation of the initial shared weights (``W_dec`` starts as their
        normalised copy). ``None``: unit-norm rows like the other architectures.
    gate_bias_init
        Initial gate bias (positive so that no latent starts dead).
    """

    arch = "gated"
    _encoder_biases = ("b_enc", "b_mag")

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float = 5.0, r_mag: bool = True,
                 init_std: float | None = None, gate_bias_init: float = 0.1,
                 target_l0: float | None = None, l0_gain: float = 0.02,
                 **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self._init_penalty(l1_coeff, target_l0, l0_gain)
        self.use_r_mag = bool(r_mag)
        self.init_std = None if init_std is None else float(init_std)
        self.gate_bias_init = float(gate_bias_init)
        self.b_mag = nn.Parameter(torch.zeros(d_sae))
        if self.use_r_mag:
            self.r_mag = nn.Parameter(torch.zeros(d_sae))

    def hparams(self):
        return {**super().hparams(), "l1_coeff": self.l1_coeff, "r_mag": self.use_r_mag,
                "init_std": self.init_std, "gate_bias_init": self.gate_bias_init,
                "target_l0": self.target_l0, "l0_gain": self.l0_gain}

    @torch.no_grad()
    def reset_parameters(self, generator, data_mean=None):
        super().reset_parameters(generator, data_mean)
        if self.init_std is not None:
            w = torch.randn(self.d_sae, self.d_in, generator=generator) * self.init_std
            self.W_enc.copy_(w)
            self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.b_enc.fill_(self.gate_bias_init)
        self.b_mag.zero_()
        if self.use_r_mag:
            self.r_mag.zero_()

    @torch.no_grad()
    def initialise_from_data(self, x: torch.Tensor) -> None:
        """With ``target_l0``: gate biases that open about that many gates per sample of
        ``x`` from the first step (instead of ``gate_bias_init``, which opens half)."""
        if self.target_l0 is not None:
            self.b_enc.copy_(-self._firing_cut(x, self.target_l0))

    def _mag_pre(self, shared: torch.Tensor) -> torch.Tensor:
        """Magnitude pre-activation from the bias-free shared projection."""
        if self.use_r_mag:
            shared = shared * torch.exp(self.r_mag)
        return shared + self.b_mag

    def encode_normalised(self, x):
        gate_pre = self._preacts(x, self.W_enc, self.b_enc)
        mag_pre = self._mag_pre(gate_pre - self.b_enc)
        return (gate_pre > 0) * torch.relu(mag_pre)

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        shared = torch.nn.functional.linear(self._centered(x), self.W_enc)
        gate_pre = shared + self.b_enc
        mag = torch.relu(self._mag_pre(shared))
        if self.use_r_mag:
            gate = (gate_pre > 0).to(mag.dtype)
        else:
            gate = _GateSTE.apply(gate_pre)
        codes = gate * mag
        x_hat = self.decode_normalised(codes)
        recon = self._recon(x, x_hat, ctx.sample_weight)
        norms = self.W_dec.norm(dim=1).detach()
        gate_act = torch.relu(gate_pre)
        sparsity = (gate_act.float() * norms).sum(-1).mean()
        loss = recon + ctx.sparsity_scale * self._penalty_coeff() * sparsity
        if self.use_r_mag:
            gate_hat = gate_act @ self.W_dec.detach() + self.b_dec.detach()
            gate_recon = self._recon(x, gate_hat, ctx.sample_weight)
            loss = loss + gate_recon
            aux = self._auxk_dead(x, x_hat, gate_pre.detach(), ctx)
        else:
            gate_recon = None
            aux = self._tied_aux(x, x_hat, gate_pre, mag, ctx)
        if aux is not None:
            loss = loss + aux
        active = codes.detach() > 0
        l0 = float(active.sum(1).float().mean())
        self._adapt_penalty(l0, ctx)
        parts = {"recon": float(recon.detach()), "sparsity": float(sparsity.detach()),
                 "l1_coeff": float(self._penalty_coeff()),
                 "aux": float(aux.detach()) if aux is not None else 0.0}
        if gate_recon is not None:
            parts["gate_recon"] = float(gate_recon.detach())
        return StepOutput(loss=loss, x_hat=x_hat, fired=active.any(0), l0=l0, parts=parts)

    def _tied_aux(self, x, x_hat, gate_pre, mag, ctx: LossContext):
        """The paper's AuxK-style term on the strongest gate-off latents (tied form)."""
        if ctx.aux_alpha <= 0 or ctx.k_aux <= 0:
            return None
        with torch.no_grad():
            off = gate_pre.detach() <= 0
            k_aux = min(ctx.k_aux, self.d_sae)
            score = torch.where(off, mag.detach(), torch.full_like(mag, -1.0))
            _, idx = score.topk(k_aux, dim=1, sorted=False)
        aux_codes = torch.zeros_like(mag).scatter(1, idx, mag.gather(1, idx) *
                                                  off.gather(1, idx))
        e_hat = aux_codes @ self.W_dec.detach()
        residual = (x - x_hat).detach()
        return ctx.aux_alpha * (residual - e_hat).pow(2).sum(-1).mean()

    def _encoder_weight_for(self, bias_name):
        if bias_name == "b_mag" and self.use_r_mag:
            return torch.exp(self.r_mag)[:, None] * self.W_enc
        return self.W_enc

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Files written before r_mag existed hold the tied form, which is r_mag = 0.
        key = prefix + "r_mag"
        if self.use_r_mag and key not in state_dict:
            state_dict[key] = torch.zeros(self.d_sae)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
