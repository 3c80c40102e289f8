"""Bundled datasets, user JSONL files, the arithmetic set and selection (eager_local.eval.datasets)."""

import hashlib
import json
import re
from collections import Counter
from importlib import resources

import pytest

from eager_local.eval.datasets import (
    DatasetError,
    Problem,
    arith_problems,
    is_builtin,
    load_dataset,
    parse_shard,
    select,
)
from eager_local.errors import EagerError

# sha256 of the bundled files, from the datasets README: the copies must be byte-identical.
BUNDLED_SHA256 = {
    "aime2024.jsonl": "a027f76b7b8cc7dfdbdd4169ce00492f3225e422b688d851e77e6649fed5f010",
    "aime2025.jsonl": "0d150b4550049b6ca521a620e31fcb9033e819fd995902a45a6f69ea446f3f54",
    "gsm8k_test.jsonl": "53df85e51c3677ae3e49a7362dd9917f40726036fdf0f4b3aedf6bb8e62cb0fe",
    "math500_test.jsonl": "680cfd5f6d38b444f5ae6662c0da445210a362f6826b5a2d27df98c92ab42b67",
}

# ------------------------------------------------------------------------------------ built-ins


@pytest.mark.parametrize("filename, digest", sorted(BUNDLED_SHA256.items()))
def test_bundled_files_are_unchanged(filename, digest):
    data = resources.files("eager_local.eval.data").joinpath(filename).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest


def test_licenses_file_names_every_bundled_file():
    text = resources.files("eager_local.eval.data").joinpath("LICENSES.md").read_text(encoding="utf-8")
    for filename in BUNDLED_SHA256:
        assert filename in text
    for commit in ("3101c7d5072418e28b9008a6636bde82a006892c", "7ecc794703b2877f63226f2477a49b34f9b25163",
                   "81f103e38b1df076afa65ee0a3ffbe148d42e6d2"):
        assert commit in text


@pytest.mark.parametrize(
    "name, count, kind, spot_id, spot_answer",
    [
        ("gsm8k", 1319, "numeric", "gsm8k_test_0000", "18"),
        ("math500", 500, "latex", "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("aime2024", 30, "numeric", "2024-II-15", "315"),
        ("aime2025", 30, "numeric", "2025-I-15", "735"),
    ],
)
def test_builtin_datasets_load(name, count, kind, spot_id, spot_answer):
    problems = load_dataset(name)
    assert len(problems) == count
    assert {p.kind for p in problems} == {kind}
    by_id = {p.id: p for p in problems}
    assert len(by_id) == count
    assert by_id[spot_id].answer == spot_answer
    assert all(p.problem.strip() for p in problems)


def test_is_builtin_names_shipped_sets_and_arith_specs_only():
    assert all(is_builtin(n) for n in ("gsm8k", "MATH500", "arith", "arith:8:0:1-2"))
    assert not any(is_builtin(n) for n in ("gsm8k:3", "arithmetic.jsonl", "problems.jsonl"))


def test_builtin_names_are_case_insensitive():
    assert load_dataset("AIME2024")[0].id == "2024-I-1"


def test_gsm8k_first_problem_text():
    first = load_dataset("gsm8k")[0]
    assert first.problem.startswith("Janet\u2019s ducks lay 16 eggs per day.")


# ------------------------------------------------------------------------------------ user files


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_file_loads_with_auto_kind(tmp_path):
    path = _write_lines(
        tmp_path / "data.jsonl",
        [
            json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}),
            "",  # blank lines are skipped
            json.dumps({"id": "b", "problem": "Half?", "answer": "\\frac{1}{2}"}),
            json.dumps({"id": "c", "problem": "Cost?", "answer": 18}),  # bare JSON number
        ],
    )
    assert load_dataset(path) == [
        Problem(id="a", problem="1+1?", answer="2", kind="numeric"),
        Problem(id="b", problem="Half?", answer="\\frac{1}{2}", kind="latex"),
        Problem(id="c", problem="Cost?", answer="18", kind="numeric"),
    ]


