"""The base of the models package: its error, where the cache lives, and the sha256 of files.

A model file is identified by its sha256 (a calibration profile and an evaluation's manifest are
keyed by it), and hashing a multi-GB GGUF takes seconds, so a hash is computed once and kept:
- next to a pulled file, in a sidecar `FILE.gguf.sha256` ("<hex>  FILE.gguf", sha256sum's format);
- for any other file (a local path the user gave), in `home_dir()/sha256-cache.json`, keyed by
  path, size and modification time, so an edited file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ..errors import EagerError
from ..io import write_json_atomic, write_text_atomic

CHUNK = 1 << 20  # files are read and copied 1 MiB at a time
_SIDECAR_SUFFIX = ".sha256"


class ModelError(EagerError):
    """A model that cannot be found, fetched or used. The message is one line meant for users."""


# --- locations -------------------------------------------------------------------------------------
def home_dir() -> Path:
    """``$EAGER_LOCAL_HOME``, else ``$XDG_CACHE_HOME/eager_local``, else ``~/.cache/eager_local``."""
    env = os.environ.get("EAGER_LOCAL_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "eager_local"
    return Path.home() / ".cache" / "eager_local"


def models_dir() -> Path:
    """Where pulled model files live: ``home_dir()/models``."""
    return home_dir() / "models"


# --- telling the user ------------------------------------------------------------------------------
def progress_bar(total: int | None, desc: str, enabled: bool, *, unit: str = "B"):
    """A tqdm bar on stderr counting bytes (or `unit`s, e.g. wheels), or None when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, **scaled)


def say(msg: str, enabled: bool) -> None:
    """One line on stderr (stdout is for results: `models path` prints a path there)."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)


# --- hashes ----------------------------------------------------------------------------------------
def gguf_sha256(path: str | os.PathLike, *, progress: bool = False) -> str:
    """Hex sha256 of a file (a GGUF, or a wheel that holds one), read in 1 MiB chunks."""
    p = Path(path)
    h = hashlib.sha256()
    bar = progress_bar(p.stat().st_size, f"sha256 {p.name}", progress)
    try:
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


def model_sha256(path: str | os.PathLike, known: str | None = None) -> str:
    """sha256 of a model file: `known` when the registry gives it, else hashed once per (path,
    size, mtime) and remembered in the home directory's hash cache."""
    if known:
        return known.lower()
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = home_dir() / "sha256-cache.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # no cache yet, or a damaged one: start afresh
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if key in cache:
        return cache[key]
    digest = gguf_sha256(path, progress=sys.stderr.isatty())
    cache[key] = digest
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_path, cache, sync=False)
    except OSError:
        pass  # a cache we cannot write only costs a re-hash next time
    return digest


def sidecar(path: Path) -> Path:
    """The file holding `path`'s sha256."""
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> str | None:
    """The sha256 recorded next to `path`, or None when there is none (or it is not a hash)."""
    try:
        text = sidecar(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    digest = text.split()[0].lower() if text else ""
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return digest
    return None


def write_sidecar(path: Path, digest: str) -> None:
    write_text_atomic(sidecar(path), f"{digest}  {path.name}\n")
