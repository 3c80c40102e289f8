"""`eager-local serve`'s tokenizer endpoints on a model that adds a BOS token.

The test model (SmolLM2-135M) says `tokenizer.ggml.add_bos_token = false`, so tests/test_serve_tokenizer.py
only sees `add_special_tokens` change nothing. Here the server runs on a copy of the same GGUF with that
one boolean byte set to true: /tokenize with add_special_tokens must then put the BOS first, and
/tokenizer_info must say so. The byte is found by walking the GGUF header in this file (not with
eager_local's reader), and the expected ids come from llama-cpp-python's own `Llama` on the copy.
"""

from __future__ import annotations

import shutil
import struct

import httpx
import pytest

from serve_helpers import running_server

ADD_BOS_KEY = b"tokenizer.ggml.add_bos_token"
TEXTS = [
    "Hello, world!",
    "  Leading spaces,\ttabs and\nnew lines\n\n",
    "Ünïcödé: 東京, naïve café — 🚀🙂",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n",
    "",
]

# GGUF metadata value types: fixed sizes; 8 is a string, 9 an array (type, count, items).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_BOOL, _STRING, _ARRAY = 7, 8, 9


def _value_end(data: bytes, pos: int, vtype: int) -> int:
    """The offset just past a metadata value of type `vtype` that starts at `pos`."""
    if vtype in _FIXED:
        return pos + _FIXED[vtype]
    if vtype == _STRING:
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
    assert vtype == _ARRAY, vtype
    etype, count = struct.unpack_from("<IQ", data, pos)
    pos += 12
    if etype in _FIXED:
        return pos + _FIXED[etype] * count
    for _ in range(count):
        pos = _value_end(data, pos, etype)
    return pos


def bool_offset(path, key: bytes) -> int | None:
    """The byte offset of boolean metadata `key`'s value in a GGUF (v2/v3) file; None if absent."""
    data = path.read_bytes()
    magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF" and version in (2, 3), (magic, version)
    pos = 24
    for _ in range(n_kv):
        key_len = struct.unpack_from("<Q", data, pos)[0]
        name = data[pos + 8:pos + 8 + key_len]
        pos += 8 + key_len
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if name == key:
            assert vtype == _BOOL, f"{key!r} has type {vtype}, not bool"
            return pos
        pos = _value_end(data, pos, vtype)
    return None


@pytest.fixture(scope="module")
def bos_model_path(default_model_path, tmp_path_factory):
    """A copy of the test model whose add_bos_token byte is 1 (the same file name, so the registry
    still knows the model by name)."""
    offset = bool_offset(default_model_path, ADD_BOS_KEY)
    assert offset is not None, f"{default_model_path.name} has no {ADD_BOS_KEY.decode()}"
    copy = tmp_path_factory.mktemp("bos") / default_model_path.name
    shutil.copyfile(default_model_path, copy)
    with open(copy, "r+b") as f:
        f.seek(offset)
        assert f.read(1) == b"\x00", "the test model already adds a BOS"
        f.seek(offset)
        f.write(b"\x01")
    return copy


@pytest.fixture(scope="module")
def reference(bos_model_path):
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(bos_model_path), vocab_only=True, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def http(bos_model_path):
    from eager_local.api import EagerLocal

    llm = EagerLocal(str(bos_model_path))
    with running_server(llm, slots=1) as running:
        with httpx.Client(base_url=running.base_url.removesuffix("/v1"), timeout=120) as client:
            yield client


def tokenize(http, text: str, add_special: bool) -> list[int]:
    response = http.post("/tokenize", json={"prompt": text, "add_special_tokens": add_special})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["tokens"])
    return body["tokens"]


def test_the_copy_adds_a_bos(reference):
    assert reference.metadata["tokenizer.ggml.add_bos_token"] == "true"
    assert reference._model.add_bos_token()
    assert reference.token_bos() >= 0


def test_special_tokens_put_the_bos_first(http, reference):
    bos = reference.token_bos()
    for text in TEXTS:
        without = tokenize(http, text, False)
        with_special = tokenize(http, text, True)
        assert without == reference.tokenize(text.encode("utf-8"), add_bos=False, special=True), text
        assert with_special == reference.tokenize(text.encode("utf-8"), add_bos=True, special=True), text
        assert with_special == [bos] + without, text
    # vLLM's default for a prompt is add_special_tokens true.
    response = http.post("/tokenize", json={"prompt": TEXTS[0]})
    assert response.status_code == 200 and response.json()["tokens"] == [bos] + tokenize(http, TEXTS[0], False)


def test_tokenizer_info_says_a_bos_is_added(http, reference):
    info = http.get("/tokenizer_info").json()
    assert info["add_bos_token"] is True
    assert info["bos_token"] == reference.detokenize([reference.token_bos()], special=True).decode()
