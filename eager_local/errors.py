"""The errors a user can cause, and only those.

Every front-end turns an `EagerError` (or a missing or unreadable file the user named) into one
line on stderr and exit code 2, or a 4xx response. Anything else is a bug and keeps its traceback:
so raise one of these for bad input, never a bare ValueError.
"""

from __future__ import annotations

import errno


class EagerError(Exception):
    """Bad input, worded for a user in one line."""


class ConfigError(EagerError, ValueError):
    """A nonsense generation parameter."""


class DiskFullError(EagerError, OSError):
    """A write that found the disk (or the user's quota) full: `OSError(errno, strerror, filename)`.

    An OSError too, so code that tolerates a failed write (a cache it can rebuild) still does; a
    front-end shows it as one line, and everything written before it is kept (io.py says how).
    """

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


# What the command line reports as one line (cli/options.py). File errors are the user's only when
# they name a path that is missing or not theirs to read; any other OSError is the machine's.
USER_ERRORS = (EagerError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# An OSError with one of these numbers is the user's too: a read-only filesystem they named for output.
USER_ERRNOS = (errno.EROFS,)
