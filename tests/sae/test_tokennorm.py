"""The paper's token normalisation: known answers, the streaming path, the SAE guard."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from cellsae.sae.tokennorm import (
    NormalizedTokenStore,
    TokenNormalizer,
    normalize_tokens,
    normalized_source,
)

R = 1 / np.sqrt(2)


def reference(tokens, cells, mode):
    """The paper's steps unit by unit, with loops (REFERENCE_CODE.md §4)."""
    tokens = np.asarray(tokens, np.float64)
    scaled = np.empty_like(tokens)
    for u in np.unique(cells):
        rows = cells == u
        scaled[rows] = tokens[rows] / np.linalg.norm(tokens[rows].mean(0))
    out = np.empty_like(tokens)
    for u in np.unique(cells):
        rows = cells == u
        centre = scaled[rows].mean(0) if mode == "paper" else scaled.mean(0)
        y = scaled[rows] - centre
        out[rows] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return out


def test_per_unit_centring_known_answer():
    tokens = np.array([[2, 0], [0, 2], [3, 3], [1, 1]], float)
    cells = np.array([0, 0, 1, 1])
    out = normalize_tokens(tokens, cells, mode="paper")
    # unit 0: GAP (1, 1); tokens / √2 minus (1, 1)/√2 -> (±1, ∓1)/√2, already unit norm
    np.testing.assert_allclose(out[:2], [[R, -R], [-R, R]], atol=1e-6)
    # unit 1: GAP (2, 2); centred tokens ±(1, 1)/(2√2) -> ±(1, 1)/√2
    np.testing.assert_allclose(out[2:], [[R, R], [-R, -R]], atol=1e-6)
    assert out.dtype == np.float32


def test_batch_centring_known_answer():
    tokens = np.array([[2, 0], [0, 2], [0, -4], [0, -2]], float)
    cells = np.array([0, 0, 1, 1])
    out = normalize_tokens(tokens, cells, mode="paper_batch")
    # scaled: (√2, 0), (0, √2), (0, -4/3), (0, -2/3); batch mean (√2/4, (√2 - 2)/4)
    mu = np.array([np.sqrt(2) / 4, (np.sqrt(2) - 2) / 4])
    y = np.array([[np.sqrt(2), 0], [0, np.sqrt(2)], [0, -4 / 3], [0, -2 / 3]]) - mu
    np.testing.assert_allclose(out, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(out, reference(tokens, cells, "paper_batch"), atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "paper_batch"])
