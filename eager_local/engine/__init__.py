"""The engine: every live sequence of every active prompt advances one token per llama_decode.

Two methods are policies over one loop (eager-method.md §2 and §4):

- `parallel`: prefill the prompt once, fork it M ways, sample M independent sequences;
- `eager-init`: start with one sequence; a live sequence whose top-K entropy exceeds θ branches:
  it keeps the most likely token and a new sequence (forked KV, nothing recomputed) takes the
  second, until the prompt has M sequences or W steps pass without a branch.

The loop follows llama.cpp's `batched` and `parallel` examples: one batch per step with one token
per live row, prompts admitted as earlier ones finish so the batch stays full, sequence ids
recycled. Read it in this order:

    request.py   what a caller hands in: a Request per prompt (token ids, per-prompt overrides)
    engine.py    Engine: owns the llama.cpp context across calls; sizes, grows and reuses it,
                 keeps sequences alive for chat; generate() / stream() run one call
    sizing.py    how large a context a call needs and how many prompts run at once; the forecast
                 of how wide an EAGer prompt grows (admission)
    loop.py      StepLoop, one call: admit, decode, advance (entropy, branch, sample), fork, finish
    streams.py   SequencePool: the call's sequence ids (KV streams), forks waiting for one, and
                 the prompt cache (a free stream keeps its prompt for a prompt that starts alike)
    groups.py    a step's rows grouped by their prompts' settings (per-request configs, budgets)
    serving.py   ServingLoop, a server's loop: requests join (Inbox) and leave between steps
    state.py     what a call keeps per prompt (PromptRun) and per live sequence (Row); StepStats

The branch rule itself (θ, cap M, window W, budget cut) is `eager_local/branching.py`: pure
functions over the rows of a step, shared with calibration's estimator.
"""

from __future__ import annotations

from .engine import Engine, check_prompt_lengths
from .request import LogprobCallback, Request, TokenCallback
from .serving import Inbox, InboxClosed, ServingLoop
from .state import StepStats

__all__ = ["Engine", "check_prompt_lengths", "Inbox", "InboxClosed", "LogprobCallback", "Request", "ServingLoop", "StepStats",
           "TokenCallback"]
