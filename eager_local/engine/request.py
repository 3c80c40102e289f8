"""What a caller hands the engine (a `Request` per prompt) and what it can watch (`TokenCallback`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import tree as T


@dataclass
class Request:
    """One prompt to generate for, with the per-prompt overrides of the call's config.

    `tokens` is the full prompt. To continue a conversation already in the KV cache, name the
    llama sequence holding it (`prefix_seq`) and how many leading tokens of `tokens` it already
    holds (`reuse`): only the rest is decoded.
    """

    tokens: list[int]
    text: str = ""
    index: int = 0  # selects the random streams: same index and seed, same samples
    max_sequences: int | None = None  # overrides the config's cap (reallocated EAGer runs)
    theta: float | None = None  # overrides the config's θ (full EAGer retries)
    seed: int | None = None  # overrides the config's seed (a calibration check runs a prompt with several)
    prefix_seq: int | None = None
    reuse: int = 0


# Called after every token a sequence receives: (its prompt's tree, the sequence, the token).
TokenCallback = Callable[[T.Tree, T.Sequence, int], None]
