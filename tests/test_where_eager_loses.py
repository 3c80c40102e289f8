"""scripts/where_eager_loses.py: the AUROC and the difficulty bands, on hand-made records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "where_eager_loses.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("where_eager_loses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auroc_counts_wins_and_half_ties(script):
    # pairs (3,1) (3,2) (2,1) win, (2,2) ties: (1 + 1 + 1 + 0.5) / 4
    assert script.auroc([3.0, 2.0], [1.0, 2.0]) == 0.875
    assert script.auroc([1.0], [2.0]) == 0.0
    assert script.auroc([], [1.0]) is None


def seq(sid, correct, h_max=None, h_mean=None, parent=None):
    return {"id": sid, "parent": parent, "correct": correct, "entropy_max": h_max, "entropy_mean": h_mean}


def test_difficulty_bands_split_by_parallel_share_right(script, capsys):
    par = {"a": {"n_correct": 0, "#S": 4}, "b": {"n_correct": 1, "#S": 4}, "c": {"n_correct": 2, "#S": 4}}
    eager = {
        "a": {"#S": 3, "sequences": [seq(0, False, 2.5, 0.4), seq(1, False, parent=0), seq(2, True, parent=0)]},
        "b": {"#S": 2, "sequences": [seq(0, False, 2.1, 0.3), seq(1, False, parent=0)]},
        "c": {"#S": 1, "sequences": [seq(0, True, 1.5, 0.2)]},
    }
    script.difficulty_bands(par, eager, ["a", "b", "c"])
    out = capsys.readouterr().out
    assert "| nobody solves (0) | 1 | 3.00 | 1 | 2.500 | 0.400 |" in out
    assert "| hard, winnable (0 < share < 1/2) | 1 | 2.00 | 0 | 2.100 | 0.300 |" in out
    assert "| easy (share >= 1/2) | 1 | 1.00 | 1 | 1.500 | 0.200 |" in out
    # wrong roots a (2.5) and b (2.1) against the right root c (1.5): both above
    assert "root entropy_max: AUROC wrong > right 1.000 (2 wrong, 1 right roots)" in out
