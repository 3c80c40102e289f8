"""Running `eager-local` as a user does (a real process) and checking its one-line errors."""

from __future__ import annotations

import subprocess
import sys


def eager(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eager_local", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def assert_one_line_error(result, *fragments) -> None:
    """Bad input: exit code 2, exactly one line on stderr containing every fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
