"""What a user's --model means: nothing (the default), a file, a URL, or a registry name."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from .cache import ModelError, models_dir, say
from .fetch import download_url
from .pulling import fetch_into_cache, pull_entry
from .gguf import check_gguf
from .registry import ResolvedModel, default_entry, get_entry, list_models

# Names the model used when none is given (a registry name, a .gguf path or a URL), instead of the
# registry's default: a user's own default, and how the test suite keeps its small, fast model.
MODEL_ENV = "EAGER_LOCAL_MODEL"


def resolve(spec: str | os.PathLike | None, *, progress: bool = True) -> ResolvedModel:
    """Turn a user's model spec into a local, GGUF-checked file.

    None -> $EAGER_LOCAL_MODEL if set, else the registry default (pulled on first use); an existing file -> that file;
    http(s) URL -> downloaded into the cache under its file name; a registry name -> pull.
    """
    if spec is None and os.environ.get(MODEL_ENV, "").strip():
        spec = os.environ[MODEL_ENV]
    if spec is None:
        entry = default_entry()
        path, digest = pull_entry(entry, progress=progress)
        check_gguf(path)
        return ResolvedModel(path, entry.name, digest, entry.end_of_thinking)

    text = os.fspath(spec).strip()
    if not text:
        raise ModelError("empty model name (see `eager-local models list`)")
    local = Path(text).expanduser()
    if local.is_dir():
        raise ModelError(f"{text} is a directory, not a model file")
    if local.is_file():
        check_gguf(local)
        # A file the registry knows by name keeps its end-of-thinking marker; its hash is not checked.
        known = next((e for e in list_models() if e.file == local.name), None)
        return ResolvedModel(local, known.name if known else None, None,
                             known.end_of_thinking if known else None)
    if _is_url(text):
        resolved = _resolve_url(text, progress=progress)
        check_gguf(resolved.path)
        return resolved
    entry = get_entry(text)
    if entry is not None:
        path, digest = pull_entry(entry, progress=progress)
        check_gguf(path)
        return ResolvedModel(path, entry.name, digest, entry.end_of_thinking)
    if text.lower().endswith(".gguf") or os.sep in text or (os.altsep and os.altsep in text):
        raise ModelError(f"model file not found: {text}")
    raise ModelError(
        f"unknown model '{text}': not a registry name, a file, or a URL (see `eager-local models list`)"
    )


def _is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def _url_file_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    name = urllib.parse.unquote(path.rsplit("/", 1)[-1]).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ModelError(f"cannot tell a file name from URL {url} (it should end in /NAME.gguf)")
    return name


def _resolve_url(url: str, *, progress: bool) -> ResolvedModel:
    """A registry model's URL pulls that model (verified); any other URL is cached under its file name."""
    for entry in list_models():
        if entry.url == url:
            path, digest = pull_entry(entry, progress=progress)
            return ResolvedModel(path, entry.name, digest, entry.end_of_thinking)
    dest = models_dir() / _url_file_name(url)

    def download() -> str:
        say(f"downloading {url}", progress)
        return download_url(url, dest, expected_sha256=None, expected_size=None, label=url, progress=progress)

    digest, fetched = fetch_into_cache(dest, None, None, label=url, progress=progress, fetch_file=download)
    if fetched:
        say(f"{dest.name}: sha256 {digest} (not verified: unknown URL; recorded)", progress)
    return ResolvedModel(dest, None, digest, None)
