"""Seeded sampling over many rows at once (pure numpy).

Each sequence owns a random stream derived from (seed, prompt index, sequence number), so a
sequence's draws do not depend on which other sequences share its batch: the same seed and inputs
give the same tree, token for token, and a prompt run alone samples as it does in a crowd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_k: int = 0  # 0 = off (the full vocabulary)
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off

    def validate(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min-p must be in [0, 1), got {self.min_p}")


def sequence_rng(seed: int, prompt_index: int, sequence_number: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, prompt_index, sequence_number])))


def sample_rows(logits: np.ndarray, uniforms: np.ndarray, params: SamplingParams) -> np.ndarray:
    """One token per row by inverse-CDF sampling with one uniform draw per row.

    Temperature 0 is greedy. With top-k/top-p/min-p off this samples the full vocabulary exactly.
    """
    if params.temperature == 0:
        return np.argmax(logits, axis=1)
    scaled = logits * np.float32(1.0 / params.temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled, out=scaled)
    if params.top_k or params.top_p < 1 or params.min_p > 0:
        probs = _truncate(probs, params)
    cdf = np.cumsum(probs, axis=1, out=probs)
    thresholds = uniforms.astype(np.float32) * cdf[:, -1]
    # First index whose cumulative mass exceeds the draw.
    tokens = (cdf <= thresholds[:, None]).sum(axis=1)
    return np.minimum(tokens, logits.shape[1] - 1)


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
