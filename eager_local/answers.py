"""A generation's final answer, and the vote among several: one definition for run, chat and eval.

- extract_answer: the content of the last \\boxed{...} / \\fbox{...}; for numeric answers, if
  there is no box, the last number in the text.
- parse_number / normalize_answer_text: the two forms answers are compared in (an exact number,
  else normalised text). Grading (eval/grading.py) builds its equivalence check on them.
- tally / majority_answer: the vote (cons@k, chat's /vote), equivalent answers counted together.

Pure text processing: no model, no llama.cpp, no math-verify.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

from .errors import ConfigError

__all__ = [
    "KINDS",
    "check_kind",
    "extract_answer",
    "extract_boxed",
    "extract_last_number",
    "majority_answer",
    "normalize_answer_text",
    "parse_number",
    "tally",
    "vote_key",
]

# How a dataset's answers are compared: as numbers, as LaTeX, or chosen per reference answer.
KINDS = ("numeric", "latex", "auto")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown answer kind {kind!r} (expected one of: {', '.join(KINDS)})")


# --- extraction ------------------------------------------------------------------------------------
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
    check_kind(kind)
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


# --- the forms answers are compared in ---------------------------------------------------------------
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


# --- the vote ------------------------------------------------------------------------------------
def vote_key(answer: str) -> object:
    """What equivalent answers share: their value if they are numbers ("18", "18.0", "$18"),
    else their normalised text."""
    number = parse_number(answer)
    if number is not None:
        return ("number", number)
    return ("text", normalize_answer_text(answer))


def tally(answers: Sequence[str | None]) -> list[list[str]]:
    """The answers grouped by equivalence, largest group first; ties in the order first seen.

    None and blank answers do not vote. Each group keeps the spellings as given, in order.
    """
    groups: dict[object, list[str]] = {}
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        groups.setdefault(vote_key(answer), []).append(answer)
    # sorted() is stable: groups of equal size stay in first-seen order.
    return sorted(groups.values(), key=len, reverse=True)


def majority_answer(answers: Sequence[str | None], kind: str = "numeric") -> str | None:
    """Most frequent answer (cons@k): the first-seen spelling of the largest group of equivalent
    answers (tally), ties to the group seen first; None if nobody voted.

    `kind` is checked but does not change the grouping: numbers group by value, anything else by
    normalised text, for every kind.
    """
    check_kind(kind)
    groups = tally(answers)
    return groups[0][0] if groups else None
