"""The SAE base class: parameters, normalisation, public encode/decode, save.

Every architecture keeps the same four parameters — encoder ``W_enc (d_sae, d_in)``,
encoder bias ``b_enc (d_sae,)``, decoder ``W_dec (d_sae, d_in)`` with unit-norm rows and
decoder bias ``b_dec (d_in,)`` — plus its own extras (thresholds, gate biases). Training
happens on standardised inputs ``x_n = (x - input_mean) / input_scale``; codes and
reconstructions returned by the public methods are always in raw input units, and
:meth:`SAE.fold_normalisation` rewrites the weights so that ``input_mean = 0`` and
``input_scale = 1`` without changing any output.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import sparse
from torch import nn

from ._sparse import csr_rows, gather_preacts, sparse_decode

logger = logging.getLogger(__name__)


@dataclass
class LossContext:
    """What the trainer tells an architecture's loss at one step."""

    sparsity_scale: float = 1.0        # warm-up factor of the sparsity penalty, in [0, 1]
    dead_mask: torch.Tensor | None = None  # (d_sae,) bool, latents currently counted dead
    aux_alpha: float = 1 / 32
    k_aux: int = 256
    update_state: bool = True          # update running statistics (thresholds)
    sample_weight: torch.Tensor | None = None  # (batch,) weights of the reconstruction loss


@dataclass
class StepOutput:
    """One training forward pass: the loss and what the trainer logs."""

    loss: torch.Tensor
    x_hat: torch.Tensor
    fired: torch.Tensor                # (d_sae,) bool, latents active on this batch
    l0: float
    parts: dict[str, float] = field(default_factory=dict)


