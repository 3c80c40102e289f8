"""Malformed requests to `eager-local serve`: each gets a 4xx with an OpenAI error object, and the
server answers the next good request.

Bodies a client library would never send (broken JSON, a body over the limit, a wrong route) go
through httpx; everything else through the `openai` client, whose exceptions carry the status.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from serve_helpers import CAP, PROMPT_TOKENS, running_server

MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def server(llm):
    with running_server(llm, slots=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def still_serves(server, client) -> None:
    out = client.chat.completions.create(model=server.limits.model, messages=MESSAGES, n=1, max_tokens=2)
    assert len(out.choices) == 1 and out.usage.completion_tokens >= 1


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error
    assert "Traceback" not in response.text
    return error


# (endpoint, body, status, the field the error names): sent by the openai client as extra fields
# over a valid request, so each case breaks exactly one thing.
BAD_FIELDS = [
    ("chat", {"n": 0}, 400, "n"),
    ("chat", {"n": CAP + 1}, 400, "n"),
    ("chat", {"n": "two"}, 400, "n"),
    ("chat", {"max_tokens": -1}, 400, "max_tokens"),
    ("chat", {"max_tokens": 0}, 400, "max_tokens"),
    ("chat", {"temperature": "hot"}, 400, "temperature"),
    ("chat", {"temperature": 5}, 400, "temperature"),
    ("chat", {"top_p": 0}, 400, "top_p"),
    ("chat", {"seed": 1.5}, 400, "seed"),
    ("chat", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("chat", {"stop": 7}, 400, "stop"),
    ("chat", {"stream": "yes"}, 400, "stream"),
    ("chat", {"method": "beam-search"}, 400, "method"),
    ("chat", {"theta": -1}, 400, "theta"),
    ("chat", {"theta": "auto"}, 400, "theta"),
    ("chat", {"target_sequences": 4}, 400, "target_sequences"),
    ("chat", {"top_logprobs": 3}, 400, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("chat", {"messages": []}, 400, "messages"),
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("chat", {"messages": [{"role": "user", "content": 42}]}, 400, "messages[0].content"),
    ("chat", {"messages": "hello"}, 400, "messages"),
    ("chat", {"model": "gpt-17"}, 404, "model"),
    ("completion", {"prompt": 42}, 400, "prompt"),
    ("completion", {"prompt": ""}, 400, "prompt"),
    ("completion", {"logprobs": 99}, 400, "logprobs"),
]


@pytest.mark.parametrize("endpoint,fields,status,param", BAD_FIELDS,
                         ids=[f"{e}-{'-'.join(f)}-{s}" for e, f, s, _ in BAD_FIELDS])
def test_bad_field_is_a_4xx_naming_it(server, client, endpoint, fields, status, param):
    with pytest.raises(openai.APIStatusError) as caught:
        if endpoint == "chat":
            client.chat.completions.create(model=server.limits.model, messages=MESSAGES, max_tokens=2,
                                           extra_body=fields)
        else:
            client.completions.create(model=server.limits.model, prompt="Hi", max_tokens=2, extra_body=fields)
    error = caught.value
    assert error.status_code == status, error
    assert error.body["param"] == param and param in error.body["message"]
    still_serves(server, client)


def test_prompt_longer_than_the_context(server, client):
    long_prompt = "one two three four five six seven eight nine ten " * (PROMPT_TOKENS // 5)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=server.limits.model, prompt=long_prompt, max_tokens=2)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert f"{PROMPT_TOKENS} tokens" in caught.value.body["message"]
    still_serves(server, client)


@pytest.mark.parametrize("content,status", [
    (b"{not json", 400),
    (b"[1, 2, 3]", 400),
    (b"\xff\xfe\x00garbage", 400),
    (b"", 400),
])
def test_body_that_is_not_a_json_object(server, client, content, status):
    response = httpx.post(f"{server.base_url}/chat/completions", content=content,
                          headers={"Content-Type": "application/json"})
    assert_openai_error(response, status)
    still_serves(server, client)


def test_huge_body_is_refused_unread(server, client):
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * (3 << 20) + b'"}]}'
    response = httpx.post(f"{server.base_url}/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413)
    still_serves(server, client)


def test_unknown_route_and_wrong_method(server, client):
    assert_openai_error(httpx.post(f"{server.base_url}/embeddings", json={"input": "x"}), 404)
    assert_openai_error(httpx.get(f"{server.base_url}/chat/completions"), 405)
    still_serves(server, client)


def test_unknown_fields_are_ignored(server, client):
    out = client.chat.completions.create(model=server.limits.model, messages=MESSAGES, max_tokens=2, n=1,
                                         extra_body={"frobnicate": True, "presence_penalty": 0.5})
    assert len(out.choices) == 1