def test_matches_loop_reference_in_any_order_and_unit_ids(rng, mode):
    tokens = rng.normal(size=(60, 5)) + rng.normal(size=(1, 5))
    cells = np.repeat([7, 3, 11, 0], 15)
    want = reference(tokens, cells, mode)
    perm = rng.permutation(60)
    got = normalize_tokens(tokens[perm], cells[perm], mode=mode)
    np.testing.assert_allclose(got, want[perm], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_gap_scalar_only_matters_for_batch_centring(rng):
    tokens = rng.normal(size=(20, 4)) + 3
    cells = np.repeat([0, 1], 10)
    bigger = tokens.copy()
    bigger[cells == 1] *= 100  # one bright image
    # per unit: the scalar cancels; batch: GAP scaling keeps the bright image from dominating
    for mode in ("paper", "paper_batch"):
        np.testing.assert_allclose(normalize_tokens(bigger, cells, mode=mode),
                                   normalize_tokens(tokens, cells, mode=mode), atol=1e-5)
    # without the GAP scalar, the batch mean would move with the bright image
    naive = bigger - bigger.mean(0)
    naive /= np.linalg.norm(naive, axis=1, keepdims=True)
    assert not np.allclose(naive, normalize_tokens(tokens, cells, mode="paper_batch"),
                           atol=1e-3)


def test_degenerate_and_bad_inputs():
    tokens = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    out = normalize_tokens(tokens, np.array([0, 0, 1, 1]), mode="paper")
    np.testing.assert_array_equal(out, 0)  # constant map and zero map: zeros, no NaN
    np.testing.assert_array_equal(normalize_tokens(tokens, mode="none"), tokens)
    with pytest.raises(ValueError, match="token_norm must be one of"):
        normalize_tokens(tokens, np.zeros(4, int), mode="batch")
    with pytest.raises(ValueError, match="needs cell_index"):
        normalize_tokens(tokens, mode="paper")
    with pytest.raises(ValueError, match="one entry per token"):
        normalize_tokens(tokens, np.zeros(3, int))
    with pytest.raises(ValueError, match="gap has only"):
        normalize_tokens(tokens, np.array([0, 0, 5, 5]), gap=np.ones((2, 2)))


def write_store(path, tokens, per_cell):
    """A minimal token store in the cellsae.tokens format, one unit per ``per_cell`` rows."""
    from cellsae.embed.extract import TOKENS_FORMAT, TOKENS_VERSION

    n_cells = len(tokens) // per_cell
    group = zarr.open_group(str(path), mode="w")
    group.create_array("tokens", data=tokens.astype(np.float16), chunks=(7, tokens.shape[1]))
    group.create_array("cell_index", data=np.repeat(np.arange(n_cells), per_cell), chunks=(7,))
    group.create_array("position", data=np.zeros((len(tokens), 2), np.int16), chunks=(7, 2))
    group.create_array("offsets", data=np.arange(n_cells + 1) * per_cell)
    group.create_array("pooled_norm", data=np.ones(n_cells, np.float32))
    group.attrs.update({"format": TOKENS_FORMAT, "format_version": TOKENS_VERSION,
                        "layer": "stage1", "grid": [2, per_cell // 2],
                        "tokens_per_cell": per_cell, "dim": tokens.shape[1],
                        "n_cells": n_cells, "token_pool": 1})
    return path


@pytest.mark.parametrize("mode", ["paper", "paper_batch"])
def test_streaming_store_equals_the_whole_array(tmp_path, rng, mode):
    tokens = (rng.normal(size=(48, 3)) * rng.uniform(0.5, 4, size=(48, 1)) + 1).astype(
        np.float16).astype(np.float32)
    cells = np.repeat(np.arange(6), 8)
    path = write_store(tmp_path / "t.zarr", tokens, 8)
    store = NormalizedTokenStore(path, mode)
    want = reference(tokens, cells, mode)
    # slices that cut through units (and the store's chunks) read the same rows
    got = np.concatenate([store.tokens[a:a + 5] for a in range(0, 48, 5)])
    np.testing.assert_allclose(got, want, atol=1e-4)
    source = normalized_source(path, mode, store=store)
    np.testing.assert_allclose(source.read(3, 29), want[3:29], atol=1e-4)
    batches = list(store.iter_batches(10, shuffle=True, seed=1))
    streamed = np.concatenate([t for t, _ in batches])
    order = np.concatenate([c for _, c in batches])
    assert len(streamed) == 48
    for u in range(6):  # shuffled batches carry the same normalised tokens of each unit
        got_u, want_u = streamed[order == u], want[cells == u]
        np.testing.assert_allclose(got_u[np.lexsort(got_u.T)], want_u[np.lexsort(want_u.T)],
                                   atol=1e-4)
    np.testing.assert_allclose(store.cell_tokens(2), want[16:24], atol=1e-4)
    stats = TokenNormalizer.from_store(store, mode)
    np.testing.assert_allclose(stats.gap[1], tokens[8:16].mean(0), rtol=1e-5)
    raw = normalized_source(path, "none")
    np.testing.assert_allclose(raw.read(0, 48), tokens)


def test_token_codes_feed_an_sae_the_tokens_it_was_trained_on(tmp_path, rng):
    from cellsae.sae import train
    from cellsae.tl import token_codes

    tokens = (rng.normal(size=(64, 4)) + 2).astype(np.float16).astype(np.float32)  # as stored
    path = write_store(tmp_path / "t.zarr", tokens, 8)
    store = NormalizedTokenStore(path, "paper")
    sae = train(normalized_source(path, "paper", store=store), "topk", 8, 2, n_steps=5,
                batch_size=16, device="cpu", progress=False)
    sae.train_info["token_norm"] = "paper"
    sae.save(tmp_path / "sae.safetensors")
    from cellsae.sae import load

    loaded = load(tmp_path / "sae.safetensors")
    assert loaded.train_info["token_norm"] == "paper"
    # a raw store path is normalised as the SAE was trained, never fed raw tokens
    from_path = token_codes(loaded, path, pool="mean").toarray()
    from_store = token_codes(loaded, store, pool="mean").toarray()
    np.testing.assert_allclose(from_path, from_store, atol=1e-6)
    codes = loaded.encode(normalize_tokens(tokens, np.repeat(np.arange(8), 8)))
    want = np.asarray(codes.todense() if hasattr(codes, "todense") else codes)
    np.testing.assert_allclose(from_path, want.reshape(8, 8, -1).mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="token_norm 'paper' but the store"):
        token_codes(loaded, NormalizedTokenStore(path, "paper_batch"))
