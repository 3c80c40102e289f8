"""`eager-local serve`: token-id prompts on /v1/completions and CORS (`--cors-origin`).

Token ids come from the model's own tokenizer in this test, never from the server: a prompt sent as
those ids must give what the same prompt sent as text gives (same seed), and other ids other text.
CORS is checked with httpx the way a browser asks: a preflight OPTIONS without credentials, then the
request itself with an Origin header.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest

from cli_helpers import assert_one_line_error, eager
from serve_helpers import PROMPT_TOKENS, running_server, wait_until

KEY = "sesame"
ORIGIN = "http://example.test"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def server(llm):
    with running_server(llm, api_key=KEY, slots=2, cors_origins=(ORIGIN,)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client(api_key=KEY)


def still_serves(server, client) -> None:
    out = client.completions.create(model=server.limits.model, prompt="Hi", n=1, max_tokens=2)
    assert len(out.choices) == 1 and out.usage.completion_tokens >= 1


# token-id prompts -------------------------------------------------------------------------------------

def test_token_ids_give_what_their_text_gives(llm, server, client):
    ids = llm.model.tokenize(PROMPT, add_special=True)
    kwargs = dict(model=server.limits.model, n=4, max_tokens=16, seed=5, temperature=0.9, extra_body={"theta": 1.0})
    as_text = client.completions.create(prompt=PROMPT, **kwargs)
    as_ids = client.completions.create(prompt=ids, **kwargs)
    nested = client.completions.create(prompt=[ids], **kwargs)
    texts = [c.text for c in as_text.choices]
    assert texts and any(texts)
    assert [c.text for c in as_ids.choices] == texts == [c.text for c in nested.choices]
    assert as_ids.model_extra["eager"]["branches"] == as_text.model_extra["eager"]["branches"]
    assert as_ids.usage.prompt_tokens == nested.usage.prompt_tokens == len(ids)
    assert as_ids.usage.completion_tokens == as_text.usage.completion_tokens


def test_token_ids_are_the_prompt(llm, server, client):
    """Other ids, other text: the server decodes the ids it was sent, nothing added before them."""
    def greedy(prompt):
        out = client.completions.create(model=server.limits.model, prompt=prompt, n=1, max_tokens=4, temperature=0)
        return out.choices[0].text, out.usage.prompt_tokens

    france = llm.model.tokenize(PROMPT, add_special=True)
    germany = llm.model.tokenize("The capital of Germany is", add_special=True)
    assert greedy(france)[0] != greedy(germany)[0]
    assert greedy(germany) == greedy("The capital of Germany is")
    tail = france[2:]  # ids no text of ours starts with: still taken as they are
    assert greedy(tail)[1] == len(tail)


def test_token_id_prompt_streams(llm, server, client):
    ids = llm.model.tokenize(PROMPT, add_special=True)
    kwargs = dict(model=server.limits.model, prompt=ids, n=1, max_tokens=8, temperature=0)
    whole = client.completions.create(**kwargs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].text and streamed


def bad_prompts(n_vocab: int) -> list[tuple[str, object, str]]:
    """(case, prompt, a fragment of the error message)."""
    return [
        ("negative", [5, -1, 7], "-1"),
        ("n_vocab", [5, n_vocab], str(n_vocab)),
        ("far-beyond", [[2**40]], str(2**40)),
        ("floats", [5.0, 6.0], "float"),
        ("bools", [True, False], "bool"),
        ("mixed", [5, "x"], "str"),
        ("empty", [], "empty"),
        ("nested-empty", [[]], "empty"),
        ("two-id-arrays", [[5, 6], [7, 8]], "one prompt per request"),
        ("two-strings", ["a", "b"], "one prompt per request"),
        ("too-long", [5] * (PROMPT_TOKENS + 1), f"{PROMPT_TOKENS} tokens"),
    ]


@pytest.mark.parametrize("case", [c for c, _, _ in bad_prompts(0)])
def test_bad_token_ids_are_a_400_and_the_server_goes_on(llm, server, client, case):
    _, prompt, fragment = next(b for b in bad_prompts(llm.model.n_vocab) if b[0] == case)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=server.limits.model, prompt=prompt, max_tokens=2)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == "prompt"
    assert fragment in error["message"], error["message"]
    if case == "too-long":
        assert error["code"] == "context_length_exceeded"
    still_serves(server, client)


def test_chat_is_unchanged_by_token_ids(server, client):
    """Token ids are a completion prompt; chat messages stay messages."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.limits.model, messages=[5, 6], max_tokens=2)
    assert caught.value.body["param"] == "messages[0]"


# CORS -------------------------------------------------------------------------------------------------

def preflight(base_url: str, origin: str = ORIGIN, path: str = "/chat/completions") -> httpx.Response:
    return httpx.options(f"{base_url}{path}", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})


def test_preflight_needs_no_key_and_allows_the_origin(server):
    response = preflight(server.base_url)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert {"GET", "POST", "OPTIONS"} <= set(response.headers["access-control-allow-methods"].split(", "))
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    other = preflight(server.base_url, origin="http://elsewhere.test")
    assert "access-control-allow-origin" not in other.headers


def test_requests_from_the_origin_still_need_the_key_and_carry_the_header(server):
    url = f"{server.base_url}/models"
    ok = httpx.get(url, headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert ok.json()["data"][0]["id"] == server.limits.model
    refused = httpx.get(url, headers={"Origin": ORIGIN})  # a page can read why it was refused
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    assert refused.json()["error"]["code"] == "invalid_api_key"
    body = {"model": server.limits.model, "prompt": "Hi", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body,
                      headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}) as stream:
        assert stream.status_code == 200 and stream.headers["access-control-allow-origin"] == ORIGIN
        assert "[DONE]" in stream.read().decode()
    elsewhere = httpx.get(url, headers={"Origin": "http://elsewhere.test", "Authorization": f"Bearer {KEY}"})
    assert elsewhere.status_code == 200 and "access-control-allow-origin" not in elsewhere.headers


def test_without_cors_origins_no_cors_headers(llm):
    with running_server(llm, slots=1) as plain:
        response = preflight(plain.base_url)
        assert response.status_code == 405 and "access-control-allow-origin" not in response.headers
        got = httpx.get(f"{plain.base_url}/models", headers={"Origin": ORIGIN})
        assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


def test_any_origin(llm):
    with running_server(llm, slots=1, cors_origins=("*",)) as running:
        response = preflight(running.base_url, origin="http://anywhere.test")
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
        got = httpx.get(f"{running.base_url}/models", headers={"Origin": "http://anywhere.test"})
        assert got.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origin", ["example.test", "http://example.test/", "http://example.test/app", ""])
def test_bad_cors_origin_is_a_one_line_error(origin):
    assert_one_line_error(eager("serve", "--cors-origin", origin, timeout=120), "--cors-origin")


def test_serve_process_with_cors_origin_and_key():
    """The option as a user gives it, through the command, to a real process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "eager_local", "serve", "--port", str(port), "-M", "2",
                                "-n", "8", "--slots", "1", "--max-prompt-tokens", "64", "--kv-memory", "32",
                                "--cors-origin", "http://a.test", "--cors-origin", ORIGIN],
                               env=dict(os.environ, EAGER_LOCAL_API_KEY=KEY), stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        def up():
            try:
                return httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            except httpx.ConnectError:
                return False

        assert wait_until(up, timeout=120, step=0.3), "the server did not come up"
        for origin in ("http://a.test", ORIGIN):
            response = preflight(base_url, origin=origin)
            assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
        assert httpx.get(f"{base_url}/models", headers={"Origin": ORIGIN}).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
