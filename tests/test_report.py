"""`eager-local report` on hand-written run directories whose metrics are computed by hand.

(The report on real runs is covered in test_eval_runner.py; here every number is known exactly.)
The report grades every sequence again from its text, so each hand-written sequence has a text that
says its answer (or none), and its stored grade agrees with it unless a test says otherwise.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from eager_local.eval import store
from cli_helpers import assert_one_line_error as one_line_error, eager


PARAMS = {
    "dataset": "toy.jsonl",
    "selection": {"limit": None, "offset": 0, "ids": None, "shuffle": False, "seed": 55, "shard": None},
    "fields": {"problem": "problem", "answer": "answer", "id": "id", "kind": "auto"},
    "methods": ["parallel", "eager-init"],
    "theta": [2.4],
    "max_sequences": [4],
    "prompt_template": "{problem}",
    "system": None,
    "chat": True,
    "budget": None,
    "generation": {"temperature": 0.6, "max_new_tokens": 64, "seed": 55},
    "model_sha256": "0" * 64,
}


def text_for(answer):
    return "I give up." if answer is None else f"So the answer is \\boxed{{{answer}}}."


def record(pid, reference, answers, correct, tokens, cut=False):
    return {
        "id": pid,
        "reference": reference,
        "kind": "numeric",
        "sequences": [{"answer": a, "correct": c, "text": text_for(a)} for a, c in zip(answers, correct)],
        "#T": tokens,
        "#S": len(answers),
        "cut_by_budget": cut,
        "started": True,
    }


def make_run(path: Path, records: dict, *, ids, walls, shard=None, budget=None, complete=True, peak=100.0):
    path.mkdir(parents=True)
    params = json.loads(json.dumps(PARAMS))
    params["selection"]["shard"] = shard
    params["budget"] = budget
    manifest = {"format": 1, "params": params, "model": {"path": "/m/toy.gguf", "name": "toy", "sha256": "0" * 64},
                "problems": ids, "sessions": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    for name, recs in records.items():
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        stats = {"wall_time": walls[name], "peak_rss_mb": peak, "complete": complete}
        (path / f"{name}.stats.json").write_text(json.dumps(stats))
    return path


PAR_A = record("a", "4", ["4", "4", "5", None], [True, True, False, False], 200)
PAR_B = record("b", "8", ["7", "7", "7", "7"], [False] * 4, 200)
INIT_A = record("a", "4", ["4", "5", "5", "5"], [True, False, False, False], 100)
INIT_B = record("b", "8", ["7", None], [False, False], 50)


@pytest.fixture
def run_dir(tmp_path):
    return make_run(
        tmp_path / "run",
        {"parallel_M4": [PAR_A, PAR_B], "eager-init_theta2.4_M4": [INIT_A, INIT_B]},
        ids=["a", "b"],
        walls={"parallel_M4": 40.0, "eager-init_theta2.4_M4": 10.0},
    )


def rows_by_method(doc):
    (group,) = doc
    return {p["method"]: p for p in group["points"]}


def test_json_numbers_match_hand_computation(run_dir):
    r = eager("report", str(run_dir), "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = rows_by_method(json.loads(r.stdout))
    par, init = rows["parallel"], rows["eager-init"]
    # parallel: a -> p@1 .5, pass 1, cons 1 (4 beats 5), PR .5; b -> all 0
    assert (par["p@1"], par["pass@k"], par["cons@k"], par["PR"]) == (0.25, 0.5, 0.5, 0.25)
    assert (par["#T"], par["#S"], par["prompts"]) == (200, 4, 2)
    # eager-init: a -> p@1 .25, pass 1, cons 0 (5 wins); b -> 0 (None does not vote)
    assert (init["p@1"], init["pass@k"], init["cons@k"], init["PR"]) == (0.125, 0.5, 0.0, 0.125)
    assert (init["#T"], init["#S"]) == (75, 3)
    assert init["tokens_vs_parallel"] == pytest.approx(75 / 200)
    assert init["time_vs_parallel"] == pytest.approx(10 / 40)
    assert par["tokens_vs_parallel"] == 1.0
    assert init["peak_mb"] == 100.0 and init["complete"] is True


def test_table_markdown_csv(run_dir):
    table = eager("report", str(run_dir))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("toy.jsonl · toy")
    header = lines[1].split()
    assert header[:4] == ["method", "θ", "M", "prompts"] and "cons@k" in header and "T/par" in header
    init_line = next(line for line in lines if line.startswith("eager-init"))
    assert init_line.split()[1:9] == ["2.4", "4", "2/2", "0.125", "0.500", "0.000", "0.125", "75.0"]

    md = eager("report", str(run_dir), "--format", "markdown")
    assert md.returncode == 0
    md_lines = [line for line in md.stdout.splitlines() if line.startswith("|")]
    assert md_lines[0].startswith("| method | θ | M | prompts | p@1 | pass@k | cons@k | PR |")
    assert md_lines[1].startswith("| --- |")
    assert "| parallel | - | 4 | 2/2 | 0.250 | 0.500 | 0.500 | 0.250 | 200.0 |" in md.stdout

    out = eager("report", str(run_dir), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["method"] for r in rows] == ["parallel", "eager-init"]
    assert float(rows[1]["tokens_vs_parallel"]) == pytest.approx(0.375)


def test_shards_merge_without_double_counting(tmp_path):
    a = make_run(tmp_path / "s0", {"parallel_M4": [PAR_A]}, ids=["a"], walls={"parallel_M4": 30.0}, shard="0/2", peak=90)
    b = make_run(tmp_path / "s1", {"parallel_M4": [PAR_B]}, ids=["b"], walls={"parallel_M4": 20.0}, shard="1/2", peak=120)
    r = eager("report", str(a), str(b), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    (par,) = group["points"]
    assert par["prompts"] == 2 and par["expected"] == 2
    assert (par["p@1"], par["cons@k"], par["#T"]) == (0.25, 0.5, 200)
    assert par["wall_s"] == 50.0 and par["peak_mb"] == 120  # compute time adds up; memory is the max
    # a glob, and a dir given twice, count the same
    again = eager("report", str(tmp_path / "s*"), str(a), "--format", "json")
    assert json.loads(again.stdout)[0]["points"][0]["prompts"] == 2
    # a third shard dir that repeats prompt a (overlapping shards): a counts once, and the report says so
    c = make_run(tmp_path / "s2", {"parallel_M4": [PAR_A]}, ids=["a"], walls={"parallel_M4": 30.0}, shard="0/3")
    merged = eager("report", str(a), str(b), str(c))
    assert merged.returncode == 0 and "duplicate prompt record(s) across merged dirs counted once" in merged.stdout
    assert " 2/2 " in merged.stdout


def test_different_runs_are_separate_groups(tmp_path, run_dir):
    other = make_run(tmp_path / "other", {"parallel_M4": [PAR_B]}, ids=["b"], walls={"parallel_M4": 5.0},
                     budget=1000)
    r = eager("report", str(run_dir), str(other), "--format", "json")
    doc = json.loads(r.stdout)
    assert len(doc) == 2 and [len(g["points"]) for g in doc] == [2, 1]


def test_incomplete_and_budget_notes(tmp_path):
    cut = record("b", "8", ["7"], [False], 10, cut=True)
    d = make_run(tmp_path / "cut", {"parallel_M4": [PAR_A, cut]}, ids=["a", "b", "c"],
                 walls={"parallel_M4": 5.0}, budget=210, complete=False)
    r = eager("report", str(d))
    assert r.returncode == 0, r.stderr
    assert "2/3*" in r.stdout
    assert "token budget: 210 of 210 spent; 1 prompt record(s) cut by it" in r.stdout
    assert "* incomplete point" in r.stdout


def test_plot_png(tmp_path, run_dir):
    png = tmp_path / "fig.png"
    r = eager("report", str(run_dir), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bad_run_dirs(tmp_path):
    one_line_error(eager("report", str(tmp_path / "nope")), "run directory not found")
    (tmp_path / "empty").mkdir()
    one_line_error(eager("report", str(tmp_path / "empty")), "not an eager-local run directory")
    one_line_error(eager("report", str(tmp_path / "zz*")), "no run directory matches")


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b"}) + "\n" + '{"id": "c", "seq')
    assert [r["id"] for r in store.read_records(path)] == ["a", "b"]
    assert path.read_text().endswith('"seq')  # reading alone changes nothing
    assert [r["id"] for r in store.read_records(path, repair=True)] == ["a", "b"]
    assert path.read_text() == json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b"}) + "\n"
    with store.RecordWriter(path) as w:
        w.append({"id": "c"})
    assert [r["id"] for r in store.read_records(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')  # damage in the middle is not a crash
    with pytest.raises(store.ResultsError, match="line 2"):
        store.read_records(path)


def test_report_grades_from_the_text_not_the_stored_grade(tmp_path):
    """A record written by an older grader: the report follows the texts and today's grader."""
    stale = record("a", "4", ["4", "4", "5", None], [True, True, False, False], 200)
    # the first sequence's stored grade is wrong for its text: "4 apples" is 4, the reference
    stale["sequences"][0] = {"answer": "apples", "correct": False, "text": "I count \\boxed{4 apples}."}
    # the third was marked right although its text answers 5
    stale["sequences"][2]["correct"] = True
    d = make_run(tmp_path / "old", {"parallel_M4": [stale, PAR_B]}, ids=["a", "b"], walls={"parallel_M4": 1.0})
    r = eager("report", str(d), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    (par,) = group["points"]
    # by the texts: a has 4, 4, 5, none -> 2 of 4 right, majority 4 is right; b none right
    assert (par["p@1"], par["pass@k"], par["cons@k"]) == (0.25, 0.5, 0.5)
    assert par["regraded"] == 2 and group["regraded"] == 2
    table = eager("report", str(d))
    assert "2 sequence(s) graded differently than when they were generated" in table.stdout


def test_records_missing_fields_still_report(tmp_path):
    """Records without a kind take the run's --answer-kind; sequences without text are graded from
    their stored answer; with neither, their stored grade counts."""
    old = {"id": "a", "reference": "1/2", "#T": 30, "#S": 3, "cut_by_budget": False, "started": True,
           "sequences": [{"answer": "0.5", "correct": False},  # no text: its answer is graded (1/2 = 0.5)
                         {"correct": True},  # nothing to grade: its stored grade stands
                         {"text": "\\boxed{\\frac{1}{3}}", "answer": "x", "correct": False}]}
    d = make_run(tmp_path / "older", {"parallel_M4": [old]}, ids=["a"], walls={"parallel_M4": 1.0})
    r = eager("report", str(d), "--format", "json")
    assert r.returncode == 0, r.stderr
    (par,) = json.loads(r.stdout)[0]["points"]
    # kind "auto" (the manifest's) resolves to latex for the reference 1/2; two of three right
    assert par["p@1"] == pytest.approx(2 / 3) and par["pass@k"] == 1.0 and par["regraded"] == 1


def derived(rec, m):
    """A parallel record cut to its first m samples, as eval derives it (records.derive_record)."""
    seqs = rec["sequences"][:m]
    return {**rec, "sequences": seqs, "#S": len(seqs), "#T": rec["#T"] * m // rec["#S"], "derived_from": "parallel_M4"}


def mark_derived(run: Path, name: str, *, source_complete: bool = True) -> None:
    (run / f"{name}.stats.json").write_text(json.dumps({"wall_time": 20.0, "complete": True, "peak_rss_mb": None,
                                                        "derived_from": "parallel_M4"}))
    if not source_complete:
        stats = json.loads((run / "parallel_M4.stats.json").read_text())
        (run / "parallel_M4.stats.json").write_text(json.dumps({**stats, "complete": False}))


def test_derived_parallel_points_are_marked_and_spend_nothing(tmp_path):
    points = {"parallel_M4": [PAR_A, PAR_B], "parallel_M2": [derived(PAR_A, 2), derived(PAR_B, 2)]}
    d = make_run(tmp_path / "curve", points, ids=["a", "b"], walls={"parallel_M4": 40.0, "parallel_M2": 20.0},
                 budget=10_000)
    mark_derived(d, "parallel_M2")
    r = eager("report", str(d), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    m2, m4 = group["points"]
    # M = 2: a has 4, 4 (both right), b 7, 7: p@1 .5, pass 0.5, cons 0.5; 100 tokens each
    assert (m2["M"], m2["p@1"], m2["pass@k"], m2["cons@k"], m2["#T"], m2["#S"]) == (2, 0.5, 0.5, 0.5, 100, 2)
    assert m2["derived_from"] == "parallel_M4" and m4["derived_from"] is None and m2["complete"]
    assert m2["peak_mb"] is None and m2["wall_s"] == 20.0
    assert group["budget"]["spent"] == 400  # parallel_M4's 200 + 200; the derived point generated nothing
    table = eager("report", str(d)).stdout
    m2_line = next(line for line in table.splitlines() if line.startswith("parallel") and " 2† " in line)
    assert m2_line.split()[2:4] == ["2†", "2/2"]
    assert "† derived from parallel_M4: each prompt's first M samples of that run" in table
    assert "token budget: 400 of 10000 spent" in table
    rows = list(csv.DictReader(io.StringIO(eager("report", str(d), "--format", "csv").stdout)))
    assert [(r["point"], r["derived_from"]) for r in rows] == [("parallel_M2", "parallel_M4"), ("parallel_M4", "")]
    md = eager("report", str(d), "--format", "markdown").stdout
    assert "| parallel | - | 2† | 2/2 |" in md and "† derived from parallel_M4" in md


def test_a_derived_point_is_incomplete_when_its_source_is(tmp_path):
    points = {"parallel_M4": [PAR_A, PAR_B], "parallel_M2": [derived(PAR_A, 2), derived(PAR_B, 2)]}
    d = make_run(tmp_path / "curve", points, ids=["a", "b"], walls={"parallel_M4": 40.0, "parallel_M2": 20.0})
    mark_derived(d, "parallel_M2", source_complete=False)
    (group,) = json.loads(eager("report", str(d), "--format", "json").stdout)
    assert [(p["point"], p["complete"]) for p in group["points"]] == [("parallel_M2", False), ("parallel_M4", False)]