def test_user_file_with_custom_fields_and_no_id(tmp_path):
    path = _write_lines(
        tmp_path / "q.jsonl",
        [json.dumps({"question": "A?", "target": "1"}), json.dumps({"question": "B?", "target": "x+1"})],
    )
    problems = load_dataset(str(path), problem_field="question", answer_field="target", kind="latex")
    assert [(p.id, p.problem, p.answer, p.kind) for p in problems] == [
        ("1", "A?", "1", "latex"),
        ("2", "B?", "x+1", "latex"),
    ]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"id": "x", "problem": "Q"}', "line 3: missing field 'answer'"),
        ('{"id": "x", "answer": "1"}', "line 3: missing field 'problem'"),
        ('{"id": "x", "problem": "Q", "answer": "1"', "line 3: invalid JSON"),
        ('["not", "an", "object"]', "line 3: expected a JSON object, got array"),
        ('{"id": "x", "problem": "Q", "answer": null}', "line 3: field 'answer' must be a string or number, got null"),
        ('{"id": "x", "problem": "  ", "answer": "1"}', "line 3: field 'problem' is empty"),
        ('{"id": "a", "problem": "Q", "answer": "1"}', "line 3: duplicate id 'a' (first on line 1)"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"id": "a", "problem": "Q", "answer": "1"})
    other = json.dumps({"id": "b", "problem": "Q", "answer": "2"})
    path = _write_lines(tmp_path / "data.jsonl", [good, other, bad_line, good.replace('"a"', '"d"')])
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    text = str(caught.value)
    assert text.startswith(f"{path} line 3: ")
    assert message in text
    assert "\n" not in text


def test_dataset_error_is_a_user_error():
    # The command line turns EagerError into one line and exit code 2; a ValueError would be a bug.
    assert issubclass(DatasetError, EagerError) and not issubclass(DatasetError, ValueError)


def test_missing_field_message_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [json.dumps({"id": str(i), "problem": "Q", "answer": "1"}) for i in range(6)]
    lines.append(json.dumps({"id": "6", "problem": "Q"}))
    _write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(DatasetError, match=r"^data\.jsonl line 7: missing field 'answer'$"):
        load_dataset("data.jsonl")


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"^unknown dataset 'gsm9k' \(built-in: gsm8k, math500, aime2024, aime2025"):
        load_dataset("gsm9k")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=r"^dataset file not found: .*nope\.jsonl$"):
        load_dataset(missing)
    with pytest.raises(DatasetError, match="is not a file"):
        load_dataset(tmp_path)


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no problems"):
        load_dataset(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"problem": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DatasetError, match="not valid UTF-8"):
        load_dataset(latin)


def test_bad_kind_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="unknown answer kind 'text'"):
        load_dataset("gsm8k", kind="text")


# ------------------------------------------------------------------------------------ arithmetic

_PROBLEM_TEXT = re.compile(r"^What is ([0-9+\-*() ]+)\?$")


def _evaluate(problem):
    expression = _PROBLEM_TEXT.match(problem.problem).group(1)
    return eval(expression, {"__builtins__": {}}, {})  # digits and + - * ( ) only, checked above


def test_arith_is_deterministic_under_seed():
    assert arith_problems(50, seed=7) == arith_problems(50, seed=7)
    assert arith_problems(50, seed=7) != arith_problems(50, seed=8)


def test_arith_first_problems_are_pinned():
    # Pins the generator: a change here changes every published arith result.
    assert [(p.id, p.problem, p.answer) for p in arith_problems(5, seed=0)] == [
        ("arith-L1-0000", "What is 59 + 63?", "122"),
        ("arith-L2-0001", "What is 43 - 15?", "28"),
        ("arith-L3-0002", "What is 75 * 72?", "5400"),
        ("arith-L4-0003", "What is 61 - 48 + 9?", "22"),
        ("arith-L5-0004", "What is (84 - 37) * 4 + 46?", "234"),
    ]


def test_arith_answers_are_correct_integers():
    for problem in arith_problems(500, seed=3):
        assert problem.kind == "numeric"
        assert problem.answer == str(_evaluate(problem))


def test_arith_levels_are_spread_evenly_and_grow_harder():
    problems = arith_problems(200, seed=1)
    levels = [int(re.match(r"^arith-L(\d)-(\d{4})$", p.id).group(1)) for p in problems]
    assert Counter(levels) == {1: 40, 2: 40, 3: 40, 4: 40, 5: 40}
    assert [int(p.id[-4:]) for p in problems] == list(range(200))
    operations = {level: set() for level in range(1, 6)}
    for level, problem in zip(levels, problems):
        expression = _PROBLEM_TEXT.match(problem.problem).group(1)
        operations[level].add((sum(expression.count(op) for op in "+-*"), "(" in expression))
    assert operations[1] == operations[2] == operations[3] == {(1, False)}
    assert operations[4] == {(2, False)}
    assert operations[5] == {(3, True)}
    assert all(" + " in p.problem for lv, p in zip(levels, problems) if lv == 1)
    assert all(" - " in p.problem for lv, p in zip(levels, problems) if lv == 2)
    assert all(" * " in p.problem for lv, p in zip(levels, problems) if lv == 3)


