"""scripts/sweep_table.py's comparison of auto-θ points with the fixed-θ curve (issue 6), on hand-made rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "sweep_table.py"


@pytest.fixture(scope="module")
def sweep_table():
    spec = importlib.util.spec_from_file_location("sweep_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(theta, tokens, solved, method="eager-adapt"):
    records = {f"p{i}": {"sequences": [{"correct": bool(s)}]} for i, s in enumerate(solved)}
    return {"method": method, "T": 0.6, "theta": theta, "#T": tokens, "pass@k": sum(solved) / len(solved),
            "records": records}


def test_auto_point_is_compared_with_the_curve_between_its_bracketing_fixed_points(sweep_table):
    table = [row(2.8, 100, [1, 0, 0, 0]), row(2.4, 200, [1, 1, 0, 0]), row(2.0, 400, [1, 1, 1, 1]),
             row(2.55, 150, [1, 1, 1, 0]),  # auto: halfway between 2.8 and 2.4 in tokens
             row(2.0, 300, [1, 1, 1, 1], method="eager-init")]  # another method: not part of the curve
    (line,) = sweep_table.against_fixed_curve(table, {2.55: "auto S=4"})
    # curve per prompt: 0.5 x [1,0,0,0] + 0.5 x [1,1,0,0] = [1, .5, 0, 0] -> 0.375; auto 0.75
    assert line.startswith("- eager-adapt auto S=4 (θ 2.55, 150 tokens, pass@k 0.750): fixed-θ curve there 0.375 "
                           "(between θ 2.8 and 2.4) → +0.375 [")


def test_auto_point_outside_the_fixed_range_is_not_compared(sweep_table):
    table = [row(2.4, 200, [1, 1, 0, 0]), row(2.0, 400, [1, 1, 1, 1]), row(2.9, 50, [1, 0, 0, 0])]
    assert sweep_table.against_fixed_curve(table, {2.9: "auto S=2"}) == [
        "- eager-adapt auto S=2 (θ 2.9, 50 tokens, pass@k 0.250): outside the fixed-θ curve's token range, not compared"]
    assert sweep_table.against_fixed_curve(table, {}) == []
