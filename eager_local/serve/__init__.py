"""`eager-local serve`: an OpenAI-compatible HTTP server whose completions branch (EAGer).

    schema.py      OpenAI request bodies → a checked `Ask` (config, stream, stop, ...), or a 4xx ApiError
    scheduler.py   the engine's thread: one serving loop for every request (continuous batching
                   across clients), and the `Job` that carries a request between it and the HTTP side
    responses.py   trees → OpenAI objects: choices (one per branch), usage (#T), the `eager` object
    tokenizer.py   vLLM's tokenizer routes (/tokenize, /detokenize, /tokenizer_info), which
                   lm-evaluation-harness's remote tokenizer reads
    app.py         the Starlette app: routes, auth, body limit, streaming, disconnects

The engine knows nothing of HTTP: it sees Requests with a config each, arriving through an Inbox.
"""

from __future__ import annotations

from .app import create_app
from .scheduler import Scheduler
from .schema import ApiError, Limits

__all__ = ["ApiError", "Limits", "Scheduler", "create_app"]
