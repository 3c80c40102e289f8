"""Running `eager-local` as a user does (a real process) and checking its one-line errors."""

from __future__ import annotations

import json
import os
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


# The engine's thread count for test runs of `eval` (CI pins it with EAGER_LOCAL_THREADS).
THREADS = ["--threads", os.environ["EAGER_LOCAL_THREADS"]] if os.environ.get("EAGER_LOCAL_THREADS") else []


def write_toy_dataset(path, problems: list[tuple[str, str]]):
    """A user JSONL of (question, solution) pairs with ids q0, q1, …, as `--problem-field question
    --answer-field solution` reads it."""
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "solution": a}) + "\n"
                            for i, (q, a) in enumerate(problems)))
    return path


def toy_eval_args(toy_file, out, *extra) -> list[str]:
    """`eval` over a toy dataset of write_toy_dataset, without a progress bar, into `out`."""
    return ["eval", "--dataset", str(toy_file), "--problem-field", "question", "--answer-field", "solution",
            "--no-progress", "--out", str(out), *THREADS, *extra]
