"""scripts/extend_parallel.py: a parallel run at M = 2 extended to M = 4 equals a run decoded at M = 4.

The script decodes only samples 2 and 3 of each prompt (their own random streams) and merges them
behind the source's samples 0 and 1. The reference is `eval --method parallel -M 4`, decoded here
from scratch: every sequence's text, tokens, finish reason, answer and entropy summary, and the
record's #T, #S and grades must be the same, and `eval` must accept the new directory as its own run
(it derives M = 1, 2 from it without decoding).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import eager
from eager_local.eval import store

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "extend_parallel.py"
ARGS = ["--dataset", "arith:5:3", "-n", "24", "--no-progress", "--method", "parallel"]
SAME = ("text", "tokens", "new_tokens", "finish_reason", "answer", "correct", "entropy_mean", "entropy_max", "entropy_n")


def records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in store.read_records(path)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, default_model_path):
    root = tmp_path_factory.mktemp("extend")
    for name, m in (("small", "2"), ("direct", "4")):
        r = eager("eval", *ARGS, "-M", m, "--out", str(root / name))
        assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), str(root / "small"), "--to", "4", "--out", str(root / "extended")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return root


def test_extended_run_equals_the_run_decoded_at_the_larger_m(runs):
    direct = records(runs / "direct" / "parallel_M4.jsonl")
    extended = records(runs / "extended" / "parallel_M4.jsonl")
    assert list(extended) == list(direct) and len(direct) == 5
    for pid, want in direct.items():
        got = extended[pid]
        assert [s["id"] for s in got["sequences"]] == [0, 1, 2, 3]
        assert [[s[k] for k in SAME] for s in got["sequences"]] == [[s[k] for k in SAME] for s in want["sequences"]]
        for key in ("#T", "#S", "n_correct", "steps", "prompt_tokens", "entropy", "finish_counts", "events"):
            assert got[key] == want[key], (pid, key)
    # the head really is the small run's samples, and the tail is new: samples 2, 3 exist only now
    small = records(runs / "small" / "parallel_M2.jsonl")
    for pid, head in small.items():
        assert [s["text"] for s in head["sequences"]] == [s["text"] for s in extended[pid]["sequences"][:2]]


def test_eval_takes_the_extended_directory_as_its_own_run(runs):
    r = eager("eval", *ARGS, "-M", "4", "--out", str(runs / "extended"))
    assert r.returncode == 0, r.stderr
    stats = store.read_json(runs / "extended" / "parallel_M2.stats.json")
    assert stats["derived_from"] == "parallel_M4"
    derived = records(runs / "extended" / "parallel_M2.jsonl")
    for pid, want in records(runs / "direct" / "parallel_M2.jsonl").items():
        assert [s["text"] for s in derived[pid]["sequences"]] == [s["text"] for s in want["sequences"]]
        assert derived[pid]["#T"] == want["#T"]

def test_a_second_run_decodes_nothing_and_changes_nothing(runs):
    path = runs / "extended" / "parallel_M4.jsonl"
    before = path.read_bytes()
    r = subprocess.run([sys.executable, str(SCRIPT), str(runs / "small"), "--to", "4", "--out", str(runs / "extended")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "0 to decode" in r.stderr
    assert path.read_bytes() == before


def test_a_smaller_or_equal_target_is_refused(runs):
    r = subprocess.run([sys.executable, str(SCRIPT), str(runs / "small"), "--to", "2", "--out", str(runs / "bad")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "must be larger" in r.stderr and "Traceback" not in r.stderr
    assert not (runs / "bad").exists()


def test_sizes_name_the_points_eval_derives(runs):
    out = runs / "sized"
    r = subprocess.run([sys.executable, str(SCRIPT), str(runs / "small"), "--to", "4", "--sizes", "3", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = eager("eval", *ARGS, "-M", "3,4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    direct = records(runs / "direct" / "parallel_M4.jsonl")
    for pid, got in records(out / "parallel_M3.jsonl").items():
        assert [s["text"] for s in got["sequences"]] == [s["text"] for s in direct[pid]["sequences"][:3]]
