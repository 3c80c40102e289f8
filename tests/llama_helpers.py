"""Driving a llama `Context` by hand in tests: greedy decoding of one sequence, one token per call."""

from __future__ import annotations

import numpy as np


def greedy(ctx, seq_id: int, logits: np.ndarray, start: int, n: int) -> tuple[list[int], np.ndarray]:
    """Decode `n` tokens greedily on sequence `seq_id`, from the logits that predict position `start`.

    Returns the tokens and the logits after the last one (a copy: the context reuses its buffer), so
    a caller can continue the same sequence, or another that holds the same cells, from there."""
    out = []
    for i in range(n):
        out.append(int(np.argmax(logits)))
        logits = ctx.decode([out[-1]], [start + i], [seq_id], [1])[0].copy()
    return out, logits