def test_arith_level_subset_and_validation():
    problems = arith_problems(6, seed=0, levels=(2, 5))
    assert [p.id[:8] for p in problems] == ["arith-L2", "arith-L5"] * 3
    with pytest.raises(DatasetError, match="unknown arithmetic level"):
        arith_problems(5, levels=(1, 6))


def test_arith_specs_through_load_dataset():
    assert len(load_dataset("arith")) == 200
    assert load_dataset("arith:12") == arith_problems(12, seed=0)
    assert load_dataset("arith:12:4") == arith_problems(12, seed=4)
    assert load_dataset("arith:12:4:1-2") == arith_problems(12, seed=4, levels=(1, 2))
    assert load_dataset("arith:6:0:1,3") == arith_problems(6, seed=0, levels=(1, 3))
    assert load_dataset("arith:5:0:4") == arith_problems(5, seed=0, levels=(4,))
    for bad in ("arith:x", "arith:0", "arith:1:2:x", "arith:1:2:0-2", "arith:1:2:6", "arith:1:2:", "arith:1:2:3:4"):
        with pytest.raises(DatasetError, match="bad arithmetic dataset spec"):
            load_dataset(bad)


# ------------------------------------------------------------------------------------ selection


def _numbered(count):
    return [Problem(id=f"p{i}", problem=f"Q{i}", answer=str(i), kind="numeric") for i in range(count)]


def _ids(problems):
    return [p.id for p in problems]


def test_select_offset_and_limit():
    problems = _numbered(10)
    assert _ids(select(problems, offset=2, limit=3)) == ["p2", "p3", "p4"]
    assert _ids(select(problems, limit=0)) == []
    assert _ids(select(problems, offset=8, limit=5)) == ["p8", "p9"]
    assert _ids(select(problems)) == _ids(problems)


def test_select_ids_keeps_dataset_order_and_names_unknown_ids():
    problems = _numbered(10)
    assert _ids(select(problems, ids=["p7", "p2"])) == ["p2", "p7"]
    with pytest.raises(DatasetError, match=r"^unknown problem id\(s\): 'p99', 'x'$"):
        select(problems, ids=["p1", "p99", "x"])


def test_select_shuffle_is_seeded():
    problems = _numbered(20)
    once = _ids(select(problems, shuffle=True, seed=5))
    assert once == _ids(select(problems, shuffle=True, seed=5))
    assert once != _ids(select(problems, shuffle=True, seed=6))
    assert sorted(once) == sorted(_ids(problems))
    assert _ids(problems) == [f"p{i}" for i in range(20)]  # the input is not shuffled in place


def test_select_shards_cover_everything_once():
    problems = _numbered(10)
    assert _ids(select(problems, shard="1/3")) == ["p1", "p4", "p7"]
    shards = [_ids(select(problems, shard=f"{i}/3")) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(_ids(problems))


def test_select_applies_steps_in_order():
    problems = _numbered(20)
    # ids -> offset/limit -> shard
    chosen = select(problems, ids=[f"p{i}" for i in range(0, 20, 2)], offset=1, limit=6, shard="0/2")
    assert _ids(chosen) == ["p2", "p6", "p10"]


@pytest.mark.parametrize("shard", ["3/3", "1/0", "a/b", "1", "-1/2", "1/2/3"])
def test_bad_shards_are_rejected(shard):
    with pytest.raises(DatasetError, match="bad shard"):
        select(_numbered(4), shard=shard)


def test_parse_shard_accepts_tuples_and_spaces():
    assert parse_shard(" 2 / 5 ") == (2, 5)
    assert parse_shard((0, 1)) == (0, 1)


def test_negative_offset_or_limit_is_rejected():
    with pytest.raises(DatasetError, match="offset must be non-negative"):
        select(_numbered(3), offset=-1)
    with pytest.raises(DatasetError, match="limit must be non-negative"):
        select(_numbered(3), limit=-2)
