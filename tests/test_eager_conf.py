"""eager-conf (EAGer trees in waves, pruned by confidence, stopped by agreement) on the real test model.

Every figure the method decides on is recomputed here from what it recorded, independently of
eager_local: a fork's confidences over its whole text (the parent's over the shared prefix, then its
own), the window means and the first crossing, the warm-up percentile (numpy), the wave sizes and
the stop from the Beta integral (numeric quadrature with numpy, not the closed form the rule uses).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cli_helpers import assert_one_line_error as one_line_error, eager, toy_eval_args, write_toy_dataset
from eager_local import tree as T
from eager_local.answers import extract_answer, tally, vote_key
from eager_local.engine import Request
from eager_local.eval import confidence as C
from eager_local.eval import store
from eager_local.eval.deepconf import Watch
from eager_local.eval.eagerconf import EagerConfRule
from eager_local.eval.store import ECONF, Point

TOY = [("What is 2 + 2?", "4"), ("What is 3 + 4?", "7"), ("What is 10 + 10?", "20"), ("What is 5 - 3?", "2"),
       ("What is 6 * 7?", "42"), ("What is 9 - 1?", "8")]
M, N, THETA = 8, 48, 1.0
WARMUP, WINDOW = 4, 6  # the defaults at M = 8 (M // 2, and AC's first wave at 0.95) and -n 48 (48 // 8)
POINT = f"eager-conf_theta{THETA:g}_M{M}"


# --- independent recomputation ---------------------------------------------------------------------
def window_means(milli: list[int], w: int) -> list[float]:
    return [sum(milli[i - w + 1:i + 1]) / (1000 * w) for i in range(w - 1, len(milli))]


def lowest(milli: list[int], w: int) -> float | None:
    if not milli:
        return None
    return sum(milli) / (1000 * len(milli)) if len(milli) < w else min(window_means(milli, w))


def beta_tail(a: int, b: int) -> float:
    """∫_{1/2}^1 x^a (1−x)^b dx / ∫_0^1 x^a (1−x)^b dx by the trapezoid rule on a fine grid."""
    x = np.linspace(0.0, 1.0, 200_001)
    f = x**a * (1 - x) ** b
    half = x >= 0.5
    return float(np.trapezoid(f[half], x[half]) / np.trapezoid(f, x))


def top_two(votes):
    sizes = sorted((len(g) for g in tally(votes)), reverse=True) + [0, 0]
    return sizes[0], sizes[1]


def full_paths(sequences: list[dict]) -> dict[int, list[int]]:
    """Each sequence's confidences over its whole text, in thousandths: its parent's path over the
    shared prefix, then its own recorded ones (the journal keeps each sequence's own tokens only)."""
    paths: dict[int, list[int]] = {}
    for s in sorted(sequences, key=lambda s: s["id"]):  # a parent is always older than its child
        prefix = paths[s["parent"]][:s["fork_at"]] if s["parent"] is not None else []
        paths[s["id"]] = prefix + [round(c * 1000) for c in s["confidences"]]
    return paths


# --- the watch on an EAGer tree ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def forked(llm, arith_prompt):
    """An EAGer tree watched without a threshold, and the same tree under a threshold between two of
    its sequences' lowest window means (over their whole texts)."""
    tokens = llm.prompt_tokens(arith_prompt)
    config = llm.config(method="eager-init", theta=THETA, max_sequences=4, max_new_tokens=40, temperature=0.8)

    def run(limit):
        watch = Watch(WINDOW, limit)
        request = Request(tokens=tokens, text=arith_prompt, top_logprobs=C.TOP_K,
                          on_logprobs=watch.on_logprobs, on_token=watch.on_token)
        (tree,) = llm.generate_requests([request], config)
        return tree, watch.confs

    return run, *run(None)


def test_a_fork_is_judged_on_its_whole_text(forked):
    _, tree, confs = forked
    children = [s for s in tree.sequences if s.parent is not None]
    assert children, "θ too high for the test model: the tree did not fork"
    for s in tree.sequences:
        assert len(confs[s.id]) == len(s.tokens)  # a confidence per token of the whole text
    for s in children:
        parent = confs[s.parent]
        assert confs[s.id][:s.fork_at] == parent[:s.fork_at]  # the shared prefix: the parent's
        # At the fork both drew from the same distribution: the same confidence, another token.
        assert confs[s.id][s.fork_at] == parent[s.fork_at]
        assert s.tokens[s.fork_at] != tree.sequences[s.parent].tokens[s.fork_at]


def test_a_pruned_fork_stops_at_the_first_crossing_of_its_whole_text(forked):
    run, free, free_confs = forked
    lows = sorted({lowest(c, WINDOW) for c in free_confs.values()})
    assert len(lows) >= 2
    limit = (lows[-1] + lows[-2]) / 2
    pruned, confs = run(limit)
    outcomes = []
    for s in pruned.sequences:
        means = window_means(confs[s.id], WINDOW)
        crossing = next((j + WINDOW - 1 for j, m in enumerate(means) if m < limit), None)
        if crossing is None:
            assert s.finish_reason in (T.STOP, T.LENGTH)
        else:
            assert s.finish_reason == T.LOW_CONFIDENCE and len(s.tokens) == crossing + 1
        outcomes.append(crossing is None)
    assert True in outcomes and False in outcomes
    assert pruned.generated_tokens < free.generated_tokens


# --- the rule on hand-made answers --------------------------------------------------------------------
def test_wave_sizes_and_stop_follow_the_beta_integral():
    rule = EagerConfRule(ECONF, cap=8, theta=THETA, warmup=4, window=WINDOW, ac_threshold=0.95)
    assert rule.next_wave([]) == 4
    for answers in (["1", "1"], ["1", "1", "2"], ["1", None, None, None], ["1", "1", "1", "1", "2"],
                    ["1", "2", "3", "4", "5", "6", "7"], ["1"] * 8):
        a, b = top_two(answers)
        left = 8 - len(answers)
        expected = next((k for k in range(1, left + 1) if beta_tail(a + k, b) >= 0.95), left)
        assert rule.next_wave(answers) == expected, answers
        assert rule.decide(answers, 1).stop == (beta_tail(a, b) >= 0.95), answers
    record = {"sequences": [{"answer": "3", "finish_reason": T.STOP},
                            {"answer": "3", "finish_reason": T.LOW_CONFIDENCE},
                            {"answer": None, "finish_reason": T.LENGTH}]}
    assert rule.votes(record) == ["3", None, None]  # a pruned sequence does not vote


# --- eval end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy.jsonl", TOY)


def eval_args(toy_file, out, *extra):
    return toy_eval_args(toy_file, out, "-M", str(M), "-n", str(N), "--theta", str(THETA), "--method", "eager-conf", *extra)


@pytest.fixture(scope="module")
def run(toy_file, tmp_path_factory, default_model_path):
    out = tmp_path_factory.mktemp("runs") / "eager-conf"
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    return out


def test_waves_prune_and_stop_as_specified(run):
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["params"]["rivals"][ECONF] == {"warmup": "auto", "window": "auto", "ac_threshold": 0.95}
    stats = json.loads((run / f"{POINT}.stats.json").read_text())
    assert stats["complete"] and stats["rule"]["warmup"] == WARMUP and stats["rule"]["window"] == WINDOW
    records = {r["id"]: r for r in store.read_records(run / f"{POINT}.jsonl")}
    journal = store.read_records(run / f"{POINT}.waves.jsonl")
    assert sorted(records) == [f"q{i}" for i in range(len(TOY))]
    seen = set()
    for pid, rec in records.items():
        waves = sorted((w for w in journal if w["id"] == pid), key=lambda w: w["round"])
        warm = waves[0]
        assert (warm["first_sample"], warm["wave"]) == (0, WARMUP)
        warm_paths = full_paths(warm["sequences"])
        threshold = float(np.percentile([lowest(p, WINDOW) for p in warm_paths.values()], 90))
        assert rec["threshold"] == pytest.approx(threshold, abs=1e-12)
        assert all(s["finish_reason"] != T.LOW_CONFIDENCE for s in warm["sequences"])  # the warm-up is not pruned
        votes, drawn = [], 0
        for wave in waves:
            assert wave["first_sample"] == drawn and 1 <= wave["#S"] <= wave["wave"]
            if wave["round"] > 1:  # the wave asked for the fewest sequences after which the rule could fire
                a, b = top_two(votes)
                left = M - drawn
                assert wave["wave"] == next((k for k in range(1, left + 1) if beta_tail(a + k, b) >= 0.95), left)
                assert wave["threshold"] == pytest.approx(threshold, abs=1e-12)
                for sid, path in full_paths(wave["sequences"]).items():
                    s = next(x for x in wave["sequences"] if x["id"] == sid)
                    means = window_means(path, WINDOW)
                    crossing = next((j + WINDOW - 1 for j, m in enumerate(means) if m < threshold), None)
                    if crossing is None:
                        assert s["finish_reason"] != T.LOW_CONFIDENCE
                    else:
                        assert s["finish_reason"] == T.LOW_CONFIDENCE and s["tokens"] == crossing + 1
                        seen.add("pruned")
            drawn += wave["#S"]
            votes += [None if s["finish_reason"] == T.LOW_CONFIDENCE else s["answer"] for s in wave["sequences"]]
            a, b = top_two(votes)
            assert wave["rule"]["stop"] == (beta_tail(a, b) >= 0.95)
        seen.add("branched" if rec["events"] else "single")
        last = waves[-1]["rule"]["stop"]
        assert rec["stopped_by"] == ("rule" if last else "cap") and (last or drawn == M)
        seen.add(rec["stopped_by"])
        assert rec["#S"] == drawn <= M and rec["#T"] == sum(w["#T"] for w in waves)
        for s in rec["sequences"]:  # parents point inside the same wave after the merge
            assert s["parent"] is None or rec["sequences"][s["parent"]]["run"] == s["run"]
    assert {"pruned", "branched", "cap"} <= seen


def test_report_votes_by_confidence(run):
    r = eager("report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    row = next(p for p in group["points"] if p["point"] == POINT)
    cons = []
    recs = store.read_records(run / f"{POINT}.jsonl")
    for rec in recs:
        totals, first = {}, {}
        for s in rec["sequences"]:
            w = s["min_conf"]
            answer = extract_answer(s["text"], "numeric")
            if answer is None or w is None or w < rec["threshold"]:
                continue
            key = vote_key(answer)
            first.setdefault(key, answer)
            totals[key] = totals.get(key, 0.0) + w
        vote = first[max(totals, key=lambda k: totals[k])] if totals else None
        cons.append(vote is not None and vote_key(vote) == vote_key(rec["reference"]))
    assert row["cons@k"] == pytest.approx(sum(cons) / len(recs))
    assert row["#T"] == pytest.approx(sum(x["#T"] for x in recs) / len(recs))
    assert "pruned for low confidence" in eager("report", str(run)).stdout


def test_rerun_is_a_no_op(run, toy_file):
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    r = eager(*eval_args(toy_file, run))
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == before


def test_resume_after_a_kill_mid_run(run, toy_file, tmp_path):
    """A kill after the first round: the journal holds the warm-up trees and a torn line, no merged
    records. The rerun replays round 1, sets the same thresholds and decodes the rest to the same trees."""
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    (out / f"{POINT}.jsonl").unlink()
    (out / f"{POINT}.stats.json").unlink()
    lines = [line for line in (out / f"{POINT}.waves.jsonl").read_bytes().split(b"\n") if line]
    first = [line for line in lines if json.loads(line)["round"] == 1]
    later = [line for line in lines if json.loads(line)["round"] > 1]
    assert later, "the toy run stopped every prompt after its warm-up: nothing to resume"
    (out / f"{POINT}.waves.jsonl").write_bytes(b"\n".join(first) + b"\n" + later[0][:40])
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    key = lambda w: (w["id"], w["round"])  # noqa: E731
    old = sorted(store.read_records(run / f"{POINT}.waves.jsonl"), key=key)
    new = sorted(store.read_records(out / f"{POINT}.waves.jsonl"), key=key)
    assert [(key(w), w["threshold"], [(s["text"], s["finish_reason"]) for s in w["sequences"]]) for w in old] == \
           [(key(w), w["threshold"], [(s["text"], s["finish_reason"]) for s in w["sequences"]]) for w in new]
    assert [{k: r[k] for k in ("id", "#T", "#S", "threshold", "stopped_by")}
            for r in store.read_records(run / f"{POINT}.jsonl")] == \
           [{k: r[k] for k in ("id", "#T", "#S", "threshold", "stopped_by")}
            for r in store.read_records(out / f"{POINT}.jsonl")]


def test_point_names_round_trip():
    point = Point(ECONF, THETA, M)
    assert store.parse_point(point.name) == point and point.samples_in_waves


def test_refused_where_it_cannot_run(toy_file, tmp_path):
    out = str(tmp_path / "o")
    base = ["eval", "--dataset", str(toy_file), "--problem-field", "question", "--answer-field", "solution",
            "--out", out, "--method", "eager-conf", "-M", "8"]
    one_line_error(eager(*base, "--ac-threshold", "0.4"), "ac-threshold")
    one_line_error(eager(*base, "--deepconf-window", "0"), "deepconf-window")
    assert not os.path.exists(out)
