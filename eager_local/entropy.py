"""Top-K entropy of next-token distributions, many rows at once (pure numpy).

EAGer measures uncertainty as the Shannon entropy (nats) of the K largest logits renormalised among
themselves (K = 20 in the paper), from the raw logits (temperature 1). H lies in [0, ln K].
"""

from __future__ import annotations

import numpy as np

DEFAULT_TOP_K = 20


def top_k_entropy(logits: np.ndarray, k: int = DEFAULT_TOP_K, temperature: float = 1.0) -> np.ndarray:
    """Entropy in nats of the softmax over each row's k largest logits.

    `logits` is (rows, vocab); returns (rows,) float64. `temperature` != 1 is the ablation that
    measures the tempered sampling distribution instead of the raw one.
    """
    logits = np.atleast_2d(logits)
    k = min(k, logits.shape[1])
    # np.partition is O(vocab) per row; we need the k values, not their order.
    top = np.partition(logits, logits.shape[1] - k, axis=1)[:, -k:].astype(np.float64)
    if temperature != 1.0:
        top = top / temperature
    top -= top.max(axis=1, keepdims=True)
    weights = np.exp(top)
    total = weights.sum(axis=1, keepdims=True)
    q = weights / total
    # H = -sum q ln q = ln(total) - sum q * shifted_logit   (stable: no log of tiny q)
    return np.log(total[:, 0]) - (q * top).sum(axis=1)


def top_two_tokens(row: np.ndarray) -> tuple[int, int]:
    """The most likely and second most likely token ids of one logits row."""
    pair = np.argpartition(row, row.shape[0] - 2)[-2:]
    first, second = (pair[1], pair[0]) if row[pair[1]] >= row[pair[0]] else (pair[0], pair[1])
    return int(first), int(second)
