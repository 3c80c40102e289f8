"""`eager-local serve`: `echo` and prompt logprobs on /v1/completions, as lm-evaluation-harness's
`local-completions` uses them for log-likelihood tasks.

The expected log-probabilities come from llama-cpp-python's own high-level `Llama` (its context,
its batching, `logits_all=True`), log-softmaxed here with numpy: nothing of eager_local computes
them. The server decodes a prompt whose logits it needs in chunks of PROMPT_LOGITS_CHUNK (128)
tokens in a context with a KV stream per sequence; the reference decodes it in one batch of up to
512 tokens in a one-sequence context. llama.cpp's CPU kernels compute each row on its own, so the
two agree to the last bit on this machine; the 1e-3 tolerance leaves room for backends whose matrix
kernels depend on the batch's shape.
"""

from __future__ import annotations

import json
from operator import itemgetter

import httpx
import numpy as np
import pytest

from serve_helpers import running_server

TOL = 1e-3
# Over 128 tokens (two prompt-logits chunks) and under serve_helpers.PROMPT_TOKENS (200).
LONG_PROMPT = ("Water boils at one hundred degrees Celsius at sea level. At higher altitudes the air pressure "
               "is lower, so water boils at a lower temperature, and food takes longer to cook. Pressure "
               "cookers raise the pressure inside the pot, which raises the boiling point; this is why they "
               "cook beans, rice and tough cuts of meat faster. In the mountains, hikers often notice that "
               "their tea is not as hot as it is at home. Salt raises the boiling point of water a little, "
               "but far less than most cooks believe: a spoonful in a large pot changes it by a fraction of a "
               "degree. Sugar does the same, which is why candy makers watch a thermometer closely as a "
               "syrup thickens, since its temperature tells them how much water is left in it.")
CONTEXT = "The capital of France is"
# A chat turn the test model answers with "The capital of France is Paris." and then <|im_end|>.
CHAT_CONTEXT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                "<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
                "<|im_start|>assistant\n")
CHAT_ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def server(llm):
    with running_server(llm, slots=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def reference(default_model_path):
    """llama-cpp-python's Llama over the test model, keeping every token's logits. Its weights load
    without llama.cpp's extra buffer types where eager_local leaves them off (their AMX kernels
    crash on CPUs that report AMX; llama.Model's docstring), the one setting the class hides."""
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    from eager_local.machine import default_threads, extra_buffers_enabled

    defaults = lc.llama_model_default_params

    def params():
        out = defaults()
        out.use_extra_bufts = extra_buffers_enabled()
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lc, "llama_model_default_params", params)
        model = llama_cpp.Llama(str(default_model_path), logits_all=True, n_ctx=1024, n_batch=512,
                                n_threads=default_threads(), n_threads_batch=default_threads(), verbose=False)
    yield model
    model.close()


def reference_logprobs(reference, ids: list[int]) -> np.ndarray:
    """Row i: the log-softmax of the logits after ids[:i+1] (float64)."""
    reference.reset()
    reference.eval(ids)
    scores = np.asarray(reference.scores[:len(ids)], dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def tokenize(reference, text: str) -> list[int]:
    return reference.tokenize(text.encode(), add_bos=True, special=True)


def complete(server, body: dict) -> dict:
    """POST /v1/completions with a raw JSON body (as lm-eval's client sends it); the response's JSON."""
    response = httpx.post(f"{server.base_url}/completions", json={"model": server.limits.model, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


# the prompt's logprobs -------------------------------------------------------------------------------

def test_echoed_logprobs_equal_llama_cpp_pythons(server, reference):
    ids = tokenize(reference, LONG_PROMPT)
    assert 128 < len(ids) <= server.limits.prompt_tokens
    expected = reference_logprobs(reference, ids)
    out = complete(server, {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 0})
    lp = out["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) == out["usage"]["prompt_tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    got = np.array(lp["token_logprobs"][1:], dtype=np.float64)
    want = expected[np.arange(len(ids) - 1), ids[1:]]
    assert np.max(np.abs(got - want)) < TOL
    best = expected[:-1].argmax(axis=1)
    for i, top in enumerate(lp["top_logprobs"][1:]):
        (token, logprob), = top.items()
        assert token == reference.detokenize([int(best[i])]).decode("utf-8", "replace")
        assert abs(logprob - expected[i, best[i]]) < TOL
    assert lp["tokens"] == [reference.detokenize([t]).decode("utf-8", "replace") for t in ids]


def test_max_tokens_0_echo_is_the_prompt_and_its_logprobs(server, client):
    prompt = "The capital of France is"
    out = client.completions.create(model=server.limits.model, prompt=prompt, echo=True, logprobs=3, max_tokens=0)
    (choice,) = out.choices
    assert choice.text == prompt and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == out.usage.prompt_tokens > 1
    assert "".join(lp.tokens) == prompt
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) == 3 and max(top.values()) >= logprob
               for top, logprob in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))


def test_text_offsets_point_into_the_text_when_tokens_split_characters(server, client):
    prompt = "Prix: 5 € — café 日本"
    out = client.completions.create(model=server.limits.model, prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == prompt
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert any("\ufffd" in t for t in lp.tokens)  # the prompt has characters split over tokens
    for token, at in zip(lp.tokens, lp.text_offset):
        whole = token.split("\ufffd")[0]  # the characters before a partial one, if any
        assert prompt[at:at + len(whole)] == whole
        if not whole:  # it starts inside a character: its offset is that character's
            assert at < len(prompt) and ord(prompt[at]) > 127


# echo with generation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(temperature=0, n=1, max_tokens=12),
                                    dict(temperature=0.9, n=4, max_tokens=16, extra_body={"theta": 1.0})])
