"""Grading for math benchmarks (docs/eager-method.md, section 6): is an extracted answer right?

- is_correct: numbers compare numerically ("18", "18.0", "$18", "18,000" == "18000"); LaTeX
  answers (MATH-500) go through math-verify for symbolic equivalence.
- Extraction (extract_answer) and the vote (majority_answer) live in eager_local/answers.py, shared
  with run and chat; they are imported here so graders find everything in one place.

math-verify (and sympy behind it) is imported lazily: loading it costs about a second and only
LaTeX grading needs it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from functools import lru_cache

from ..answers import (extract_answer, extract_boxed, extract_last_number, majority_answer,
                       normalize_answer_text, parse_number)
from ..answers import check_kind as _check_kind

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_last_number",
    "is_correct",
    "is_plain_number",
    "majority_answer",
    "normalize_answer_text",
    "parse_number",
    "resolve_kind",
]

# math-verify bounds each parse/compare with a timeout (seconds) ...
MATH_VERIFY_TIMEOUT_SECONDS = 5
# ... but that timeout needs SIGALRM, so it only works on POSIX in the main thread. Elsewhere
# we run without it, and refuse inputs this long, which are never real final answers and are
# the ones that can make sympy crawl.
MAX_SYMBOLIC_ANSWER_CHARS = 400


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------


def is_plain_number(text: str | None) -> bool:
    """A number written as digits ("18", "-3.5", "$1,000", "45%"), not as a fraction.

    Used to resolve kind "auto": a reference like \frac{1}{2} parses as a number but is a LaTeX
    answer, and the latex path (numbers first, then math-verify) grades it more forgivingly.
    """
    return parse_number(text) is not None and not re.search(r"\\[dt]?frac|/", text)


def resolve_kind(kind: str, reference: str) -> str:
    """"auto" -> "numeric" if the reference is a plain number, else "latex"; others unchanged."""
    _check_kind(kind)
    if kind == "auto":
        return "numeric" if is_plain_number(reference) else "latex"
    return kind


def is_correct(predicted: str | None, reference: str, kind: str) -> bool:
    """Whether the extracted answer predicted matches the reference answer.

    numeric: equal as numbers (when both parse as one), else equal after normalising text.
    latex: equal after normalising text, or equal as numbers, or equivalent for math-verify.
    """
    kind = resolve_kind(kind, reference)
    if predicted is None or not predicted.strip():
        return False
    predicted_number, reference_number = parse_number(predicted), parse_number(reference)
    if predicted_number is not None and reference_number is not None:
        return predicted_number == reference_number
    if normalize_answer_text(predicted) == normalize_answer_text(reference):
        return True
    if kind == "numeric":
        return False
    return _symbolically_equivalent(predicted, reference)


def _symbolically_equivalent(predicted: str, reference: str) -> bool:
    if len(predicted) > MAX_SYMBOLIC_ANSWER_CHARS or len(reference) > MAX_SYMBOLIC_ANSWER_CHARS:
        return False
    timeout = _usable_math_verify_timeout()
    gold = _parse_latex_answer(reference, timeout)
    target = _parse_latex_answer(predicted, timeout)
    if not gold or not target:
        return False
    from math_verify import verify

    # Gold first: math-verify's comparison is not symmetric. verify() itself turns sympy's errors
    # and its timeout into False (raise_on_error=False): a model's garbled answer is just wrong.
    return bool(verify(list(gold), list(target), timeout_seconds=timeout))


@lru_cache(maxsize=8192)
def _parse_latex_answer(answer: str, timeout: int | None) -> tuple:
    """math-verify's parse of an answer, wrapped in \\boxed{} so its box-first extraction reads
    exactly this answer. Cached: the same reference is graded against every sequence. parse()
    returns [] for what it cannot read or a parse that times out (raise_on_error=False)."""
    from math_verify import parse

    _silence_disabled_timeout_warning()
    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=timeout))


def _usable_math_verify_timeout() -> int | None:
    """math-verify's timeout uses signal.alarm: POSIX main thread only. In a worker thread it
    would raise, and on Windows it falls back to multiprocessing with a closure that cannot be
    pickled, so every answer would silently grade as wrong. There, run without a timeout."""
    if os.name == "posix" and threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_SECONDS
    return None


class _DropDisabledTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_warning_filter_installed = False


def _silence_disabled_timeout_warning() -> None:
    # We disable math-verify's timeout on purpose off the main thread (see above); its warning
    # about that would only alarm users.
    global _warning_filter_installed
    if not _warning_filter_installed:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropDisabledTimeoutWarning())
        _warning_filter_installed = True
