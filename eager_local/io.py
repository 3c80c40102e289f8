"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The text goes to a temporary file in the target's folder (same filesystem, so `os.replace` is
atomic), is flushed and (unless sync=False) fsync'ed, then renamed over the target. A crash or
Ctrl-C at any point leaves the old file intact; the temporary file is removed on the way out. The
folder must exist: a caller that may create it does so first, a caller whose user named a missing
folder reports that.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str, *, sync: bool = True) -> Path:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json_atomic(path: str | os.PathLike, doc, *, sync: bool = True, **dumps) -> Path:
    """`doc` as JSON (strict: NaN is refused) plus a newline; `dumps` goes to json.dumps."""
    dumps.setdefault("ensure_ascii", False)
    return write_text_atomic(path, json.dumps(doc, allow_nan=False, **dumps) + "\n", sync=sync)
