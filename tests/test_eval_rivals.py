"""Adaptive-Consistency and ESC in `eval` on the real test model: the waves follow the rules
(checked against an independent replay of each rule on the recorded answers), both methods share
their waves' random streams, the report shows them, an interrupted run resumes to the same records,
the token budget stops them, and bad options are one-line errors.

Small on purpose: 6 toy problems, -M 6, 32 tokens per sample.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error as one_line_error, eager, toy_eval_args, write_toy_dataset
from eager_local.answers import extract_answer, vote_key
from eager_local.eval import store

# Sums whose 32-token texts end on varied numbers (the rules run to the cap), and one request the
# test model answers the same way every time (the rules stop early): both outcomes on any CPU.
TOY = [("What is 2 + 2?", "4"), ("What is 3 + 4?", "7"), ("What is 10 + 10?", "20"), ("What is 5 - 3?", "2"),
       ("What is 1 + 1?", "2"), ("Say only the number 12.", "12")]
M, THRESHOLD, WINDOW = 6, 0.95, 3  # the default window at M = 6: two windows of 5 do not fit, so M // 2
AC, ESC = "adaptive-consistency_M6", "esc_M6"


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy.jsonl", TOY)


def eval_args(toy_file, out, *extra):
    return toy_eval_args(toy_file, out, "-M", str(M), "-n", "32", "--method", "parallel,adaptive-consistency,esc", *extra)


@pytest.fixture(scope="module")
def run(toy_file, tmp_path_factory, default_model_path):
    out = tmp_path_factory.mktemp("runs") / "rivals"
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    return out


def records(run_dir: Path, name: str) -> dict[str, dict]:
    return {r["id"]: r for r in store.read_records(run_dir / f"{name}.jsonl")}


def journal(run_dir: Path, name: str) -> list[dict]:
    return store.read_records(run_dir / f"{name}.waves.jsonl")


# --- independent replays of the rules -------------------------------------------------------------
def beta_probability(a: int, b: int) -> Fraction:
    """∫_{1/2}^1 x^a (1−x)^b dx / ∫_0^1 x^a (1−x)^b dx, exactly (polynomial expansion)."""

    def integral(lo):
        return sum(Fraction(comb(b, j) * (-1) ** j) * (1 - lo ** (a + j + 1)) / (a + j + 1) for j in range(b + 1))

    return integral(Fraction(1, 2)) / integral(Fraction(0))


def groups(answers):
    counts = {}
    for x in answers:
        if x is not None:
            counts[vote_key(x)] = counts.get(vote_key(x), 0) + 1
    return sorted(counts.values(), reverse=True)


def ac_samples(answers):
    """How many samples Adaptive-Consistency draws checking its rule after every one (the reference)."""
    for n in range(1, M + 1):
        top = groups(answers[:n]) + [0, 0]
        if beta_probability(top[0], top[1]) >= THRESHOLD:
            return n, "rule"
    return M, "cap"


def unanimous(window):
    return None not in window and len(groups(window)) == 1


# --- tests ----------------------------------------------------------------------------------------
def test_waves_follow_the_rules(run):
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["params"]["rivals"] == {"adaptive-consistency": {"criterion": "beta", "threshold": THRESHOLD},
                                            "esc": {"window": "auto"}}
    stops = []
    for name in (AC, ESC):
        recs, waves = records(run, name), journal(run, name)
        assert sorted(recs) == [f"q{i}" for i in range(len(TOY))]
        assert len({(w["id"], w["round"]) for w in waves}) == len(waves)  # each wave logged once
        for pid, rec in recs.items():
            answers = [extract_answer(s["text"], "numeric") for s in rec["sequences"]]
            assert answers == [s["answer"] for s in rec["sequences"]]
            assert 1 <= rec["#S"] <= M and [s["id"] for s in rec["sequences"]] == list(range(rec["#S"]))
            mine = sorted((w for w in waves if w["id"] == pid), key=lambda w: w["round"])
            assert [w["round"] for w in mine] == list(range(1, len(mine) + 1))
            assert rec["#T"] == sum(w["#T"] for w in mine) == sum(s["new_tokens"] for s in rec["sequences"])
            assert [s["text"] for w in mine for s in w["sequences"]] == [s["text"] for s in rec["sequences"]]
            drawn = 0
            for w in mine:
                assert w["first_sample"] == drawn and w["#S"] == w["wave"]
                drawn += w["#S"]
            if name == AC:
                assert (rec["#S"], rec["stopped_by"]) == ac_samples(answers)
                assert mine[0]["wave"] == 4  # P < 0.95 for three unanimous answers: the first wave is 4
            else:
                assert all(w["wave"] == WINDOW for w in mine)
                windows = [answers[i:i + WINDOW] for i in range(0, rec["#S"], WINDOW)]
                assert not any(unanimous(w) for w in windows[:-1])
                assert rec["stopped_by"] == ("rule" if unanimous(windows[-1]) else "cap")
                assert rec["stopped_by"] == "rule" or rec["#S"] == M
            stops.append(rec["stopped_by"])
        stats = json.loads((run / f"{name}.stats.json").read_text())
        assert stats["complete"] and stats["batches"]["peak_prompts"] > 1  # waves of several prompts per batch
        assert stats["rounds"] == max(len([w for w in waves if w["id"] == pid]) for pid in recs)
    assert "cap" in stops  # the toy problems give both outcomes, so both branches above ran
    assert "rule" in stops


def test_the_rivals_draw_parallel_samplings_samples(run):
    """A wave starting at sample k draws the streams parallel sampling gives samples k, k+1, …: each
    rival's samples, over all its waves, are the first #S samples of the parallel M run."""
    parallel = records(run, "parallel_M6")
    for name in (AC, ESC):
        for pid, rec in records(run, name).items():
            texts = [s["text"] for s in rec["sequences"]]
            assert texts == [s["text"] for s in parallel[pid]["sequences"][:len(texts)]], (name, pid)
    # and the waves after the first really started mid-stream (so the test covers first_sequence > 0)
    assert any(w["first_sample"] > 0 for name in (AC, ESC) for w in journal(run, name))