def test_echo_leaves_the_generation_alone(server, client, kwargs):
    prompt = "The three primary colors are"
    common = dict(model=server.limits.model, prompt=prompt, seed=11, logprobs=2, **kwargs)
    plain = client.completions.create(**common)
    echoed = client.completions.create(echo=True, **common)
    no_logprobs = client.completions.create(echo=True, **{**common, "logprobs": None})
    n_prompt = plain.usage.prompt_tokens
    assert [c.index for c in echoed.choices] == [c.index for c in plain.choices]
    assert any(c.text for c in plain.choices) and (len(plain.choices) > 1) == (kwargs["n"] > 1)
    assert [c.text for c in no_logprobs.choices] == [prompt + c.text for c in plain.choices]
    assert all(c.logprobs is None for c in no_logprobs.choices)
    for p, e in zip(plain.choices, echoed.choices):
        assert e.text == prompt + p.text and e.finish_reason == p.finish_reason
        # past the prompt: the same tokens and logprobs, and with echo an end-of-generation token
        generated = list(zip(e.logprobs.tokens, e.logprobs.token_logprobs, e.logprobs.top_logprobs))[n_prompt:]
        if p.finish_reason == "stop":
            assert len(generated) == len(p.logprobs.tokens) + 1 and generated[-1][0] == "<|im_end|>"
            generated = generated[:-1]
        assert generated == list(zip(p.logprobs.tokens, p.logprobs.token_logprobs, p.logprobs.top_logprobs))
        assert e.logprobs.text_offset[n_prompt:][:len(p.logprobs.text_offset)] == \
            [len(prompt) + at for at in p.logprobs.text_offset]
    assert echoed.usage == plain.usage
    assert echoed.model_extra["eager"]["branches"] == plain.model_extra["eager"]["branches"]


def test_echo_lists_the_end_of_generation_token(server, client):
    """It adds nothing to the text (its offset is the text's end), but it is the token generated."""
    common = dict(model=server.limits.model, prompt=CHAT_CONTEXT, logprobs=1, max_tokens=40, temperature=0, n=1)
    plain = client.completions.create(**common).choices[0]
    echoed = client.completions.create(echo=True, **common).choices[0]
    assert plain.finish_reason == echoed.finish_reason == "stop" and plain.text == CHAT_ANSWER
    assert echoed.text == CHAT_CONTEXT + CHAT_ANSWER
    assert echoed.logprobs.tokens[-1] == "<|im_end|>" and echoed.logprobs.text_offset[-1] == len(echoed.text)
    assert echoed.logprobs.tokens[-len(plain.logprobs.tokens) - 1:-1] == plain.logprobs.tokens
    assert "<|im_end|>" not in plain.logprobs.tokens


def test_streamed_echo_sends_the_prompt_first(server, client):
    prompt = "Once upon a time"
    common = dict(model=server.limits.model, prompt=prompt, echo=True, logprobs=1, max_tokens=8, temperature=0, n=1)
    whole = client.completions.create(**common)
    chunks = [c for c in client.completions.create(stream=True, **common) if c.choices]
    assert chunks[0].choices[0].text.startswith(prompt)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    with_logprobs = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert len(with_logprobs) == 1 and with_logprobs[0].tokens == whole.choices[0].logprobs.tokens
    assert with_logprobs[0].token_logprobs == whole.choices[0].logprobs.token_logprobs
    only_prompt = [c for c in client.completions.create(stream=True, **{**common, "max_tokens": 0}) if c.choices]
    assert "".join(c.choices[0].text for c in only_prompt) == prompt


