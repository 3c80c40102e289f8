"""`eager-local serve`: vLLM's tokenizer endpoints (/tokenizer_info, /tokenize, /detokenize), which
lm-evaluation-harness's `tokenizer_backend=remote` uses instead of downloading a tokenizer.

The expected token ids come from llama-cpp-python's own high-level `Llama` (vocab_only): its
tokenize and special-token ids, none of eager_local's code.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from serve_helpers import PROMPT_TOKENS, running_server

TEXTS = [
    "Hello, world!",
    "  Leading spaces,\ttabs and\nnew lines\n\n",
    "Ünïcödé: 東京, naïve café — 🚀🙂",
    "What is 17 + 25? The answer is 42.",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "",
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(llm):
    with running_server(llm, slots=2) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    root = server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(default_model_path):
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(default_model_path), vocab_only=True, verbose=False)
    yield model
    model.close()


def ref_tokens(reference, text: str, add_special: bool) -> list[int]:
    return reference.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)


def tokenize(http, text: str, **fields) -> dict:
    response = http.post("/tokenize", json={"prompt": text, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def detokenize(http, tokens: list[int]) -> str:
    response = http.post("/detokenize", json={"tokens": tokens})
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


@pytest.mark.parametrize("add_special", [True, False])
def test_tokenize_matches_llama_cpp(http, reference, add_special):
    for text in TEXTS:
        out = tokenize(http, text, add_special_tokens=add_special)
        assert out["tokens"] == ref_tokens(reference, text, add_special), text
        assert out["count"] == len(out["tokens"])


def test_add_special_tokens_defaults_to_true(http, reference):
    text = TEXTS[0]
    assert tokenize(http, text)["tokens"] == ref_tokens(reference, text, True)


def test_round_trip(http):
    for text in TEXTS:
        tokens = tokenize(http, text, add_special_tokens=False)["tokens"]
        assert detokenize(http, tokens) == text


def test_special_tokens_differ_by_the_bos(http, reference):
    adds_bos = reference._model.add_bos_token()
    for text in TEXTS[:4]:
        with_special = tokenize(http, text, add_special_tokens=True)["tokens"]
        without = tokenize(http, text, add_special_tokens=False)["tokens"]
        assert with_special == ([reference.token_bos()] if adds_bos else []) + without
    assert http.get("/tokenizer_info").json()["add_bos_token"] is adds_bos


def test_tokenizer_info(http, reference):
    info = http.get("/tokenizer_info").json()
    assert isinstance(info["tokenizer_class"], str)
    for name, token in (("eos_token", reference.token_eos()), ("bos_token", reference.token_bos())):
        assert isinstance(info[name], str)
        assert tokenize(http, info[name], add_special_tokens=False)["tokens"] == [token], name
    pad = int(reference.metadata["tokenizer.ggml.padding_token_id"])
    assert info["pad_token"] == reference.detokenize([pad], special=True).decode()
    assert info["chat_template"] == reference.metadata["tokenizer.chat_template"]
    # The context per request holds a prompt of the server's largest size and at most the model's training context.
    n_ctx_train = int(reference.metadata[reference.metadata["general.architecture"] + ".context_length"])
    assert PROMPT_TOKENS < info["model_max_length"] <= n_ctx_train
    assert tokenize(http, "x")["max_model_len"] == info["model_max_length"]


def test_detokenize_writes_special_tokens(http, reference):
    ids = [reference.token_bos()] + ref_tokens(reference, "Hi", False) + [reference.token_eos()]
    assert detokenize(http, ids) == reference.detokenize(ids, special=True).decode()
    assert detokenize(http, []) == ""


def test_tokenize_messages_is_what_chat_completions_prefills(http, server, reference):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    out = http.post("/tokenize", json={"messages": QUESTION, "model": server.limits.model})
    assert out.status_code == 200, out.text
    tokens = out.json()["tokens"]
    without_prompt = http.post("/tokenize", json={"messages": QUESTION, "add_generation_prompt": False})
    assert without_prompt.status_code == 200, without_prompt.text
    eos, bos = (reference.detokenize([token], special=True).decode()
                for token in (reference.token_eos(), reference.token_bos()))
    template = reference.metadata["tokenizer.chat_template"]
    for add_generation_prompt, got in ((True, tokens), (False, without_prompt.json()["tokens"])):
        text = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                   add_generation_prompt=add_generation_prompt)(messages=QUESTION).prompt
        assert got == ref_tokens(reference, text, False)
    assert len(without_prompt.json()["tokens"]) < len(tokens)
    chat = httpx.post(f"{server.base_url}/chat/completions", timeout=120, json={
        "model": server.limits.model, "messages": QUESTION, "max_tokens": 1, "temperature": 0})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == len(tokens)


def test_tokenizing_while_the_engine_decodes(http, server, reference):
    """The endpoints read the vocabulary on the request's thread while the engine's thread decodes."""
    expected = {text: ref_tokens(reference, text, False) for text in TEXTS}
    done = {}

    def generate():
        done["response"] = httpx.post(f"{server.base_url}/completions", timeout=300, json={
            "prompt": "Once upon a time", "max_tokens": 96, "temperature": 0, "n": 1})

    thread = threading.Thread(target=generate)
    thread.start()
    rounds = 0
    while thread.is_alive() or rounds < 3:
        for text in TEXTS:
            tokens = tokenize(http, text, add_special_tokens=False)["tokens"]
            assert tokens == expected[text]
            assert detokenize(http, tokens) == text
        rounds += 1
    thread.join()
    assert done["response"].status_code == 200
    assert done["response"].json()["usage"]["completion_tokens"] >= 1


MALFORMED = [
    ("/tokenize", b"{not json", None),
    ("/tokenize", b"[1, 2]", None),
    ("/tokenize", b"{}", "prompt"),
    ("/tokenize", b'{"prompt": 42}', "prompt"),
    ("/tokenize", b'{"prompt": ["a", "b"]}', "prompt"),
    ("/tokenize", b'{"prompt": "a", "add_special_tokens": "yes"}', "add_special_tokens"),
    ("/tokenize", b'{"prompt": "a", "messages": [{"role": "user", "content": "a"}]}', "messages"),
    ("/tokenize", b'{"messages": []}', "messages"),
    ("/tokenize", b'{"messages": [{"role": "wizard", "content": "a"}]}', "messages[0].role"),
    ("/tokenize", b'{"messages": [{"role": "user", "content": "a"}], "add_special_tokens": true}',
     "add_special_tokens"),
    ("/tokenize", b'{"messages": [{"role": "user", "content": "a"}], "continue_final_message": true}',
     "continue_final_message"),
    ("/tokenize", b'{"prompt": "a", "model": 7}', "model"),
    ("/detokenize", b"{}", "tokens"),
    ("/detokenize", b'{"tokens": "1 2 3"}', "tokens"),
    ("/detokenize", b'{"tokens": [1, -1]}', "tokens"),
    ("/detokenize", b'{"tokens": [1, 99999999]}', "tokens"),
    ("/detokenize", b'{"tokens": [1, 2.5]}', "tokens"),
    ("/detokenize", b'{"tokens": [true]}', "tokens"),
    ("/detokenize", b"null", None),
]


def test_malformed_requests_are_400s(http, reference):
    for path, body, param in MALFORMED:
        response = http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], (path, body)
        assert error["param"] == param, (path, body, error)
    # The vocabulary's last id is in range; one past it was refused above.
    assert http.post("/detokenize", json={"tokens": [reference.n_vocab() - 1]}).status_code == 200
    assert http.post("/detokenize", json={"tokens": [reference.n_vocab()]}).status_code == 400
    # still serving
    text = "Hello, world!"
    assert tokenize(http, text, add_special_tokens=False)["tokens"] == ref_tokens(reference, text, False)


def test_unknown_model_is_404(http):
    response = http.post("/tokenize", json={"prompt": "a", "model": "no-such-model"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_api_key_applies(llm):
    with running_server(llm, api_key="sesame", slots=1) as running:
        root = running.base_url.removesuffix("/v1")
        calls = [("GET", "/tokenizer_info", None), ("POST", "/tokenize", {"prompt": "a"}),
                 ("POST", "/detokenize", {"tokens": [1]})]
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = httpx.request(method, root + path, json=body, headers=headers, timeout=60)
                assert refused.status_code == 401, (path, headers)
                assert refused.json()["error"]["code"] == "invalid_api_key"
            allowed = httpx.request(method, root + path, json=body, headers={"Authorization": "Bearer sesame"},
                                    timeout=60)
            assert allowed.status_code == 200, (path, allowed.text)
