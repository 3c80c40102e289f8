"""OpenAI request bodies → what the engine runs: validation, with OpenAI-style errors.

A body is checked field by field against the OpenAI schema of `/v1/chat/completions` and
`/v1/completions`, plus EAGer's extension fields (`method`, `theta`, `target_sequences`, `budget`,
sent the way optillm's clients send theirs, in the body). Unknown fields are ignored, as OpenAI
clients expect; a known field with a bad value is an `ApiError` (400, naming the field), never an
exception of the server's.

`n` is the cap M: the most sequences the prompt may branch into. Without `n` the server's own cap
applies, so a client that knows nothing of EAGer still gets the model's choice of how many.

`echo` (completions only, as in OpenAI's API) returns the prompt before each choice's text and, with
`logprobs`, the prompt tokens' log-probabilities first. `max_tokens: 0` scores the prompt without
generating (one choice, no tokens): it goes with `echo`; without it nothing would come back, so it
is a 400, as vLLM answers. `echo: true` on chat completions is a 400 too: OpenAI's chat API has no
echo, and ignoring it would hand an echo-reading client an answer it misreads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import METHODS, GenerationConfig, parse_theta_spec
from ..errors import ConfigError, EagerError

MAX_STOPS = 4  # OpenAI's limit on `stop` strings
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on `top_logprobs`
ROLES = ("system", "user", "assistant", "developer", "tool")


class ApiError(EagerError):
    """A request the server refuses, as OpenAI words it: an HTTP status and an error object."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What this server serves: its model's name, its default settings and its caps (n ≤ M,
    max_tokens ≤ max_new_tokens, prompts ≤ prompt_tokens)."""

    model: str
    config: GenerationConfig
    prompt_tokens: int
    system: str | None = None  # system message for chat requests that bring none
    seed: int | None = None  # seed of requests that bring none (None: a fresh random one each, as OpenAI)

    @property
    def max_sequences(self) -> int:
        return self.config.max_sequences


@dataclass
class Ask:
    """One validated request: the prompt (messages, text or token ids), its config and how to answer."""

    kind: str  # "chat" or "completion"
    prompt: str | list[dict] | list[int]  # completion: text or token ids; chat: messages
    config: GenerationConfig
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: none; else the number of top alternatives per token
    echo: bool = False  # completions: the prompt comes back before the text (and in the logprobs)
    budget: int | None = None  # cap on the prompt's generated tokens (#T)
    n_given: bool = False  # the client chose n (then streaming sends every branch as its choice)


def _error(param: str, message: str) -> ApiError:
    return ApiError(f"'{param}': {message}", param=param)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(body: dict, name: str, *, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _error(name, f"expected an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _error(name, f"must be {bound}, got {value}")
    return value


def _number(body: dict, name: str, *, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise _error(name, f"expected a number, got {type(value).__name__}")
    if value > high or value < low or (low_open and value == low):
        raise _error(name, f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value}")
    return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _error(name, f"expected a boolean, got {type(value).__name__}")
    return value


def object_body(body, limits: Limits) -> dict:
    """The body, refused unless it is a JSON object naming this server's model (or none)."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    check_model(body, limits)
    return body


def check_model(body: dict, limits: Limits) -> None:
    model = body.get("model")
    if model is None:
        return  # the one model this server serves
    if not isinstance(model, str):
        raise _error("model", f"expected a string, got {type(model).__name__}")
    if model != limits.model:
        raise ApiError(f"The model '{model}' does not exist; this server serves '{limits.model}'",
                       status=404, param="model", code="model_not_found")


def messages_of(body: dict) -> list[dict]:
    """The chat messages, each {role, content} with content as one string."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _error("messages", "expected a non-empty array of messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _error(where, "expected an object")
        role = message.get("role")
        if role not in ROLES:
            raise _error(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content(message.get("content"), f"{where}.content")})
    return out


def _content(content, where: str) -> str:
    """A message's text: a string, or an array of text parts (images are not for this server)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _error(where, f"expected a string or an array of content parts, got {type(content).__name__}")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _error(where, "only text content parts ({'type': 'text', 'text': ...}) are supported")
        texts.append(part["text"])
    return "".join(texts)


