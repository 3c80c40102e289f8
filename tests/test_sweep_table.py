"""scripts/sweep_table.py: auto-θ points against the fixed-θ curve (on hand-made rows), and the records it reads."""

from __future__ import annotations

import importlib.util
import json
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


def write_run(path: Path, shard: str, records: list[dict]) -> Path:
    """A minimal run directory: a manifest and one parallel point."""
    path.mkdir()
    params = {"dataset": "toy", "selection": {"shard": shard}, "fields": {"kind": "numeric"}, "budget": None,
              "prompt_template": "{problem}", "generation": {"temperature": 0.6, "max_new_tokens": 8, "seed": 55}}
    manifest = {"format": 1, "params": params, "model": {"path": "/m/toy.gguf", "name": "toy"},
                "problems": [r["id"] for r in records]}
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "parallel_M2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "parallel_M2.stats.json").write_text(json.dumps({"wall_time": 1.0, "complete": True}))
    return path


def test_rows_read_every_merged_shard_graded_from_the_text(sweep_table, tmp_path):
    from eager_local.eval.report import build_report

    def rec(pid, texts, stored):
        return {"id": pid, "reference": "7", "kind": "numeric", "#T": 10, "#S": len(texts),
                "sequences": [{"text": t, "correct": c, "answer": None} for t, c in zip(texts, stored)]}

    # a: "\boxed{7}" is right although stored as wrong; b: "\boxed{8}" is wrong although stored as right
    d0 = write_run(tmp_path / "s0", "0/2", [rec("a", ["\\boxed{7}", "\\boxed{1}"], [False, False])])
    d1 = write_run(tmp_path / "s1", "1/2", [rec("b", ["\\boxed{8}", "none"], [True, False])])
    (row,) = sweep_table.rows(build_report([str(d0), str(d1)]))
    assert sorted(row["records"]) == ["a", "b"]
    assert sweep_table.solved(row["records"], ["a", "b"]) == [1.0, 0.0]
    assert row["pass@k"] == 0.5 and row["distinct"] == 1.0


def test_common_compares_every_point_on_the_prompts_all_have(sweep_table, tmp_path):
    from eager_local.eval.report import build_report

    def rec(pid, right, tokens):
        text = "\\boxed{7}" if right else "\\boxed{1}"
        return {"id": pid, "reference": "7", "kind": "numeric", "#T": tokens, "#S": 2,
                "sequences": [{"text": text, "correct": right, "answer": None}, {"text": "none", "correct": False,
                                                                                "answer": None}]}

    # the full run has a, b, c; the other run (another seed, so its own group) only b and c
    full = write_run(tmp_path / "full", None, [rec("a", True, 10), rec("b", False, 20), rec("c", True, 30)])
    part = write_run(tmp_path / "part", None, [rec("b", True, 40), rec("c", True, 60)])
    manifest = json.loads((part / "manifest.json").read_text())
    manifest["params"]["generation"]["seed"] = 56
    (part / "manifest.json").write_text(json.dumps(manifest))
    groups = build_report([str(full), str(part)])
    alone = sweep_table.rows(groups)
    assert [(r["prompts"], r["pass@k"]) for r in alone] == [(3, pytest.approx(2 / 3)), (2, 1.0)]
    common = sweep_table.rows(groups, common=True)
    assert [(r["prompts"], r["pass@k"], r["#T"]) for r in common] == [(2, 0.5, 25), (2, 1.0, 50)]
    assert common[1]["delta"][0] == pytest.approx(0.5)  # b and c against the full run's b and c
