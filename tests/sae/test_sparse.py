"""The sparse TopK kernels give the same values and gradients as dense autograd."""

import pytest
import torch

from cellsae.sae._sparse import batch_topk_structure, gather_preacts, sparse_decode, topk_structure


def _dense_reference(x, W_enc, b_enc, b_dec, W_dec, mask):
    pre = (x - b_dec) @ W_enc.T + b_enc
    codes = torch.relu(pre) * mask
    return codes @ W_dec + b_dec


@pytest.mark.parametrize("batch_mode", [False, True])
def test_sparse_step_matches_dense_gradients(batch_mode):
    g = torch.Generator().manual_seed(0)
    B, d, m, k = 12, 8, 40, 4
    x = torch.randn(B, d, generator=g)
    params = [torch.randn(m, d, generator=g), torch.randn(m, generator=g) * 0.1,
              torch.randn(d, generator=g) * 0.1, torch.randn(m, d, generator=g)]
    sparse_params = [p.clone().requires_grad_() for p in params]
    dense_params = [p.clone().requires_grad_() for p in params]
    W_enc, b_enc, b_dec, W_dec = sparse_params
    with torch.no_grad():
        pre = torch.addmm(b_enc - W_enc @ b_dec, x, W_enc.T)
        crow, cols = batch_topk_structure(pre, k * B) if batch_mode else topk_structure(pre, k)
    vals = torch.relu(gather_preacts(pre, x - b_dec, W_enc, b_enc, b_dec, crow, cols,
                                     pre_bias=True))
    x_hat = sparse_decode(crow, cols, vals, W_dec) + b_dec
    target = torch.randn(B, d, generator=g)
    ((x_hat - target) ** 2).sum().backward()

    rows = torch.repeat_interleave(torch.arange(B), crow[1:] - crow[:-1])
    mask = torch.zeros(B, m)
    mask[rows, cols] = 1
    ref = _dense_reference(x, *dense_params[:3], dense_params[3], mask)
    ((ref - target) ** 2).sum().backward()
    assert torch.allclose(x_hat, ref, atol=1e-5)
    for a, b in zip(sparse_params, dense_params, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-4), (a.grad - b.grad).abs().max()


def test_batch_topk_selects_the_largest_entries_of_the_batch():
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(64, 300, generator=g)
    crow, cols = batch_topk_structure(pre, 64 * 5)
    rows = torch.repeat_interleave(torch.arange(64), crow[1:] - crow[:-1])
    chosen = pre[rows, cols]
    assert chosen.numel() == 64 * 5
    assert chosen.min() >= pre.flatten().topk(64 * 5).values.min()
    # rows differ in how many latents they get: that is the point of BatchTopK
    assert (crow[1:] - crow[:-1]).unique().numel() > 1