def test_report_shows_the_rivals(run, tmp_path):
    r = eager("report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    rows = {row["point"]: row for row in group["points"]}
    assert {AC, ESC, "parallel_M6"} <= set(rows)
    for name in (AC, ESC):
        recs = list(records(run, name).values())
        row = rows[name]
        assert row["#S"] == pytest.approx(sum(x["#S"] for x in recs) / len(recs))
        assert row["#T"] == pytest.approx(sum(x["#T"] for x in recs) / len(recs))
        assert row["pass@k"] == pytest.approx(sum(any(s["correct"] for s in x["sequences"]) for x in recs) / len(recs))
        assert row["complete"] and row["theta"] is None and row["wall_s"] > 0
        assert row["tokens_vs_parallel"] == pytest.approx(row["#T"] / rows["parallel_M6"]["#T"])
        assert sum(row["stopped_by"].values()) == len(TOY)
    spent = sum(w["#T"] for name in (AC, ESC) for w in journal(run, name))
    spent += sum(x["#T"] for x in records(run, "parallel_M6").values())
    assert group["budget"]["spent"] == spent  # the journals hold the rivals' tokens
    table = eager("report", str(run))
    assert "adaptive-consistency" in table.stdout and "esc_M6: window auto = 3" in table.stdout
    png = tmp_path / "plot.png"
    assert eager("report", str(run), "--plot", str(png)).returncode == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_a_no_op(run, toy_file):
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    r = eager(*eval_args(toy_file, run))
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == before


def test_resume_after_interruption(run, toy_file, tmp_path):
    """What a kill leaves on disk: the journals' first lines, a torn line, no merged records yet.
    The rerun replays the logged waves, generates the others, and ends with the same records."""
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    for name in (AC, ESC):
        (out / f"{name}.jsonl").unlink()
        (out / f"{name}.stats.json").unlink()
        lines = (out / f"{name}.waves.jsonl").read_bytes().split(b"\n")
        (out / f"{name}.waves.jsonl").write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:40])
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    keys = ("#S", "#T", "stopped_by", "n_correct")
    for name in (AC, ESC):
        old, new = records(run, name), records(out, name)
        assert sorted(new) == sorted(old)
        for pid in old:
            assert {k: new[pid][k] for k in keys} == {k: old[pid][k] for k in keys}, (name, pid)
            assert [s["text"] for s in new[pid]["sequences"]] == [s["text"] for s in old[pid]["sequences"]]
            assert [{k: w[k] for k in ("round", "first_sample", "wave")} for w in new[pid]["waves"]] == \
                   [{k: w[k] for k in ("round", "first_sample", "wave")} for w in old[pid]["waves"]]
        assert len(journal(out, name)) == len(journal(run, name))  # the torn line was cut, nothing logged twice
        assert json.loads((out / f"{name}.stats.json").read_text())["complete"]


def test_budget_stops_the_waves(toy_file, tmp_path, default_model_path):
    out = tmp_path / "budget"
    args = eval_args(toy_file, out, "--budget", "60")
    args[args.index("--method") + 1] = "esc"
    r = eager(*args)
    assert r.returncode == 0, r.stderr
    recs = records(out, ESC)
    assert sorted(recs) == [f"q{i}" for i in range(len(TOY))]
    assert sum(w["#T"] for w in journal(out, ESC)) == 60
    assert "budget" in {x["stopped_by"] for x in recs.values()}
    before = (out / f"{ESC}.waves.jsonl").read_bytes()
    assert eager(*args).returncode == 0
    assert (out / f"{ESC}.waves.jsonl").read_bytes() == before  # the budget is spent on disk too


def test_bad_options(toy_file, tmp_path):
    out = str(tmp_path / "o")
    base = ["eval", "--dataset", str(toy_file), "--problem-field", "question", "--answer-field", "solution",
            "--out", out]
    one_line_error(eager(*base, "--method", "adaptive-consistency", "--ac-threshold", "1.5"), "ac-threshold")
    one_line_error(eager(*base, "--method", "esc", "-M", "4,8", "--esc-window", "5"), "esc-window", "4")
    one_line_error(eager(*base, "--method", "esc", "--esc-window", "two"), "esc-window")
    one_line_error(eager(*base, "--method", "adaptive-consistency", "--ac-criterion", "dirichlet"), "criterion")
    assert not Path(out).exists()


def test_replaying_the_rules_on_the_parallel_run_gives_the_real_runs(run):
    """scripts/replay_rivals.py applies the rules to a parallel run's records instead of decoding: on
    this run it must give each prompt exactly the samples (texts, #S, #T) the real waves drew."""
    import importlib.util

    from eager_local.eval.stopping import make_rule

    path = Path(__file__).resolve().parent.parent / "scripts" / "replay_rivals.py"
    spec = importlib.util.spec_from_file_location("replay_rivals", path)
    replay_rivals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay_rivals)
    parallel = records(run, "parallel_M6")
    options = json.loads((run / "manifest.json").read_text())["params"]["rivals"]
    for name, method in ((AC, "adaptive-consistency"), (ESC, "esc")):
        rule = make_rule(method, M, options)
        for pid, rec in records(run, name).items():
            drawn = replay_rivals.replay(parallel[pid], rule)
            assert [s["text"] for s in drawn] == [s["text"] for s in rec["sequences"]], (name, pid)
            assert sum(s["new_tokens"] for s in drawn) == rec["#T"]
