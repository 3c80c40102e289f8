"""Seeded sampling over many rows at once (pure numpy).

Each sequence owns a random stream derived from (seed, prompt index, sequence number), so a
sequence's draws do not depend on which other sequences share its batch: the same seed and inputs
give the same tree, token for token, and a prompt run alone samples as it does in a crowd.
"""

from __future__ import annotations

import numpy as np

from .config import SamplingParams


def sequence_rng(seed: int, prompt_index: int, sequence_number: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, prompt_index, sequence_number])))


def sample_rows(logits: np.ndarray, uniforms: np.ndarray, params: SamplingParams) -> np.ndarray:
    """One token per row by inverse-CDF sampling with one uniform draw per row.

    Temperature 0 is greedy. With top-k/top-p/min-p off this samples the full vocabulary exactly.
    """
    if params.temperature == 0:
        return np.argmax(logits, axis=1)
    # exp((l - max) / T): one new array, then in place
    scaled = logits - logits.max(axis=1, keepdims=True)
    scaled *= np.float32(1.0 / params.temperature)
    probs = np.exp(scaled, out=scaled)
    if params.top_k or params.top_p < 1 or params.min_p > 0:
        probs = _truncate(probs, params)
    return _inverse_cdf(probs, uniforms)


_BLOCK = 256


def _inverse_cdf(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Index of the first cumulative weight exceeding uniform * total, per row.

    Two levels instead of a full cumulative sum over the vocabulary (the hottest numpy call of a
    step): sum blocks of 256, find the block, then accumulate inside that one block only.
    """
    rows, vocab = weights.shape
    padded = -(-vocab // _BLOCK) * _BLOCK
    if padded != vocab:
        weights = np.concatenate([weights, np.zeros((rows, padded - vocab), dtype=weights.dtype)], axis=1)
    blocks = weights.reshape(rows, padded // _BLOCK, _BLOCK)
    block_cdf = np.cumsum(blocks.sum(axis=2), axis=1, dtype=np.float64)
    targets = uniforms * block_cdf[:, -1]
    block = np.minimum((block_cdf <= targets[:, None]).sum(axis=1), block_cdf.shape[1] - 1)
    before = np.where(block > 0, block_cdf[np.arange(rows), block - 1], 0.0)
    inner = np.cumsum(blocks[np.arange(rows), block].astype(np.float64), axis=1) + before[:, None]
    offset = np.minimum((inner <= targets[:, None]).sum(axis=1), _BLOCK - 1)
    return np.minimum(block * _BLOCK + offset, vocab - 1)


def _truncate(probs: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Zero the tokens excluded by top-k, min-p and top-p (in llama.cpp's order)."""
    probs = probs.copy()
    vocab = probs.shape[1]
    if params.top_k and params.top_k < vocab:
        kth = np.partition(probs, vocab - params.top_k, axis=1)[:, vocab - params.top_k]
        probs[probs < kth[:, None]] = 0
    if params.min_p > 0:  # probs are relative to the max (which is 1 after the shift)
        probs[probs < params.min_p] = 0
    if params.top_p < 1:
        order = np.argsort(-probs, axis=1)
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        cum = np.cumsum(sorted_probs, axis=1)
        total = cum[:, -1:]
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop_sorted = (cum - sorted_probs) >= params.top_p * total
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        probs[drop] = 0
    return probs


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of `token` under one row's raw logits (temperature 1, no truncation: the
    model's own distribution), and the `top` most likely tokens with theirs, most likely first."""
    shifted = logits.astype(np.float64) - float(logits.max())
    log_total = float(np.log(np.exp(shifted).sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        idx = np.argpartition(-shifted, top - 1)[:top]
        idx = idx[np.argsort(-shifted[idx], kind="stable")]
        best = [(int(i), float(shifted[i] - log_total)) for i in idx]
    return float(shifted[token] - log_total), best
