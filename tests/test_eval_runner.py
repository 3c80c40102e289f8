"""`eager-local eval` end to end on the real default model: the four methods, the report, resume after
SIGKILL, refusal of changed parameters, shards, the token budget, and bad input.

Kept small (a few hundred tokens per run) so the file takes well under two minutes at one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eager_local.eval import store
from eager_local.eval.grading import extract_answer, is_correct, majority_answer
from cli_helpers import assert_one_line_error as one_line_error, eager

THREADS = ["--threads", os.environ["EAGER_LOCAL_THREADS"]] if os.environ.get("EAGER_LOCAL_THREADS") else []

# Problems the 135M model gets right some of the time, so that every metric takes non-trivial values.
TOY = [
    ("What is 2 + 2?", "4"),
    ("What is 3 + 4?", "7"),
    ("What is 10 + 10?", "20"),
    ("What is 5 - 3?", "2"),
    ("What is 1 + 1?", "2"),
    ("What is 6 + 1?", "7"),
]
POINTS = ["parallel_M4", "eager-init_theta2.5_M4", "eager-adapt_theta2.5_M4", "eager_theta2.5_M4"]
# The parallel curve below M = 4, derived from parallel_M4's samples (tested in test_parallel_curve.py).
DERIVED = ["parallel_M1", "parallel_M2"]





def records(run_dir: Path, name: str) -> list[dict]:
    return store.read_records(run_dir / f"{name}.jsonl")


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "solution": a}) + "\n" for i, (q, a) in enumerate(TOY)))
    return path


def eval_args(toy_file, out, *extra):
    return ["eval", "--dataset", str(toy_file), "--problem-field", "question", "--answer-field", "solution",
            "-M", "4", "-n", "32", "--theta", "2.5", "--out", str(out), *THREADS, *extra]


@pytest.fixture(scope="module")
def full_run(toy_file, tmp_path_factory, default_model_path):
    out = tmp_path_factory.mktemp("runs") / "toy"
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    return out


def test_run_dir_contents(full_run, default_model_path, toy_file):
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["model"]["sha256"] == hashlib.sha256(Path(default_model_path).read_bytes()).hexdigest()
    assert manifest["params"]["model_sha256"] == manifest["model"]["sha256"]
    assert manifest["versions"]["llama-cpp-python"] == "0.3.36"
    assert manifest["machine"]["cpu_count"] == os.cpu_count() and manifest["machine"]["threads"] >= 1
    assert manifest["params"]["methods"] == ["parallel", "eager-init", "eager-adapt", "eager"]
    assert manifest["params"]["generation"]["max_new_tokens"] == 32 and manifest["seed"] == 55
    assert manifest["problems"] == [f"q{i}" for i in range(len(TOY))]
    for name in POINTS:
        recs = records(full_run, name)
        assert [r["id"] for r in recs] == manifest["problems"] or sorted(r["id"] for r in recs) == manifest["problems"]
        stats = json.loads((full_run / f"{name}.stats.json").read_text())
        assert stats["complete"] and stats["wall_time"] > 0 and stats["peak_rss_mb"] > 50
        for rec in recs:
            seqs = rec["sequences"]
            assert rec["#S"] == len(seqs) and rec["#T"] == sum(s["new_tokens"] for s in seqs) > 0
            assert rec["n_correct"] == sum(s["correct"] for s in seqs)
            assert rec["reference"] == dict(TOY)[rec["problem"]]
            for s in seqs:
                assert s["finish_reason"] in ("stop", "length") and 0 < s["tokens"] <= 32
                assert s["answer"] == extract_answer(s["text"], "numeric")
                assert s["correct"] == is_correct(s["answer"], rec["reference"], "numeric")
            assert rec["entropy"]["max"] is None or 0 <= rec["entropy"]["mean"] <= rec["entropy"]["max"] <= 3.0
    for name in ("parallel_M4", "eager-init_theta2.5_M4"):  # how full the batches were, per point
        batches = json.loads((full_run / f"{name}.stats.json").read_text())["batches"]
        assert batches["steps"] >= 32 and 1 <= batches["mean_rows"] <= batches["peak_rows"] <= 32
        assert 1 <= batches["mean_prompts"] <= batches["peak_prompts"] <= len(TOY)
    assert all(r["#S"] == 4 and r["events"] == [] for r in records(full_run, "parallel_M4"))
    for rec in records(full_run, "eager-init_theta2.5_M4"):
        assert 1 <= rec["#S"] <= 4 and len(rec["events"]) == rec["#S"] - 1  # one branch, one sequence
        assert all(e["entropy"] > 2.5 for e in rec["events"])
    # some sequences right and some wrong, or the metrics below test nothing
    all_seqs = [s for name in POINTS for r in records(full_run, name) for s in r["sequences"]]
    assert any(s["correct"] for s in all_seqs) and not all(s["correct"] for s in all_seqs)


def test_reallocation_reuses_init_and_respects_the_plan(full_run):
    init = {r["id"]: r for r in records(full_run, "eager-init_theta2.5_M4")}
    M = 4
    B = M * len(init) - sum(r["#S"] for r in init.values())
    capped = [pid for pid, r in init.items() if r["#S"] == M]
    for method, name in (("eager-adapt", POINTS[2]), ("eager", POINTS[3])):
        extras = store.read_records(full_run / f"{name}.extra.jsonl")
        stats = json.loads((full_run / f"{name}.stats.json").read_text())
        assert stats["saved_sequences"] == B
        assert sum(e["#S"] for e in extras) == stats["spent_sequences"] <= B
        for e in extras:
            assert 1 <= e["#S"] <= e["cap"] <= (3 * M if method == "eager-adapt" else M)
            assert e["stream"] >= 10_000_000  # its own random streams
        if method == "eager-adapt":
            assert {e["id"] for e in extras} <= set(capped) and all(e["round"] == 1 for e in extras)
            assert all(e["theta"] == 2.5 for e in extras)
        else:
            first = [e for e in extras if e["round"] == 1]
            assert {e["id"] for e in first} <= {pid for pid, r in init.items() if r["n_correct"] == 0}
            for e in first:  # θ lowered 20% on a first retry unless the prompt hit the cap
                assert e["theta"] == pytest.approx(2.5 if init[e["id"]]["#S"] == M else 2.0)
        for rec in records(full_run, name):
            base = init[rec["id"]]
            mine = [e for e in extras if e["id"] == rec["id"]]
            assert rec["#S"] == base["#S"] + sum(e["#S"] for e in mine)
            assert rec["#T"] == base["#T"] + sum(e["#T"] for e in mine)
            assert [s["text"] for s in rec["sequences"][: base["#S"]]] == [s["text"] for s in base["sequences"]]
            assert [s["id"] for s in rec["sequences"]] == list(range(rec["#S"]))


def test_report_matches_records(full_run, tmp_path):
    r = eager("report", str(full_run), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    rows = {row["point"]: row for row in group["points"]}
    assert sorted(rows) == sorted(POINTS + DERIVED)
    assert all(rows[name]["derived_from"] == "parallel_M4" for name in DERIVED)
    assert all(rows[name]["derived_from"] is None for name in POINTS)
    for name in POINTS:
        recs = records(full_run, name)
        # every sequence graded from its text; the metrics by their definitions (eager-method.md §6)
        grades = [[is_correct(extract_answer(s["text"], "numeric"), x["reference"], "numeric") for s in x["sequences"]]
                  for x in recs]
        # cons@k: the vote (answers.majority_answer, tested on its own in test_grading) must be right
        majority = [majority_answer([extract_answer(s["text"], "numeric") for s in x["sequences"]], "numeric")
                    for x in recs]

        def mean(values):  # over the prompts
            return sum(values) / len(recs)

        expected = {
            "p@1": mean(sum(g) / len(g) for g in grades),
            "PR": mean(sum(g) / len(g) for g in grades),
            "pass@k": mean(1.0 if any(g) else 0.0 for g in grades),
            "#T": mean(x["#T"] for x in recs),
            "#S": mean(len(x["sequences"]) for x in recs),
            "cons@k": mean(1.0 if is_correct(m, x["reference"], "numeric") else 0.0 for m, x in zip(majority, recs)),
        }
        for key, value in expected.items():
            assert rows[name][key] == pytest.approx(value), (name, key)
        assert rows[name]["prompts"] == len(TOY) and rows[name]["complete"]
        assert rows[name]["tokens_vs_parallel"] == pytest.approx(expected["#T"] / rows["parallel_M4"]["#T"])
    assert rows["eager-init_theta2.5_M4"]["#S"] <= rows["parallel_M4"]["#S"]
    table = eager("report", str(full_run))
    assert table.returncode == 0 and "eager-adapt" in table.stdout and "6/6" in table.stdout
    png = tmp_path / "plot.png"
    assert eager("report", str(full_run), "--plot", str(png)).returncode == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_a_no_op_and_changed_parameters_are_refused(full_run, toy_file):
    before = {p.name: p.read_bytes() for p in full_run.glob("*.jsonl")}
    again = eager(*eval_args(toy_file, full_run))
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in full_run.glob("*.jsonl")} == before
    manifest = (full_run / "manifest.json").read_text()
    changed = eval_args(toy_file, full_run)
    changed[changed.index("-n") + 1] = "33"
    one_line_error(eager(*changed), "different parameters", "generation.max_new_tokens")
    assert (full_run / "manifest.json").read_text() == manifest  # a refused run writes nothing


def test_resume_after_sigkill(toy_file, tmp_path, default_model_path):
    out = tmp_path / "killed"
    # --raw: short prompts, so the time goes to generation (where the kill lands), not to prefill
    args = [sys.executable, "-m", "eager_local", *eval_args(toy_file, out, "--method", "parallel,eager-adapt",
                                                            "--no-progress", "--raw")]
    args[args.index("-M") + 1] = "2"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "parallel_M2.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if first.exists() and first.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = [line for line in first.read_bytes().split(b"\n")[:-1]]
    assert 1 <= len(kept) <= len(TOY)
    params = json.loads((out / "manifest.json").read_text())["params"]

    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"] == params and len(manifest["sessions"]) == 2
    ids = [f"q{i}" for i in range(len(TOY))]
    for name in ("parallel_M2", "eager-init_theta2.5_M2", "eager-adapt_theta2.5_M2"):
        got = [rec["id"] for rec in records(out, name)]
        assert sorted(got) == ids, (name, got)  # nothing lost, nothing twice
    # the records written before the kill are kept as they were
    assert first.read_bytes().split(b"\n")[: len(kept)] == kept
    for name in ("parallel_M1", "parallel_M2", "eager-init_theta2.5_M2", "eager-adapt_theta2.5_M2"):
        assert json.loads((out / f"{name}.stats.json").read_text())["complete"]
    assert sorted(rec["id"] for rec in records(out, "parallel_M1")) == ids


def test_shards_cover_the_dataset_once_and_merge(tmp_path, default_model_path):
    dirs = []
    for i in range(2):
        out = tmp_path / f"shard{i}"
        r = eager("eval", "--dataset", "arith:4", "--shard", f"{i}/2", "--method", "parallel", "-M", "2", "-n", "16",
                  "--raw", "--out", str(out), "--no-progress", *THREADS)
        assert r.returncode == 0, r.stderr
        dirs.append(out)
    ids = [[rec["id"] for rec in records(d, "parallel_M2")] for d in dirs]
    assert sorted(ids[0] + ids[1]) == [f"arith-L{i % 5 + 1}-{i:04d}" for i in range(4)]
    assert not set(ids[0]) & set(ids[1])
    r = eager("report", str(dirs[0]), str(dirs[1]), "--format", "json")
    (group,) = json.loads(r.stdout)
    derived, row = group["points"]  # parallel_M1 (derived in each shard), parallel_M2
    assert row["prompts"] == 4 == row["expected"] and row["complete"]
    assert row["#S"] == 2
    assert derived["derived_from"] == "parallel_M2" and derived["prompts"] == 4 and derived["#S"] == 1


def test_budget_caps_the_run_and_survives_resume(toy_file, tmp_path, default_model_path):
    out = tmp_path / "budget"
    args = eval_args(toy_file, out, "--method", "parallel", "--budget", "40", "--no-progress", "--raw")
    r = eager(*args)
    assert r.returncode == 0, r.stderr
    recs = records(out, "parallel_M4")
    assert sorted(x["id"] for x in recs) == [f"q{i}" for i in range(len(TOY))]  # every prompt is accounted for
    assert sum(x["#T"] for x in recs) == 40
    assert any(x["cut_by_budget"] for x in recs)
    assert any(s["finish_reason"] == "budget" for x in recs for s in x["sequences"]) or any(
        not x["started"] for x in recs)
    before = (out / "parallel_M4.jsonl").read_bytes()
    assert eager(*args).returncode == 0
    assert (out / "parallel_M4.jsonl").read_bytes() == before  # the budget is spent on disk too
    report = eager("report", str(out))
    assert "token budget: 40 of 40 spent" in report.stdout  # the derived M = 1, 2 points spent nothing


def test_bad_input(tmp_path, toy_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "oops"\n')
    out = str(tmp_path / "o")
    one_line_error(eager("eval", "--dataset", str(bad), "--out", out), str(bad), "line 2")
    one_line_error(eager("eval", "--dataset", "arith:3", "--method", "parallel,beam", "--out", out), "unknown method 'beam'")
    one_line_error(eager("eval", "--dataset", "arith:3", "--shard", "2/2", "--out", out), "bad shard")
    one_line_error(eager("eval", "--dataset", "arith:3", "--shard", "x", "--out", out), "bad shard")
    one_line_error(eager("eval", "--dataset", "arith:3", "--theta", "2,abc", "--out", out), "theta")
    one_line_error(eager("eval", "--dataset", "arith:3", "-M", "0", "--out", out), "max-sequences")
    one_line_error(eager("eval", "--dataset", "arith:3", "--prompt-template", "no placeholder", "--out", out), "{problem}")
    one_line_error(eager("eval", "--dataset", "gsm9k", "--out", out), "unknown dataset")
    not_a_run = tmp_path / "notrun"
    not_a_run.mkdir()
    (not_a_run / "x.txt").write_text("mine")
    one_line_error(eager("eval", "--dataset", "arith:3", "--out", str(not_a_run)), "not an eager-local run")
    assert not (tmp_path / "o").exists()
