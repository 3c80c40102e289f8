"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The text goes to a temporary file in the target's folder (same filesystem, so `os.replace` is
atomic), is flushed and (unless sync=False) fsync'ed, then renamed over the target. A crash or
Ctrl-C at any point leaves the old file intact; the temporary file is removed on the way out. The
folder must exist: a caller that may create it does so first, a caller whose user named a missing
folder reports that.

A full disk (ENOSPC, or a quota's EDQUOT) while writing is `errors.DiskFullError`, one line for the
user; the bytes go out through `os.write` (`write_all`), so a test can fill the disk on purpose.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
TEMP_SUFFIX = ".tmp"  # write_text_atomic's temporary is `.NAME.<random>.tmp`, next to NAME


@contextmanager
def disk_full_is_an_error(path: str | os.PathLike):
    """Turn a full disk met inside the block into DiskFullError naming `path`; any other OSError stays."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno not in _FULL:
            raise
        raise DiskFullError(e.errno, "no space left on the device (free some space, then run the command "
                                     "again)", str(path)) from None


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to the descriptor (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_text_atomic(path: str | os.PathLike, text: str, *, sync: bool = True) -> Path:
    target = Path(path)
    with disk_full_is_an_error(target):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
        try:
            try:
                write_all(fd, str.encode(text, "utf-8"))  # TypeError for anything but text
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def write_json_atomic(path: str | os.PathLike, doc, *, sync: bool = True, **dumps) -> Path:
    """`doc` as JSON (strict: NaN is refused) plus a newline; `dumps` goes to json.dumps."""
    dumps.setdefault("ensure_ascii", False)
    return write_text_atomic(path, json.dumps(doc, allow_nan=False, **dumps) + "\n", sync=sync)