class SAE(nn.Module, abc.ABC):
    """A sparse autoencoder. Subclasses define the activation and the training loss.

    Parameters
    ----------
    d_in
        Input width.
    d_sae
        Number of latents (dictionary size).
    pre_bias
        Subtract ``b_dec`` from the input before encoding (standard for most SAEs; the
        paper's gated SAE does not).
    l2_normalise_inputs
        Divide each input row by its L2 norm before anything else (the paper's setting).
        This is applied in :meth:`encode` too; it cannot be folded into the weights.
    """

    arch: ClassVar[str] = ""
    sparse_training: ClassVar[bool] = False
    # Parameters/buffers added to the pre-activation (scaled when folding normalisation).
    _encoder_biases: ClassVar[tuple[str, ...]] = ("b_enc",)

    def __init__(self, d_in: int, d_sae: int, *, pre_bias: bool = True,
                 l2_normalise_inputs: bool = False) -> None:
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={d_in}, d_sae={d_sae}")
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.pre_bias = bool(pre_bias)
        self.l2_normalise_inputs = bool(l2_normalise_inputs)
        self.W_enc = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))

    # -- configuration ------------------------------------------------------------------

    def hparams(self) -> dict[str, Any]:
        """Architecture hyperparameters (enough to rebuild an empty model)."""
        return {"pre_bias": self.pre_bias, "l2_normalise_inputs": self.l2_normalise_inputs}

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, " + ", ".join(
            f"{k}={v}" for k, v in self.hparams().items())

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, data_mean: torch.Tensor | None = None
                         ) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, zero biases.

        ``data_mean`` (of the standardised inputs) initialises ``b_dec``.
        """
        w = torch.randn(self.d_sae, self.d_in, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w)
        self.b_enc.zero_()
        self.b_dec.copy_(data_mean if data_mean is not None else torch.zeros(self.d_in))

    @torch.no_grad()
    def rescale_encoder_init(self, x: torch.Tensor) -> float:
        """Scale the initial encoder so the first reconstructions have the right size.

        With ``W_enc = W_dec`` the selected codes of a random dictionary overshoot (the
        largest of many random projections), so the first steps would undo a too-large
        reconstruction. The least-squares factor ``c = <x - b_dec, x̂'> / ‖x̂'‖²`` (with
        ``x̂'`` the bias-free reconstruction on standardised inputs ``x``, with the latents
        chosen as in training, e.g. batch-wide for BatchTopK) fixes that. Encoder weights,
        encoder biases and learned thresholds are all scaled by ``c``, so the set of
        firing latents does not change. Returns ``c``.
        """
        if hasattr(self, "_select"):  # the selection training uses (BatchTopK: batch-wide)
            pre = self._preacts(x, self.W_enc, self.b_enc)
            crow, cols = self._select(pre, LossContext(update_state=False))
            rows = csr_rows(crow, cols.numel())
            x_hat = sparse_decode(crow, cols, torch.relu(pre[rows, cols]), self.W_dec)
        else:
            x_hat = self.decode_normalised(self.encode_normalised(x)) - self.b_dec
        target = x - self.b_dec
        denominator = float((x_hat * x_hat).sum())
        if denominator <= 0:
            return 1.0
        c = min(1.0, max(1e-3, float((target * x_hat).sum()) / denominator))
        self.W_enc.mul_(c)
        for name in self._encoder_biases:
            getattr(self, name).mul_(c)
        self._fold_thresholds(c)  # pre-activations scale by c: so do thresholds
        return c

    @torch.no_grad()
    def _firing_cut(self, x: torch.Tensor, target_l0: float) -> torch.Tensor:
        """(d_sae,) per-latent pre-activation quantile above which about ``target_l0``
        latents of a sample fire (each latent on a ``target_l0 / d_sae`` share of ``x``)."""
        pre = self._preacts(x, self.W_enc, torch.zeros_like(self.b_enc))
        share = min(1.0, target_l0 / self.d_sae)
        rank = min(pre.shape[0], max(1, int(round((1.0 - share) * pre.shape[0]))))
        return pre.kthvalue(rank, dim=0).values  # kthvalue: no size limit, unlike quantile

    # -- normalised-space building blocks (used by training) ------------------------------

    def _centered(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec if self.pre_bias else x

    def _preacts(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Dense ``(x - b_dec) @ W.T + b`` in one fused call."""
        if self.pre_bias:
            b = b - W @ self.b_dec
        return torch.addmm(b, x, W.t())

    @abc.abstractmethod
    def encode_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) standardised inputs -> (batch, d_sae) dense codes (inference)."""

    def decode_normalised(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b_dec

    @abc.abstractmethod
    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        """One training step's forward pass: codes, reconstruction and loss terms."""

    # -- penalty control (L1-type architectures) ----------------------------------------

    def _init_penalty(self, coeff: float, target_l0: float | None, gain: float) -> None:
        """Set up the sparsity coefficient λ, fixed or steered towards ``target_l0``.

        With a target, λ lives in a buffer (saved in checkpoints, so resuming is exact)
        and after each training step is multiplied by ``(L0 / target_l0) ** gain``, an
        integral controller in log space: λ grows while too many latents fire and shrinks
        while too few do. λ then settles where the batch L0 matches the target.
        """
        if coeff < 0:
            raise ValueError(f"l1_coeff must be non-negative, got {coeff}")
        if target_l0 is not None and not target_l0 > 0:
            raise ValueError(f"target_l0 must be positive (or None for a fixed l1_coeff), "
                             f"got {target_l0}")
        if not gain > 0:
            raise ValueError(f"l0_gain must be positive, got {gain}")
        self.l1_coeff = float(coeff)
        self.target_l0 = None if target_l0 is None else float(target_l0)
        self.l0_gain = float(gain)
        if self.target_l0 is not None:
            self.register_buffer("l1_coeff_live", torch.tensor(max(self.l1_coeff, 1e-6)))
            self.register_buffer("log_l0_trend", torch.tensor(float("nan")))

    def _penalty_coeff(self) -> torch.Tensor | float:
        return self.l1_coeff_live if self.target_l0 is not None else self.l1_coeff

    @torch.no_grad()
    def _adapt_penalty(self, l0: float, ctx: LossContext) -> None:
        """One controller step (see :meth:`_init_penalty`).

        L0 answers a change of λ only after the weights have moved, so a plain integral
        controller overshoots (λ keeps rising while L0 is already falling, and latents
        pushed far below zero take long to come back). λ is therefore held while L0 is
        already moving towards the target (judged by a running average of log L0).
        """
        if self.target_l0 is None or not ctx.update_state or ctx.sparsity_scale < 1:
            return
        log_l0 = math.log(l0 + 0.5)
        error = log_l0 - math.log(self.target_l0 + 0.5)
        previous = float(self.log_l0_trend)
        moving = 0.0 if math.isnan(previous) else log_l0 - previous
        self.log_l0_trend.fill_(log_l0 if math.isnan(previous) else
                                0.9 * previous + 0.1 * log_l0)
        if error * moving < 0 and abs(moving) > 0.05 * abs(error):
            return  # already heading for the target
        factor = min(max(math.exp(self.l0_gain * error), 1 / 1.02), 1.02)
        self.l1_coeff_live.mul_(factor).clamp_(1e-6, 1e6)

    # -- shared loss pieces ---------------------------------------------------------------

    @staticmethod
    def _recon(x: torch.Tensor, x_hat: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """Squared error per sample, averaged over the batch (weighted if ``weight``)."""
        err = (x_hat.float() - x).pow(2).sum(-1)
        return err.mean() if weight is None else (err * weight).mean()

    def _auxk_dead(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor,
                   ctx: LossContext) -> torch.Tensor | None:
        """AuxK loss: the top dead latents of each sample should explain the residual."""
        if ctx.dead_mask is None or ctx.aux_alpha <= 0:
            return None
        dead = ctx.dead_mask.nonzero().squeeze(1)
        if dead.numel() == 0:
            return None
        k_aux = min(ctx.k_aux, dead.numel())
        with torch.no_grad():
            _, local = pre[:, dead].topk(k_aux, dim=1, sorted=False)
            cols = dead[local].reshape(-1)
            crow = torch.arange(0, x.shape[0] * k_aux + 1, k_aux, device=x.device)
        vals = torch.relu(gather_preacts(pre, self._centered(x), self.W_enc, self.b_enc,
                                         self.b_dec, crow, cols, pre_bias=self.pre_bias))
        e_hat = sparse_decode(crow, cols, vals, self.W_dec)
        residual = (x - x_hat).detach().float()
        denominator = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        return ctx.aux_alpha * (residual - e_hat).pow(2).sum(-1).mean() / denominator

    def _sparse_step(self, x: torch.Tensor, pre: torch.Tensor, crow: torch.Tensor,
                     cols: torch.Tensor, ctx: LossContext):
        """Decode the active set and return (x_hat, vals, recon loss, aux loss)."""
        vals = torch.relu(gather_preacts(pre, self._centered(x), self.W_enc, self.b_enc,
                                         self.b_dec, crow, cols, pre_bias=self.pre_bias))
        x_hat = sparse_decode(crow, cols, vals, self.W_dec) + self.b_dec
        recon = self._recon(x, x_hat, ctx.sample_weight)
        aux = self._auxk_dead(x, x_hat, pre, ctx)
        return x_hat, vals, recon, aux

    def _fired_from_cols(self, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=cols.device)
        fired[cols[vals.detach() > 0]] = True
        return fired

    # -- normalisation --------------------------------------------------------------------

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        if self.l2_normalise_inputs:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (x - self.input_mean) / self.input_scale

    @property
    def is_folded(self) -> bool:
        return bool((self.input_mean == 0).all()) and float(self.input_scale) == 1.0

    def _fold_thresholds(self, scale: float) -> None:
        """Scale learned thresholds by ``scale`` (architectures with thresholds override)."""

    @torch.no_grad()
    def fold_normalisation(self) -> SAE:
        """Rewrite the weights so the model takes raw inputs with the same outputs.

        Codes of the folded model equal ``input_scale ×`` codes in standardised space, which
        is what :meth:`encode` returns for an unfolded model, so nothing observable changes.
        Every activation used here is positively homogeneous, which makes this exact.
        """
        scale = float(self.input_scale)
        mean = self.input_mean.clone()
        for name in self._encoder_biases:
            bias = getattr(self, name)
            if self.pre_bias:
                bias.mul_(scale)
            else:
                bias.copy_(scale * bias - self._encoder_weight_for(name) @ mean)
        self.b_dec.copy_(scale * self.b_dec + mean)
        self._fold_thresholds(scale)
        self.input_mean.zero_()
        self.input_scale.fill_(1.0)
        return self

    def _encoder_weight_for(self, bias_name: str) -> torch.Tensor:
        return self.W_enc

    # -- public API -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def _check_width(self, width: int, what: str = "X") -> None:
        if width != self.d_in:
            raise ValueError(
                f"{what} has {width} columns but this SAE was trained on d_in={self.d_in} "
                f"features; pass the same representation the SAE was trained on")

    @torch.no_grad()
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) raw inputs -> (batch, d_sae) dense codes in raw units."""
        x = x.to(self.device, torch.float32)
        codes = self.encode_normalised(self._standardise(x))
        return codes * self.input_scale

    def encode(self, X, *, batch_size: int = 8192, device: Any = None,
               progress: bool | None = None):
        """Encode inputs into sparse codes, batch by batch.

        Parameters
        ----------
        X : (n_samples, d_in) array, memmap, zarr/h5 array, or torch tensor
            Raw inputs (the SAE applies its own normalisation).
        batch_size
            Rows encoded at a time; bounds memory.
        device
            Run on this device (default: where the SAE is).

        Returns
        -------
        (n_samples, d_sae) float32 CSR matrix for array inputs; a dense tensor of codes
        for a torch tensor input.
        """
        from .._utils import progress as progress_bar
        from .data import open_source

        if device is not None:
            from .._utils import resolve_device
            self.to(resolve_device(device))
        was_training = self.training
        self.eval()
        try:
            if isinstance(X, torch.Tensor):
                if X.ndim != 2:
                    raise ValueError(f"X must be 2-D (n_samples, d_in), got shape "
                                     f"{tuple(X.shape)}")
                if X.shape[0] == 0:
                    raise ValueError("X has no rows; there is nothing to encode")
                self._check_width(X.shape[1])
                if not torch.isfinite(X).all():
                    bad = (~torch.isfinite(X)).any(1).nonzero().squeeze(1)
                    raise ValueError(f"X contains NaN or Inf in {bad.numel()} row(s) (first: "
                                     f"row {int(bad[0])}); remove or impute them first")
                return torch.cat([self.encode_tensor(X[i:i + batch_size])
                                  for i in range(0, X.shape[0], batch_size)])
            source = open_source(X)
            self._check_width(source.d)
            blocks = []
            bar = progress_bar(total=source.n, desc="encode", unit="sample", disable=(
                None if progress is None else not progress))
            for start in range(0, source.n, batch_size):
                block = source.read(start, min(start + batch_size, source.n))
                source.check_block(block, start)
                codes = self.encode_tensor(torch.from_numpy(block)).cpu()
                blocks.append(_dense_to_csr(codes))
                bar.update(len(block))
            bar.close()
            return sparse.vstack(blocks, format="csr", dtype=np.float32)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode(self, Z, *, batch_size: int = 8192):
        """Reconstruct inputs from codes.

        Parameters
        ----------
        Z : (n_samples, d_sae) CSR matrix, array or tensor
            Codes as returned by :meth:`encode`.

        Returns
        -------
        (n_samples, d_in) float32 array (a tensor for tensor input). With
        ``l2_normalise_inputs`` the reconstruction is of the L2-normalised inputs.
        """
        as_tensor = isinstance(Z, torch.Tensor)
        if sparse.issparse(Z):
            if Z.ndim != 2 or Z.shape[1] != self.d_sae:
                raise ValueError(f"Z must have shape (n_samples, {self.d_sae}), got {Z.shape}")
            Z = sparse.csr_matrix(Z)
            if Z.shape[0] > batch_size:  # densify one block at a time
                return np.concatenate([self.decode(Z[i:i + batch_size].toarray())
                                       for i in range(0, Z.shape[0], batch_size)])
            Z = Z.toarray()
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32) if not as_tensor else Z)
        if z.ndim != 2 or z.shape[1] != self.d_sae:
            raise ValueError(f"Z must have shape (n_samples, {self.d_sae}), got "
                             f"{tuple(z.shape)}")
        z = z.to(self.device, torch.float32)
        x_hat = self.decode_normalised(z / self.input_scale) * self.input_scale + \
            self.input_mean
        return x_hat if as_tensor else x_hat.cpu().numpy()

    def save(self, path, *, metadata: dict | None = None) -> None:
        """Save as ``path`` (safetensors, normalisation folded in) plus a JSON sidecar."""
        from .io import save_sae

        save_sae(self, path, metadata=metadata)


def _dense_to_csr(codes: torch.Tensor) -> sparse.csr_matrix:
    nonzero = codes != 0
    counts = nonzero.sum(1)
    rows, cols = nonzero.nonzero(as_tuple=True)
    indptr = np.zeros(codes.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts.numpy(), out=indptr[1:])
    return sparse.csr_matrix((codes[rows, cols].numpy().astype(np.float32), cols.numpy(),
                              indptr), shape=tuple(codes.shape))
