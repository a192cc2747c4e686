"""Sparse kernels for TopK-family SAEs: only the active latents cost work in the backward pass.

A TopK SAE's dense step does five (batch × d_in × d_sae) matmuls: encoder forward, decoder
forward, and three in the backward pass. With k active latents per sample only the encoder
forward must be dense (to find the top k); everything else touches k latents per sample.
Active latents are held as a CSR structure ``(crow, cols, vals)`` over the batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


class _GatherPreacts(torch.autograd.Function):
    """Values of ``(x - b_dec) @ W_enc.T + b_enc`` at the active (row, col) entries.

    The dense pre-activations are computed once without autograd (to choose the active set);
    this function returns the chosen entries and, in the backward pass, computes gradients
    for ``W_enc``, ``b_enc`` and ``b_dec`` from the active entries only.
    """

    @staticmethod
    def forward(ctx, values, x_centered, W_enc, b_enc, b_dec, crow, cols, pre_bias):
        ctx.save_for_backward(x_centered, W_enc, crow, cols)
        ctx.pre_bias = pre_bias
        ctx.batch = x_centered.shape[0]
        return values

    @staticmethod
    def backward(ctx, grad):
        x_centered, W_enc, crow, cols = ctx.saved_tensors
        grad = grad.float()
        d_sae = W_enc.shape[0]
        grad_W = grad_b = grad_bdec = None
        if ctx.needs_input_grad[2]:
            with warnings.catch_warnings():  # torch flags the whole CSR API as beta
                warnings.simplefilter("ignore", UserWarning)
                structure = torch.sparse_csr_tensor(crow, cols, grad, (ctx.batch, d_sae),
                                                    check_invariants=False)
            grad_W = (structure.t() @ x_centered.float()).to(W_enc.dtype)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, cols, grad)
            if ctx.pre_bias and ctx.needs_input_grad[4]:
                grad_bdec = -(grad_b @ W_enc.float())
        return None, None, grad_W, grad_b, grad_bdec, None, None, None


def csr_rows(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    """Row index of each of the ``nnz`` entries of a CSR structure with row pointer ``crow``."""
    return torch.repeat_interleave(torch.arange(crow.shape[0] - 1, device=crow.device),
                                   crow[1:] - crow[:-1], output_size=nnz)


def gather_preacts(pre: torch.Tensor, x_centered: torch.Tensor, W_enc, b_enc, b_dec,
                   crow: torch.Tensor, cols: torch.Tensor, *, pre_bias: bool) -> torch.Tensor:
    """Differentiable pre-activation values at the CSR entries ``(crow, cols)``.

    Parameters
    ----------
    pre : (batch, d_sae) tensor
        Dense pre-activations, computed without autograd.
    x_centered : (batch, d_in) tensor
        The encoder input (``x - b_dec`` when ``pre_bias``).
    crow : (batch + 1,) int64 tensor, cols : (nnz,) int64 tensor
        CSR structure of the active entries, rows in order.
    """
    rows = csr_rows(crow, cols.shape[0])
    if pre.dtype == torch.float32:
        values = pre[rows, cols]
    else:  # low-precision (autocast) selection: recompute the chosen values in fp32
        with torch.autocast(device_type=pre.device.type, enabled=False):
            values = torch.einsum("nd,nd->n", x_centered[rows].float(), W_enc[cols].float())
            values = values + b_enc[cols].float()
    return _GatherPreacts.apply(values, x_centered, W_enc, b_enc, b_dec, crow, cols, pre_bias)


def sparse_decode(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                  W_dec: torch.Tensor) -> torch.Tensor:
    """``Z @ W_dec`` for a CSR code matrix ``Z`` given by ``(crow, cols, vals)``.

    ``embedding_bag`` gathers the active decoder rows, and its backward pass writes
    gradients only into those rows and into ``vals``.
    """
    return F.embedding_bag(cols, W_dec, crow, mode="sum", per_sample_weights=vals,
                           include_last_offset=True)


def topk_structure(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR structure of each row's ``k`` largest entries (ties broken by torch.topk)."""
    batch = pre.shape[0]
    _, idx = pre.topk(k, dim=1, sorted=False)
    crow = torch.arange(0, batch * k + 1, k, device=pre.device)
    return crow, idx.reshape(-1)


def batch_topk_structure(pre: torch.Tensor, n_active: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR structure of the ``n_active`` largest positive entries of the whole batch.

    Exact. A threshold guess from a strided subsample keeps the selection to a small
    candidate set; the guess is checked by counting and lowered if it admits too few.
    """
    flat = pre.reshape(-1)
    total = flat.numel()
    n_active = min(n_active, total)
    stride = max(1, total // 262_144)
    sample = flat[::stride]
    candidates = None
    for factor in (1.5, 3.0, 10.0):
        rank = min(sample.numel(), int(factor * n_active / stride) + 1)
        guess = sample.topk(rank, sorted=False).values.min()
        found = (flat >= guess).nonzero().squeeze(1)
        if found.numel() >= n_active:  # the guess admits enough: the answer is among them
            candidates = found
            break
    if candidates is None:
        candidates = torch.arange(total, device=pre.device)
    chosen = candidates[flat[candidates].topk(n_active, sorted=False).indices]
    chosen = chosen[flat[chosen] > 0]
    chosen, _ = chosen.sort()
    d_sae = pre.shape[1]
    rows = chosen // d_sae
    cols = chosen % d_sae
    counts = torch.bincount(rows, minlength=pre.shape[0])
    crow = torch.zeros(pre.shape[0] + 1, dtype=torch.int64, device=pre.device)
    crow[1:] = counts.cumsum(0)
    return crow, cols
