"""vLLM's tokenizer endpoints, answered with the served GGUF's own tokenizer (llama.cpp's).

    GET  /tokenizer_info   the special tokens (as text), whether a BOS is added, the context per
                           request and the GGUF's chat template: what a client needs to tokenize,
                           build chat prompts and count tokens without the model's files
    POST /tokenize         {"prompt": text, "add_special_tokens": true} → {"tokens", "count",
                           "max_model_len"}; or {"messages": [...], "add_generation_prompt": true}:
                           the tokens /v1/chat/completions would prefill for those messages
    POST /detokenize       {"tokens": [ids]} → {"prompt": text}

lm-evaluation-harness's `tokenizer_backend=remote` (its `RemoteTokenizer`) tokenizes through these,
so a log-likelihood evaluation needs no tokenizer download. The request shapes and defaults are
vLLM's (`add_special_tokens` true for a prompt; a chat's special tokens are its template's). Text is
tokenized as a text prompt of /v1/completions is: special tokens written in it (`<|im_end|>`) are
parsed as those tokens, which is how a client finds the EOS id from `eos_token`. Detokenizing writes
special tokens out, as vLLM's (Hugging Face's `decode`) does.

Tokenizing only reads the model's vocabulary (no context, no KV cache), so it runs on the request's
thread while the engine decodes on its own, as the prompts of the completion routes are tokenized.
These functions take parsed bodies and return response bodies; app.py routes, authorizes and reads.
"""

from __future__ import annotations

from jinja2 import TemplateError

from ..llama import LlamaError
from .schema import ApiError, Limits, _bool, _error, integer_ids, messages_of, object_body, token_ids_in_vocabulary

# GGUF keys of the special tokens a Hugging Face tokenizer config names (vLLM returns that config).
SPECIAL_TOKENS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                  "pad_token": "tokenizer.ggml.padding_token_id", "unk_token": "tokenizer.ggml.unknown_token_id"}


def chat_tokens(runner, limits: Limits, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """The token ids of chat messages through the GGUF's chat template, with the server's system
    message first when the messages bring none; a 400 when the template refuses them or is missing."""
    if limits.system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": limits.system}] + messages
    try:
        return runner.chat_tokens(messages, add_generation_prompt=add_generation_prompt)
    # The template refuses these messages (its raise_exception raises ValueError), or there is none.
    except (TemplateError, ValueError, LlamaError) as e:
        raise ApiError(f"the model's chat template refused the messages: {e}", param="messages") from None


def max_model_len(model, cells_per_sequence: int) -> int:
    """Tokens one request may hold, prompt and generated together (the server's prompts are capped
    lower, by --max-prompt-tokens)."""
    return min(cells_per_sequence, model.n_ctx_train) if model.n_ctx_train > 0 else cells_per_sequence


def tokenizer_info(model, context: int) -> dict:
    """The fields of vLLM's /tokenizer_info that a GGUF answers: the special tokens as text (null
    when the GGUF names none), whether tokenizing adds a BOS, the context per request, the chat
    template (null without one)."""
    info: dict = {"tokenizer_class": f"llama.cpp ({model.metadata('tokenizer.ggml.model') or 'unknown'})"}
    for name, key in SPECIAL_TOKENS.items():
        value = model.metadata(key)
        token = int(value) if value is not None and value.lstrip("-").isdigit() else -1
        info[name] = model.piece(token).decode("utf-8", "replace") if 0 <= token < model.n_vocab else None
    info["add_bos_token"] = model.adds_bos()
    info["model_max_length"] = context
    info["chat_template"] = model.chat_template() or None
    return info


def tokenize(body, runner, limits: Limits, context: int) -> dict:
    """/tokenize: a text prompt's tokens, or a chat's (exactly one of `prompt` and `messages`)."""
    body = object_body(body, limits)
    has_prompt, has_messages = body.get("prompt") is not None, body.get("messages") is not None
    if has_prompt == has_messages:
        raise ApiError("expected exactly one of 'prompt' (a string) and 'messages' (a chat)",
                       param="messages" if has_messages else "prompt")
    if has_prompt:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise _error("prompt", f"expected a string, got {type(prompt).__name__}")
        tokens = runner.model.tokenize(prompt, add_special=_bool(body, "add_special_tokens", True))
    else:
        messages = messages_of(body)
        if _bool(body, "add_special_tokens", False):
            raise _error("add_special_tokens", "with 'messages' the tokens are those /v1/chat/completions "
                                               "prefills (the chat template places the special tokens); "
                                               "leave it out or false")
        if _bool(body, "continue_final_message", False):
            raise _error("continue_final_message", "not supported by this server")
        tokens = chat_tokens(runner, limits, messages,
                             add_generation_prompt=_bool(body, "add_generation_prompt", True))
    return {"tokens": tokens, "count": len(tokens), "max_model_len": context}


def detokenize(body, model, limits: Limits) -> dict:
    """/detokenize: token ids → their text, special tokens written out."""
    body = object_body(body, limits)
    tokens = body.get("tokens")
    if not isinstance(tokens, list):
        raise _error("tokens", "expected an array of token ids")
    integer_ids(tokens, "tokens")
    token_ids_in_vocabulary(tokens, model.n_vocab, param="tokens")
    return {"prompt": model.detokenize(tokens)}
