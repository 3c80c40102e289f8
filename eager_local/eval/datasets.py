"""Benchmark problems: the bundled datasets, a procedural arithmetic set, user JSONL files.

Everything here is pure Python (no llama.cpp) so that datasets can be listed, validated and
sharded on any machine, including CI runners without a model.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import EagerError
from .grading import resolve_kind

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetError",
    "Problem",
    "arith_problems",
    "load_dataset",
    "select",
]

# Built-in name -> (bundled file, answer kind). GSM8K and AIME answers are integers;
# MATH-500 answers are LaTeX and need an equivalence check (see grading.py).
BUILTIN_DATASETS: dict[str, tuple[str, str]] = {
    "gsm8k": ("gsm8k_test.jsonl", "numeric"),
    "math500": ("math500_test.jsonl", "latex"),
    "aime2024": ("aime2024.jsonl", "numeric"),
    "aime2025": ("aime2025.jsonl", "numeric"),
}
ARITH_NAME = "arith"
ANSWER_KINDS = ("numeric", "latex", "auto")


class DatasetError(EagerError):
    """A dataset cannot be found or read. The message is one line, fit to show a user as is."""


@dataclass
class Problem:
    """One benchmark problem.

    kind tells the grader how to compare answers: "numeric" (compare as numbers, fall back to the
    last number in the text) or "latex" (symbolic equivalence). User files default to "auto",
    which load_dataset resolves per record: numeric if the reference is a plain number (digits,
    not a fraction), else latex. So a loaded Problem's kind is always "numeric" or "latex".
    """

    id: str
    problem: str
    answer: str
    kind: str


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def is_builtin(spec: str) -> bool:
    """A shipped dataset (gsm8k, math500, …) or the generated arithmetic set; else a user file."""
    lower = str(spec).strip().lower()
    return lower in BUILTIN_DATASETS or lower == ARITH_NAME or lower.startswith(ARITH_NAME + ":")


def load_dataset(
    name_or_path: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str = "id",
    kind: str = "auto",
) -> list[Problem]:
    """Load a built-in dataset by name, the arithmetic set, or a user JSONL file.

    Names: gsm8k, math500, aime2024, aime2025, arith, arith:N, arith:N:SEED, arith:N:SEED:LEVELS.
    Anything else is taken as a path to a JSONL file with one object per line; the *_field
    arguments name its fields (they do not apply to built-ins) and kind sets the answer kind
    ("auto" decides per record). Raises DatasetError with a one-line message on any problem.
    """
    if kind not in ANSWER_KINDS:
        raise DatasetError(f"unknown answer kind {kind!r} (expected one of: {', '.join(ANSWER_KINDS)})")
    name = str(name_or_path)
    if not isinstance(name_or_path, Path) and is_builtin(name):
        return _load_builtin(name.lower()) if name.lower() in BUILTIN_DATASETS else _load_arith_spec(name)
    return _load_user_file(
        Path(name_or_path),
        problem_field=problem_field,
        answer_field=answer_field,
        id_field=id_field,
        kind=kind,
    )


def _load_builtin(name: str) -> list[Problem]:
    filename, kind = BUILTIN_DATASETS[name]
    # importlib.resources works both from a source checkout and from an installed wheel.
    resource = resources.files("eager_local.eval.data").joinpath(filename)
    with resource.open("r", encoding="utf-8") as handle:
        return _parse_jsonl_lines(
            handle, filename, problem_field="problem", answer_field="answer", id_field="id", kind=kind
        )


def _load_arith_spec(spec: str) -> list[Problem]:
    """Parse "arith", "arith:N", "arith:N:SEED" or "arith:N:SEED:LEVELS" (LEVELS: 1-2, 1,3 or 4)."""
    usage = "expected arith, arith:N, arith:N:SEED or arith:N:SEED:LEVELS, e.g. arith:64:0:1-2"
    parts = spec.split(":")
    if len(parts) > 4:
        raise DatasetError(f"bad arithmetic dataset spec {spec!r} ({usage})")
    try:
        n = int(parts[1]) if len(parts) > 1 else 200
        seed = int(parts[2]) if len(parts) > 2 else 0
        levels = _parse_levels(parts[3]) if len(parts) > 3 else tuple(ARITH_LEVELS)
    except ValueError:
        raise DatasetError(f"bad arithmetic dataset spec {spec!r} ({usage}, integers only)") from None
    if n < 1:
        raise DatasetError(f"bad arithmetic dataset spec {spec!r}: N must be at least 1")
    unknown = [level for level in levels if level not in ARITH_LEVELS]
    if unknown or not levels:
        raise DatasetError(f"bad arithmetic dataset spec {spec!r}: levels must be among {sorted(ARITH_LEVELS)}")
    return arith_problems(n=n, seed=seed, levels=levels)


def _parse_levels(text: str) -> tuple[int, ...]:
    """"1-2" -> (1, 2); "1,3" -> (1, 3); "4" -> (4,). Raises ValueError on anything else."""
    levels: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        levels.extend(range(int(low), int(high or low) + 1))
    return tuple(dict.fromkeys(levels))


def _load_user_file(path: Path, *, problem_field: str, answer_field: str, id_field: str, kind: str) -> list[Problem]:
    if not path.exists():
        if _looks_like_a_name(str(path)):
            raise DatasetError(
                f"unknown dataset {str(path)!r} (built-in: {', '.join(BUILTIN_DATASETS)}, "
                f"arith[:N[:SEED[:LEVELS]]]; or give the path of a .jsonl file)"
            )
        raise DatasetError(f"dataset file not found: {path}")
    if not path.is_file():
        raise DatasetError(f"dataset path is not a file: {path}")
    try:
        with path.open("r", encoding="utf-8") as handle:
            return _parse_jsonl_lines(
                handle, str(path), problem_field=problem_field, answer_field=answer_field, id_field=id_field, kind=kind
            )
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _looks_like_a_name(text: str) -> bool:
    # "gsm8", "math-500": a user mistyping a built-in name, not a file path.
    return "/" not in text and "\\" not in text and "." not in text


def _parse_jsonl_lines(
    lines: Iterable[str], source: str, *, problem_field: str, answer_field: str, id_field: str, kind: str
) -> list[Problem]:
    problems: list[Problem] = []
    line_of_id: dict[str, int] = {}
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are harmless
        problem = _parse_record(
            line, f"{source} line {line_number}", line_number,
            problem_field=problem_field, answer_field=answer_field, id_field=id_field, kind=kind,
        )
        if problem.id in line_of_id:
            # ids must be unique: --ids selection and resumable runs key on them.
            raise DatasetError(
                f"{source} line {line_number}: duplicate id {problem.id!r} (first on line {line_of_id[problem.id]})"
            )
        line_of_id[problem.id] = line_number
        problems.append(problem)
    if not problems:
        raise DatasetError(f"{source}: no problems (the file is empty)")
    return problems


def _parse_record(
    line: str, where: str, line_number: int, *, problem_field: str, answer_field: str, id_field: str, kind: str
) -> Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {_json_type_name(record)}")
    problem_text = _required_text_field(record, problem_field, where)
    answer = _required_text_field(record, answer_field, where)
    # Without an id field the line number is a stable, unique id.
    problem_id = _required_text_field(record, id_field, where) if id_field in record else str(line_number)
    return Problem(id=problem_id, problem=problem_text, answer=answer, kind=_resolve_kind(kind, answer))


def _required_text_field(record: dict, field: str, where: str) -> str:
    if field not in record:
        raise DatasetError(f"{where}: missing field {field!r}")
    value = record[field]
    # Numbers are accepted (answers are often written as bare JSON numbers) and kept as text.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DatasetError(f"{where}: field {field!r} must be a string or number, got {_json_type_name(value)}")
    text = value if isinstance(value, str) else json.dumps(value)
    if not text.strip():
        raise DatasetError(f"{where}: field {field!r} is empty")
    return text


def _json_type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _resolve_kind(kind: str, answer: str) -> str:
    # Resolved once here, so graders downstream see "numeric" or "latex", never "auto".
    return resolve_kind(kind, answer)


# --------------------------------------------------------------------------------------------
# Procedural arithmetic set
# --------------------------------------------------------------------------------------------
# A tiny model (e.g. 135M) solves level 1 often and level 5 rarely, which gives a quick,
# license-free benchmark with a visible difficulty gradient for smoke tests and demos.
# Operators are written in ASCII (+ - *) so that every tokenizer sees familiar symbols.


def _two_digit(rng: random.Random) -> int:
    return rng.randint(10, 99)


def _one_digit(rng: random.Random) -> int:
    return rng.randint(2, 9)


def _level1_addition(rng: random.Random) -> tuple[str, int]:
    a, b = _two_digit(rng), _two_digit(rng)
    return f"{a} + {b}", a + b


def _level2_subtraction(rng: random.Random) -> tuple[str, int]:
    a, b = sorted((_two_digit(rng), _two_digit(rng)), reverse=True)  # non-negative result
    return f"{a} - {b}", a - b


def _level3_multiplication(rng: random.Random) -> tuple[str, int]:
    a, b = _two_digit(rng), _two_digit(rng)
    return f"{a} * {b}", a * b


def _level4_two_operations(rng: random.Random) -> tuple[str, int]:
    # Two operations without parentheses, so operator precedence matters; at most one product
    # keeps the answer small.
    a, b, c = _two_digit(rng), _two_digit(rng), _one_digit(rng)
    templates = [
        (f"{a} + {b} * {c}", a + b * c),
        (f"{a} * {c} - {b}", a * c - b),
        (f"{a} - {b} + {c}", a - b + c),
        (f"{a} + {b} - {c}", a + b - c),
        (f"{a} - {c} * {b}", a - c * b),
    ]
    return rng.choice(templates)


def _level5_parentheses(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = _two_digit(rng), _two_digit(rng), _one_digit(rng), _two_digit(rng)
    templates = [
        (f"({a} + {b}) * {c} - {d}", (a + b) * c - d),
        (f"({a} - {b}) * {c} + {d}", (a - b) * c + d),
        (f"{c} * ({a} + {d}) - {b}", c * (a + d) - b),
        (f"({a} + {b} - {d}) * {c}", (a + b - d) * c),
        (f"{d} - ({a} - {b}) * {c}", d - (a - b) * c),
    ]
    return rng.choice(templates)


ARITH_LEVELS = {
    1: _level1_addition,
    2: _level2_subtraction,
    3: _level3_multiplication,
    4: _level4_two_operations,
    5: _level5_parentheses,
}


def arith_problems(n: int = 200, seed: int = 0, levels: Sequence[int] = (1, 2, 3, 4, 5)) -> list[Problem]:
    """n seeded arithmetic questions ("What is 37 + 48?") with integer answers.

    Levels are interleaved (problem i has level levels[i % len(levels)]) so that the set, and any
    prefix of it taken with a limit, is spread evenly over difficulty. Same arguments, same
    problems: all randomness comes from random.Random(seed).
    """
    if n < 0:
        raise DatasetError(f"n must be non-negative, got {n}")
    levels = tuple(levels)
    if not levels:
        raise DatasetError("levels must not be empty")
    unknown = [level for level in levels if level not in ARITH_LEVELS]
    if unknown:
        raise DatasetError(f"unknown arithmetic level(s) {unknown} (known: {sorted(ARITH_LEVELS)})")
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        level = levels[index % len(levels)]
        expression, value = ARITH_LEVELS[level](rng)
        problems.append(
            Problem(id=f"arith-L{level}-{index:04d}", problem=f"What is {expression}?", answer=str(value), kind="numeric")
        )
    return problems


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------

_SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def select(
    problems: Sequence[Problem],
    *,
    limit: int | None = None,
    offset: int = 0,
    ids: Iterable[str] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    shard: str | tuple[int, int] | None = None,
) -> list[Problem]:
    """Pick the problems to run, in this order: ids filter, shuffle, offset/limit, shard.

    ids keeps the dataset order; shard "i/n" (0-based i) keeps every problem whose index in the
    list so far satisfies index % n == i, so n machines running shards 0/n..n-1/n cover it exactly once.
    """
    selected = list(problems)
    if ids is not None:
        selected = _filter_by_ids(selected, ids)
    if shuffle:
        random.Random(seed).shuffle(selected)
    selected = _apply_offset_and_limit(selected, offset, limit)
    if shard is not None:
        shard_index, shard_count = parse_shard(shard)
        selected = [p for index, p in enumerate(selected) if index % shard_count == shard_index]
    return selected


def _filter_by_ids(problems: list[Problem], ids: Iterable[str]) -> list[Problem]:
    wanted = [str(i) for i in ids]
    known = {p.id for p in problems}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DatasetError(f"unknown problem id(s): {shown}")
    wanted_set = set(wanted)
    return [p for p in problems if p.id in wanted_set]


def _apply_offset_and_limit(problems: list[Problem], offset: int, limit: int | None) -> list[Problem]:
    if offset < 0:
        raise DatasetError(f"offset must be non-negative, got {offset}")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be non-negative, got {limit}")
    end = None if limit is None else offset + limit
    return problems[offset:end]


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """"i/n" (or a tuple (i, n)) -> (i, n), with 0 <= i < n."""
    if isinstance(shard, tuple):
        shard_index, shard_count = shard
    else:
        match = _SHARD_PATTERN.match(str(shard))
        if not match:
            raise DatasetError(f"bad shard {shard!r}: expected 'i/n' with 0-based i, e.g. '0/4'")
        shard_index, shard_count = int(match.group(1)), int(match.group(2))
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise DatasetError(f"bad shard {shard_index}/{shard_count}: need n >= 1 and 0 <= i < n")
    return shard_index, shard_count