# lm-evaluation-harness ---------------------------------------------------------------------------------

def parse_logprobs(outputs, ctxlens):
    """lm-evaluation-harness's LocalCompletionsAPI.parse_logprobs (lm_eval/models/openai_completions.py,
    EleutherAI/lm-evaluation-harness 4e7e0d4), its lines as they are: the sum of the continuation's
    token_logprobs and whether each was its position's most likely token. `[ctxlen:-1]` drops the
    last entry: the one token its request asks to generate."""
    res = []
    if not isinstance(outputs, list):
        outputs = [outputs]
    for out in outputs:
        for choice, ctxlen in zip(sorted(out["choices"], key=itemgetter("index")), ctxlens, strict=False):
            assert ctxlen > 0, "Context length must be greater than 0"
            logprobs = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
            tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
            top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
            is_greedy = True
            for tok, top in zip(tokens_logprobs, top_logprobs, strict=False):
                if tok != max(top.values()):
                    is_greedy = False
                    break
            res.append((logprobs, is_greedy))
    return res


def lm_eval_payload(model: str, ids: list[int]) -> dict:
    """LocalCompletionsAPI._create_payload(generate=False) for one tokenized request (batch_size 1)."""
    return {"model": model, "prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}


@pytest.mark.parametrize("context, continuation, greedy", [
    (CONTEXT, " Paris", True),
    (CONTEXT, " London, of course", False),
    (CHAT_CONTEXT, CHAT_ANSWER, True),  # the one token generated after it ends generation
])
def test_lm_eval_loglikelihood(server, reference, context, continuation, greedy):
    context = tokenize(reference, context)
    ids = context + reference.tokenize(continuation.encode(), add_bos=False, special=False)
    expected = reference_logprobs(reference, ids)
    rows = np.arange(len(context) - 1, len(ids) - 1)  # the rows predicting the continuation's tokens
    want_sum = float(expected[rows, ids[len(context):]].sum())
    want_greedy = bool(np.all(expected[rows].argmax(axis=1) == ids[len(context):]))

    out = complete(server, lm_eval_payload(server.limits.model, ids))
    json.dumps(out, allow_nan=False)  # what lm-eval's client parses
    assert len(out["choices"][0]["logprobs"]["token_logprobs"]) == len(ids) + 1
    if continuation == CHAT_ANSWER:
        assert out["choices"][0]["logprobs"]["tokens"][-1] == "<|im_end|>"
    (got_sum, got_greedy), = parse_logprobs(out, [len(context)])
    assert abs(got_sum - want_sum) < TOL * len(rows)
    assert got_greedy == want_greedy
    assert got_greedy == greedy  # the model knows the capital of France

    scored = complete(server, {**lm_eval_payload(server.limits.model, ids), "max_tokens": 0})
    assert sum(scored["choices"][0]["logprobs"]["token_logprobs"][len(context):]) == pytest.approx(got_sum, abs=1e-9)


# bad input ---------------------------------------------------------------------------------------------

BAD = [
    ("chat", {"echo": True}, "echo"),
    ("chat", {"echo": True, "max_tokens": 0}, "echo"),
    ("chat", {"max_tokens": 0}, "max_tokens"),
    ("completions", {"echo": "yes"}, "echo"),
    ("completions", {"echo": True, "logprobs": 21}, "logprobs"),
    ("completions", {"echo": True, "logprobs": -1}, "logprobs"),
    ("completions", {"max_tokens": 0}, "max_tokens"),
    ("completions", {"max_completion_tokens": 0, "logprobs": 1}, "max_completion_tokens"),
    ("completions", {"echo": True, "max_tokens": -1}, "max_tokens"),
    ("completions", {"echo": True, "max_tokens": 0, "prompt": []}, "prompt"),
]


@pytest.mark.parametrize("endpoint, extra, param", BAD)
def test_bad_echo_requests_are_one_line_400s(server, client, endpoint, extra, param):
    body = {"model": server.limits.model}
    body.update({"messages": [{"role": "user", "content": "Hi"}]} if endpoint == "chat" else {"prompt": "Hi"})
    response = httpx.post(f"{server.base_url}/{endpoint.replace('chat', 'chat/completions')}",
                          json={**body, **extra}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "\n" not in error["message"] and "Traceback" not in response.text
    assert client.completions.create(model=server.limits.model, prompt="Hi", max_tokens=1, n=1).choices


def test_chat_takes_echo_false(server, client):
    out = client.chat.completions.create(model=server.limits.model, messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=2, n=1, extra_body={"echo": False})
    assert out.choices[0].message.content is not None