def prompt_of(body: dict) -> str | list[int]:
    """The completion prompt: text (a string, or an array of one string) or token ids (an array of
    integers, or an array holding one), as OpenAI's schema allows. Token ids are the prompt as the
    client tokenized it (lm-evaluation-harness sends them): they reach the model unchanged, nothing
    added; `token_ids_in_vocabulary` checks them against the served model's vocabulary."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise _error("prompt", f"one prompt per request, got an array of {len(prompt)}; "
                                   "send each prompt as its own request")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise _error("prompt", "must not be empty")
        return prompt
    if not isinstance(prompt, list):
        raise _error("prompt", "expected a string or an array of token ids (or an array of one of them)")
    if not prompt:
        raise _error("prompt", "must not be empty")
    integer_ids(prompt, "prompt")
    return list(prompt)


def integer_ids(tokens: list, param: str) -> None:
    """Refuse an array of token ids holding anything but integers (a bool is not one)."""
    for i, token in enumerate(tokens):
        if not _is_int(token):
            raise _error(param, f"token ids must be integers; item {i} is {type(token).__name__}")


def token_ids_in_vocabulary(tokens: list[int], n_vocab: int, param: str = "prompt") -> None:
    """Refuse token ids the model has no token for (llama.cpp would fail on them)."""
    for i, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise _error(param, f"token id {token} (item {i}) is outside the model's vocabulary "
                                f"[0, {n_vocab})")


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _error("stop", "expected a string or an array of strings")
    if len(stops) > MAX_STOPS:
        raise _error("stop", f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
    if any(not s for s in stops):
        raise _error("stop", "stop sequences must not be empty")
    return stops


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in `text` (None: nowhere)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text a client gets: up to the first stop string, which is not included (as OpenAI)."""
    cut = first_stop(text, stops)
    return text if cut is None else text[:cut]


def _logprobs(body: dict, kind: str) -> int | None:
    """Chat: `logprobs` (bool) and `top_logprobs` (0-20); completions: `logprobs` (0-20)."""
    if kind == "completion":
        return _int(body, "logprobs", low=0, high=MAX_TOP_LOGPROBS)
    wanted = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise _error("top_logprobs", "requires 'logprobs': true")
    return (top or 0) if wanted else None


def _echo(body: dict, kind: str) -> bool:
    echo = _bool(body, "echo")
    if echo and kind == "chat":
        raise _error("echo", "chat completions do not echo the prompt (nor does OpenAI's chat API); "
                             "send the prompt to /v1/completions with 'echo': true")
    return echo


def _max_tokens(body: dict, kind: str, echo: bool) -> int | None:
    """`max_completion_tokens`, else `max_tokens`: >= 1, or 0 with echo (prompt scoring)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = _int(body, name, low=0)
        if value == 0 and not echo:
            hint = " (0 scores the prompt without generating: send it with 'echo': true)"
            raise _error(name, f"must be >= 1, got 0{hint if kind == 'completion' else ''}")
        if value is not None:
            return value
    return None


def _theta(body: dict) -> float | None:
    value = body.get("theta")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _error("theta", f"expected a number, got {type(value).__name__}")
    try:
        kind, theta = parse_theta_spec(value)
    except ConfigError as e:
        raise _error("theta", str(e)) from None
    if kind != "number":
        raise _error("theta", "'auto' and quantiles are resolved once, when the server starts "
                              "(eager-local serve --theta auto); a request gives θ as a number")
    if not math.isfinite(theta) or theta < 0:
        raise _error("theta", f"must be a number >= 0 (nats), got {value}")
    return theta


def parse(body, kind: str, limits: Limits, seed: int) -> Ask:
    """Check a request body (`kind`: "chat" or "completion") and build its Ask; without a seed in
    the body, the server's (`limits.seed`), else `seed`. Raises ApiError."""
    object_body(body, limits)
    prompt = messages_of(body) if kind == "chat" else prompt_of(body)
    cap = limits.config
    options: dict = {}
    n = _int(body, "n", low=1, high=cap.max_sequences)
    if n is not None:
        options["max_sequences"] = n
    echo = _echo(body, kind)
    budget = _int(body, "budget", low=0)
    max_tokens = _max_tokens(body, kind, echo)
    if max_tokens == 0:  # score the prompt only: one sequence, cut before its first token
        options["max_sequences"], budget = 1, 0
    elif max_tokens is not None:  # longer than the server's cap: cut at the cap (finish_reason "length")
        options["max_new_tokens"] = min(max_tokens, cap.max_new_tokens)
    temperature = _number(body, "temperature", low=0, high=2)
    if temperature is not None:
        options["temperature"] = temperature
    top_p = _number(body, "top_p", low=0, high=1, low_open=True)
    if top_p is not None:
        options["top_p"] = top_p
    given_seed = _int(body, "seed", low=-(2**63), high=2**64 - 1)
    if given_seed is None:
        given_seed = seed if limits.seed is None else limits.seed
    options["seed"] = given_seed % 2**64  # random streams take seeds >= 0
    method = body.get("method")
    if method is not None:
        if method not in METHODS:
            raise _error("method", f"expected one of {', '.join(METHODS)}, got {method!r}")
        options["method"] = method
    theta = _theta(body)
    if theta is not None:
        options["theta"] = theta
    if body.get("target_sequences") is not None:
        raise _error("target_sequences", "goes with theta 'auto', which this server resolves when it starts "
                                         "(eager-local serve --theta auto -S N)")
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _error("stream_options", "expected an object")
    include_usage = _bool(stream_options, "include_usage")
    config = cap.with_options(**options)
    try:
        config.validate()
    except ConfigError as e:
        raise ApiError(str(e)) from None
    return Ask(kind=kind, prompt=prompt, config=config, stream=stream, include_usage=include_usage,
               stop=_stops(body), logprobs=_logprobs(body, kind), echo=echo, budget=budget,
               n_given=n is not None)
