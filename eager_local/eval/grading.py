"""Answer extraction and grading for math benchmarks (docs/eager-method.md, section 6).

- extract_answer: the content of the last \\boxed{...} / \\fbox{...}; for numeric datasets, if
  there is no box, the last number in the text.
- is_correct: numbers compare numerically ("18", "18.0", "$18", "18,000" == "18000"); LaTeX
  answers (MATH-500) go through math-verify for symbolic equivalence.
- majority_answer: the cons@k vote, grouping equivalent answers.

math-verify (and sympy behind it) is imported lazily: loading it costs about a second and only
LaTeX grading needs it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

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

KINDS = ("numeric", "latex", "auto")

# math-verify bounds each parse/compare with a timeout (seconds) ...
MATH_VERIFY_TIMEOUT_SECONDS = 5
# ... but that timeout needs SIGALRM, so it only works on POSIX in the main thread. Elsewhere
# we run without it, and refuse inputs this long, which are never real final answers and are
# the ones that can make sympy crawl.
MAX_SYMBOLIC_ANSWER_CHARS = 400


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")

# A number as written in prose: optional minus and dollar sign, digits with optional
# thousands separators ("18,000") and decimals. The look-behind keeps "10-12" from giving -12
# and "x2" from being read as a number; the minus must touch the digits, so "10 - 3" gives 3.
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])-?(?:\\?\$\s?)?-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def extract_answer(text: str | None, kind: str = "numeric") -> str | None:
    """The model's final answer in text, or None if it gave none.

    The last complete \\boxed{...} (or \\fbox{...}) wins; nested braces are fine. A box that never
    closes (e.g. a generation cut by the token budget) is ignored. Without any box, numeric and
    auto kinds fall back to the last number in the text (returned without "$" and thousands
    commas). LaTeX kind does not: a stray number in a MATH solution is too often an intermediate
    value, and the method page asks for the fallback only for datasets with numeric answers.
    """
    _check_kind(kind)
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if kind == "latex":
        return None
    return extract_last_number(text)


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty \\boxed{...} or \\fbox{...} in text, stripped."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content = _box_argument(text, match.end())
        if content:
            return content
    return None


def _box_argument(text: str, start: int) -> str | None:
    """Argument of a box command whose name ends at start: "{...}" or a bare token ("\\boxed 5")."""
    position = start
    while position < len(text) and text[position] in " \t":
        position += 1
    if position >= len(text):
        return None
    if text[position] == "{":
        return _balanced_brace_content(text, position)
    if start == position:
        return None  # "\boxedx": not a box command with an argument
    bare = re.match(r"[^\s$]+", text[position:])
    return bare.group(0).rstrip(".,;") if bare else None


def _balanced_brace_content(text: str, open_position: int) -> str | None:
    """Text between the brace at open_position and its match; None if it never closes."""
    depth = 0
    position = open_position
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2  # \{ and \} are literal braces (sets), not grouping
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_position + 1 : position].strip()
        position += 1
    return None


def extract_last_number(text: str) -> str | None:
    """The last number in text, as plain digits: "$18,000.50" -> "18000.50", "-3" -> "-3"."""
    last = None
    for match in _NUMBER_IN_TEXT.finditer(text):
        if any(ch.isdigit() for ch in match.group(0)):
            last = match.group(0)
    if last is None:
        return None
    cleaned = re.sub(r"[\s$\\,]", "", last)
    negative = cleaned.count("-") % 2 == 1  # "-$5" and "$-5" are both -5
    cleaned = cleaned.replace("-", "")
    return ("-" if negative else "") + cleaned


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROPPED_LATEX = [
    r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\displaystyle",
    "^\\circ", "^{\\circ}", "\\circ", "\\degree", "°", "\\%", "%", "\\$", "$",
]
_SIGNED_DECIMAL = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?$")
_SIGNED_FRACTION = re.compile(r"^([+-]?)(\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_TRAILING_UNIT_WORDS = re.compile(r"(?<=[\d.])\s*[A-Za-z][A-Za-z\s]*$")


def parse_number(text: str | None) -> Fraction | None:
    """text as an exact number, or None if it is not a plain number.

    Accepts what models and answer keys write around numbers: "$18", "\\$18", "18,000",
    "18{,}000", "18.0", "-3", "18\\%", "90^\\circ", "18 \\text{ dollars}", "x = 18", "3/4",
    "\\frac{3}{4}". Percent and degree signs are dropped, not converted (the references are
    written the same way). Fractions keep comparisons exact: 0.5 == 1/2, no float rounding.
    """
    if text is None:
        return None
    candidate = _strip_number_decorations(text)
    if not candidate:
        return None
    if _SIGNED_DECIMAL.match(candidate) and any(ch.isdigit() for ch in candidate):
        return Fraction(candidate.replace(",", ""))
    for pattern in (_SIGNED_FRACTION, _LATEX_FRACTION):
        match = pattern.match(candidate)
        if match:
            sign, numerator, denominator = match.groups()
            if int(denominator) == 0:
                return None
            value = Fraction(int(numerator), int(denominator))
            return -value if sign == "-" else value
    return None


def _strip_number_decorations(text: str) -> str:
    candidate = text.strip().replace("\u2212", "-")  # unicode minus
    candidate = _TEXT_WRAPPERS.sub(r" \1 ", candidate)  # \text{ dollars} -> " dollars "
    candidate = candidate.replace("{,}", ",")  # LaTeX thousands separator 18{,}000
    for token in _DROPPED_LATEX:
        candidate = candidate.replace(token, "")
    if "=" in candidate:
        candidate = candidate.rsplit("=", 1)[1]  # "x = 18" -> "18"
    candidate = candidate.strip().rstrip(".").strip()
    candidate = _TRAILING_UNIT_WORDS.sub("", candidate)  # "18 dollars" -> "18"
    if candidate.startswith("{") and candidate.endswith("}"):
        candidate = candidate[1:-1].strip()
    return candidate.replace(" ", "") if re.fullmatch(r"[+-]\s*\S+", candidate) else candidate


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


def normalize_answer_text(text: str) -> str:
    """Text form used for string comparison and vote grouping: no whitespace, lower case, and
    LaTeX spellings that do not change meaning unified (\\dfrac -> \\frac, \\left( -> (, ...)."""
    normalized = text.strip()
    if len(normalized) >= 2 and normalized[0] == "$" and normalized[-1] == "$":
        normalized = normalized.strip("$")
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                     ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", ""), ("\\displaystyle", "")):
        normalized = normalized.replace(old, new)
    normalized = re.sub(r"\s+", "", normalized).lower()
    return normalized.rstrip(".")


def _symbolically_equivalent(predicted: str, reference: str) -> bool:
    if len(predicted) > MAX_SYMBOLIC_ANSWER_CHARS or len(reference) > MAX_SYMBOLIC_ANSWER_CHARS:
        return False
    timeout = _usable_math_verify_timeout()
    gold = _parse_latex_answer(reference, timeout)
    target = _parse_latex_answer(predicted, timeout)
    if not gold or not target:
        return False
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        # Gold first: math-verify's comparison is not symmetric.
        return bool(verify(list(gold), list(target), timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return False


@lru_cache(maxsize=8192)
def _parse_latex_answer(answer: str, timeout: int | None) -> tuple:
    """math-verify's parse of an answer, wrapped in \\boxed{} so its box-first extraction reads
    exactly this answer. Cached: the same reference is graded against every sequence."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    _silence_disabled_timeout_warning()
    try:
        return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=timeout))
    except (Exception, TimeoutException):
        return ()


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


# --------------------------------------------------------------------------------------------
# Majority vote
# --------------------------------------------------------------------------------------------


def majority_answer(answers: Sequence[str | None], kind: str) -> str | None:
    """Most frequent answer (cons@k). None does not vote; ties go to the answer seen first.

    Equivalent answers vote together: numbers by value ("18", "18.0", "$18"), anything else by
    normalised text. Returns the first-seen spelling of the winning group, or None if nobody voted.
    """
    _check_kind(kind)
    votes: dict[object, int] = {}
    first_spelling: dict[object, str] = {}
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        key = _vote_key(answer)
        votes[key] = votes.get(key, 0) + 1
        first_spelling.setdefault(key, answer)
    if not votes:
        return None
    # dicts keep insertion order and max() returns the first maximum: ties -> first occurrence.
    winner = max(votes, key=votes.__getitem__)
    return first_spelling[winner]


def _vote_key(answer: str) -> object:
    number = parse_number(answer)
    if number is not None:
        return ("number", number)
    return ("text", normalize_answer_text(answer))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r} (expected one of: {', '.join(KINDS)})")
