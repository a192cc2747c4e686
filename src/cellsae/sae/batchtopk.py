"""BatchTopK SAE (Bussmann et al. 2024): the batch shares a budget of k × batch latents."""

from __future__ import annotations

import torch

from ._sparse import batch_topk_structure, csr_rows
from .base import LossContext, StepOutput
from .topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    """TopK with the budget pooled over the batch, and a learned inference threshold.

    In training the ``k × batch`` largest positive pre-activations of the batch are kept,
    so busy samples may use more latents than quiet ones. For inference a single threshold
    (a running average of the smallest activation kept in training) replaces the batch, so
    a sample's codes never depend on which batch it is in.

    Parameters
    ----------
    k
        Average active latents per sample.
    threshold_decay
        Decay of the running average behind the inference threshold.
    """

    arch = "batchtopk"

    def __init__(self, d_in: int, d_sae: int, *, k: int = 32, threshold_decay: float = 0.99,
                 **kwargs) -> None:
        super().__init__(d_in, d_sae, k=k, **kwargs)
        if not 0 <= threshold_decay < 1:
            raise ValueError(f"threshold_decay must be in [0, 1), got {threshold_decay}")
        self.threshold_decay = float(threshold_decay)
        self.register_buffer("threshold", torch.full((), -1.0))  # -1: not yet estimated
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def hparams(self):
        return {**super().hparams(), "threshold_decay": self.threshold_decay}

    def _fold_thresholds(self, scale: float) -> None:
        if float(self.threshold) > 0:
            self.threshold.mul_(scale)

    def encode_normalised(self, x):
        pre = self._preacts(x, self.W_enc, self.b_enc)
        if float(self.threshold) < 0:  # never trained: fall back to per-sample TopK
            return super().encode_normalised(x)
        return torch.where(pre > self.threshold, pre, torch.zeros((), device=pre.device))

    def _select(self, pre: torch.Tensor, ctx: LossContext):
        crow, cols = batch_topk_structure(pre, self.k * pre.shape[0])
        if ctx.update_state and cols.numel():
            rows = csr_rows(crow, cols.numel())
            smallest = pre[rows, cols].min().float()
            # Running average whose decay grows from 0.1 to threshold_decay, so the crude
            # estimates of the first steps are soon forgotten.
            n = int(self.threshold_updates)
            decay = 0.0 if n == 0 else min(self.threshold_decay, (1 + n) / (10 + n))
            self.threshold.mul_(decay).add_((1 - decay) * smallest)
            self.threshold_updates.add_(1)
        return crow, cols

    def training_forward(self, x: torch.Tensor, ctx: LossContext) -> StepOutput:
        return super().training_forward(x, ctx)
