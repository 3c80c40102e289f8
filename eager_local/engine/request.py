"""What a caller hands the engine (a `Request` per prompt) and what it can watch (`TokenCallback`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import tree as T
from ..config import GenerationConfig


@dataclass
class Request:
    """One prompt to generate for, with the per-prompt overrides of the call's config.

    `tokens` is the full prompt. To continue a conversation already in the KV cache, name the
    llama sequence holding it (`prefix_seq`) and how many leading tokens of `tokens` it already
    holds (`reuse`): only the rest is decoded.

    A request may carry a whole config of its own (`config`: method, θ, M, length, seed, sampling,
    ...) instead of the call's, so prompts with different settings share one step loop (a server's
    requests); the single overrides below still win over it. `on_token` watches this request's
    tokens only, in addition to the call's callback. `on_logprobs`, when set, receives each of its
    tokens' log-probability (log-softmax of the raw logits) and the `top_logprobs` most likely
    tokens, just before `on_token` sees the token. `on_prompt_logprobs`, when set, receives the
    same for the prompt's own tokens once it is prefilled: a list of (token, log-probability, top)
    for each prompt token after the first (after `reuse`, with a kept prefix); only then does the
    prefill compute logits for every prompt token.
    """

    tokens: list[int]
    text: str = ""
    index: int = 0  # selects the random streams: same index and seed, same samples
    # stream number of the request's first sample: a later wave of a prompt (first_sequence = k)
    # draws the samples k, k+1, … that full parallel sampling of the prompt draws
    first_sequence: int = 0
    max_sequences: int | None = None  # overrides the config's cap (reallocated EAGer runs)
    theta: float | None = None  # overrides the config's θ (full EAGer retries)
    seed: int | None = None  # overrides the config's seed (a calibration check runs a prompt with several)
    budget: int | None = None  # cap on this prompt's generated tokens (#T), besides the call's budget
    prefix_seq: int | None = None
    reuse: int = 0
    config: GenerationConfig | None = None  # this prompt's settings (default: the call's config)
    on_token: TokenCallback | None = None
    on_logprobs: LogprobCallback | None = None
    top_logprobs: int = 0
    on_prompt_logprobs: PromptLogprobCallback | None = None


# Called after every token a sequence receives: (its prompt's tree, the sequence, the token). A
# callback that returns True ends that sequence there, with finish reason `stop` (a stop string);
# one that returns a finish reason of tree.py (e.g. `low_confidence`) ends it with that reason.
TokenCallback = Callable[[T.Tree, T.Sequence, int], "bool | str | None"]

# Called with (the sequence, its new token, that token's log-probability, the top alternatives as
# [(token, log-probability)], most likely first).
LogprobCallback = Callable[[T.Sequence, int, float, "list[tuple[int, float]]"], None]

# Called once, after the prefill, with (token, log-probability, top alternatives) for each prompt
# token after the first (after `reuse`), in order.
PromptLogprobCallback = Callable[[list[tuple[int, float, "list[tuple[int, float]]"]]], None]
