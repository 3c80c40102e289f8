"""DeepConf-online (deepconf-low, deepconf-high) on the real test model.

The engine-level tests hook DeepConf's watch onto plain parallel-sampling requests and check it
against numbers recomputed here, independently: window means from the recorded confidences
(numpy), and the confidences themselves from llama-cpp-python's own logits (logits_all) and a
numpy log-softmax. The pure parts (percentile, window summary, weighted vote) are checked on
hand-made numbers. The CLI tests run `eval --method parallel,deepconf-low,deepconf-high` end to end
(4 toy problems, -M 4, -n 48), read the journal, the report, and resume.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from cli_helpers import assert_one_line_error as one_line_error, eager, toy_eval_args, write_toy_dataset
from eager_local import tree as T
from eager_local.answers import extract_answer, vote_key
from eager_local.engine import Request
from eager_local.eval import confidence as C
from eager_local.eval import store
from eager_local.eval.deepconf import Watch, default_warmup, default_window
from eager_local.eval.metrics import prompt_metrics

TOY = [("What is 2 + 2?", "4"), ("What is 3 + 4?", "7"), ("What is 10 + 10?", "20"), ("What is 5 - 3?", "2")]
M, N = 4, 48
WARMUP, WINDOW = 2, 6  # the defaults at M = 4 (M // 2) and -n 48 (48 // 8)
LOW, HIGH = "deepconf-low_M4", "deepconf-high_M4"
PERCENTILE = {LOW: 90, HIGH: 10}


# --- independent recomputation ---------------------------------------------------------------------
def window_means(confs: list[float], w: int) -> list[float]:
    """Mean of every full window of w recorded confidences (item j: the window ending at token
    j + w − 1). The confidences are thousandths (3 decimals): summed as integers, so a window mean
    equal to a threshold is equal here too."""
    milli = [round(c * 1000) for c in confs]
    return [sum(milli[i - w + 1:i + 1]) / (1000 * w) for i in range(w - 1, len(milli))]


def lowest(confs: list[float], w: int) -> float | None:
    if not confs:
        return None
    return sum(round(c * 1000) for c in confs) / (1000 * len(confs)) if len(confs) < w else min(window_means(confs, w))


def first_crossing(confs: list[float], w: int, threshold: float) -> int | None:
    """Index of the first token whose full window's mean is below the threshold."""
    return next((j + w - 1 for j, mean in enumerate(window_means(confs, w)) if mean < threshold), None)


def heaviest(answers, weights):
    totals, first = {}, {}
    for a, w in zip(answers, weights):
        if a is None or w is None:
            continue
        key = vote_key(a)
        first.setdefault(key, a)
        totals[key] = totals.get(key, 0.0) + w
    if not totals:
        return None
    best = max(totals.values())
    return first[next(k for k in totals if totals[k] == best)]


# --- pure parts, hand-made numbers ----------------------------------------------------------------
def test_threshold_is_the_papers_percentile():
    mins = [3.0, 5.0, 4.0, 10.0, 7.5]
    assert C.threshold(mins, "deepconf-low") == pytest.approx(9.0) == np.percentile(mins, 90)  # keeps the top 10 %
    assert C.threshold(mins, "deepconf-high") == pytest.approx(3.4) == np.percentile(mins, 10)  # keeps the top 90 %
    assert C.threshold([None, 2.0, None, 4.0], "deepconf-high") == pytest.approx(2.2)  # traces without tokens skipped
    assert C.threshold([None], "deepconf-low") is None
    assert C.vote_weights([5.0, 3.0, None, 4.0], 4.0) == [5.0, None, None, 4.0]


def test_window_summary_and_token_confidence():
    assert C.token_confidence_milli([-1.0, -2.0, -3.0]) == 2000
    assert C.token_confidence_milli([-0.0004] * 20) == 0 and C.token_confidence_milli([-0.0006] * 20) == 1
    assert C.lowest_group_confidence([4000, 2000, 3000, 1000, 6000], 2) == 2.0  # windows 3, 2.5, 2, 3.5
    assert C.lowest_group_confidence([4000, 2000], 5) == 3.0  # shorter than the window: the plain mean
    assert C.lowest_group_confidence([], 5) is None


def test_weighted_vote():
    answers = ["18", "7", "18.0", None, "7", "$7"]
    weights = [1.0, 0.9, 1.0, 5.0, 0.5, 0.4]
    assert C.weighted_majority(answers, weights) == "18"  # 2.0 against 1.8, though "7" has more votes
    assert C.weighted_majority(answers, [1.0, 0.9, None, 5.0, 0.5, 0.4]) == "7"  # 1.8 against 1.0
    assert C.weighted_majority(["a", "b"], [1.0, 1.0]) == "a"  # ties: first seen
    assert C.weighted_majority(["a", "b"], [None, None]) is None
    m = prompt_metrics([True, False, True, False, False, False], answers, "18", "numeric", 10, weights)
    assert m["majority"] == "18" and m["cons@k"] == 1.0
    m = prompt_metrics([True, False, True, False, False, False], answers, "18", "numeric", 10)
    assert m["majority"] == "7" and m["cons@k"] == 0.0  # the unweighted vote differs


def test_report_votes_by_confidence():
    from eager_local.eval.report import _prompt_metrics

    record = {"method": "deepconf-low", "reference": "5", "kind": "numeric", "#T": 30, "threshold": 4.0,
              "sequences": [{"answer": "5", "correct": True, "min_conf": 3.9},  # below s: does not vote
                            {"answer": "5", "correct": True, "min_conf": 3.0},
                            {"answer": "6", "correct": False, "min_conf": 4.5}]}
    m = _prompt_metrics(record)
    assert m["majority"] == "6" and m["cons@k"] == 0.0 and m["pass@k"] == 1.0 and m["#S"] == 3
    assert _prompt_metrics(dict(record, method="parallel"))["cons@k"] == 1.0


def test_a_sample_without_confidences_is_refused():
    """A runner that never calls on_logprobs here (a remote engine) must not give silent empty confidences."""
    from eager_local.errors import ConfigError

    record = {"method": "deepconf-low", "id": "q0", "sequences": [{"id": 0, "tokens": 3, "fork_at": 0}]}
    with pytest.raises(ConfigError, match="no per-token confidences"):
        Watch(WINDOW, None).annotate(record)
    record = {"method": "deepconf-low", "id": "q0", "sequences": [{"id": 0, "tokens": 0, "fork_at": 0}]}
    Watch(WINDOW, None).annotate(record)  # a sample cut before its first token has none to give
    assert record["sequences"][0]["confidences"] == [] and record["sequences"][0]["min_conf"] is None


def test_defaults_scale_the_paper():
    assert [default_warmup(m) for m in (1, 2, 4, 8, 16, 32, 256)] == [1, 1, 2, 4, 8, 16, 16]
    assert [default_window(n) for n in (4, 48, 256, 512, 16384, 32768)] == [1, 6, 32, 64, 2048, 2048]


# --- the engine with a watch -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def watched(llm, arith_prompt):
    """Three samples of a prompt watched without a threshold, then the same streams under three
    thresholds: halfway between the two highest lowest-window-means (one sample never falls below,
    the others do); just above sample 0's first full window (it stops on token w); and exactly
    sample 2's lowest window mean (equal is not below: it runs to its end)."""
    tokens = llm.prompt_tokens(arith_prompt)
    config = llm.config(method="parallel", max_sequences=3, max_new_tokens=40, temperature=0.8)

    def run(limit):
        watch = Watch(WINDOW, limit)
        request = Request(tokens=tokens, text=arith_prompt, top_logprobs=C.TOP_K,
                          on_logprobs=watch.on_logprobs, on_token=watch.on_token)
        (tree,) = llm.generate_requests([request], config)
        return tree, {sid: [c / 1000 for c in confs] for sid, confs in watch.confs.items()}

    free, free_confs = run(None)
    lows = sorted(lowest(c, WINDOW) for c in free_confs.values())
    assert len(lows) == 3 and lows[-1] > lows[-2] and all(len(c) > WINDOW for c in free_confs.values())
    limits = {"between": (lows[-1] + lows[-2]) / 2, "first window": window_means(free_confs[0], WINDOW)[0] + 1e-4,
              "tie": lowest(free_confs[2], WINDOW)}
    return tokens, free, free_confs, {name: (limit, *run(limit)) for name, limit in limits.items()}


def test_a_sample_stops_exactly_where_its_window_mean_falls_below(watched):
    _, free, _, runs = watched
    outcomes = {}
    for name, (limit, stopped, confs) in runs.items():
        outcomes[name] = []
        for plain, seq in zip(free.sequences, stopped.sequences):
            assert len(confs[seq.id]) == len(seq.tokens)  # one confidence per generated token
            assert seq.tokens == plain.tokens[:len(seq.tokens)]  # the watch never changes a token
            at = first_crossing(confs[seq.id], WINDOW, limit)
            if at is None:  # never below: runs to its natural end, exactly the unwatched sample
                assert seq.finish_reason in (T.STOP, T.LENGTH) and seq.tokens == plain.tokens, name
                outcomes[name].append(None)
            else:  # the first full window whose mean is below: the sample ends on that token
                assert seq.finish_reason == T.LOW_CONFIDENCE and len(seq.tokens) == at + 1 >= WINDOW, name
                outcomes[name].append(len(seq.tokens))
    assert outcomes["between"].count(None) == 1  # the sample with the highest lowest mean
    assert outcomes["first window"][0] == WINDOW  # the check starts with the first full window
    assert outcomes["tie"][2] is None  # a window mean equal to the threshold is not below it
    assert runs["between"][1].generated_tokens < free.generated_tokens


def test_recorded_confidences_match_the_model(watched, llm):
    """C_i = −mean of the 20 largest log-probabilities of step i: recomputed from the logits of a
    fresh one-sequence context fed the prompt and then the sample's tokens one by one (not the step
    loop, not sampling.token_logprobs), with a numpy log-softmax."""
    from eager_local.llama import Context, ContextSize

    prompt, free, free_confs, _ = watched
    seq = free.sequences[1]
    ctx = Context(llm.model, ContextSize(cells=256, n_seq_max=1, n_batch=256), n_threads=1)
    try:
        rows = [ctx.prefill(prompt, 0)]  # the logits each generated token was drawn from
        for i, token in enumerate(seq.tokens[:-1]):
            one = ctx.decode([token], np.array([len(prompt) + i], dtype=np.int32), np.zeros(1, dtype=np.int32),
                             np.ones(1, dtype=np.int8))
            rows.append(np.array(one[0], copy=True))
    finally:
        ctx.close()
    logits = np.array(rows, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -np.sort(logp, axis=1)[:, -20:].mean(axis=1)
    assert len(expected) == len(free_confs[1]) == len(seq.tokens) > 10
    np.testing.assert_allclose(free_confs[1], expected, atol=0.0015)  # rounded to 3 decimals


# --- eval end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy.jsonl", TOY)


def eval_args(toy_file, out, *extra):
    return toy_eval_args(toy_file, out, "-M", str(M), "-n", str(N), "--method", "parallel,deepconf-low,deepconf-high", *extra)


@pytest.fixture(scope="module")
def run(toy_file, tmp_path_factory, default_model_path):
    out = tmp_path_factory.mktemp("runs") / "deepconf"
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    return out


def records(run_dir, name):
    return {r["id"]: r for r in store.read_records(run_dir / f"{name}.jsonl")}


def journal(run_dir, name):
    return store.read_records(run_dir / f"{name}.waves.jsonl")


def test_eval_waves_thresholds_and_stops(run):
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["params"]["rivals"]["deepconf-low"] == {"warmup": "auto", "window": "auto", "keep_percent": 10,
                                                           "top_k": 20}
    parallel = records(run, "parallel_M4")
    outcomes = set()
    for name in (LOW, HIGH):
        stats = json.loads((run / f"{name}.stats.json").read_text())
        assert stats["complete"] and stats["rule"]["warmup"] == WARMUP and stats["rule"]["window"] == WINDOW
        assert stats["batches"]["peak_prompts"] > 1  # waves of several prompts share a batch
        recs = records(run, name)
        assert sorted(recs) == [f"q{i}" for i in range(len(TOY))]
        for pid, rec in recs.items():
            warm, final = sorted((w for w in journal(run, name) if w["id"] == pid), key=lambda w: w["round"])
            assert (warm["first_sample"], warm["wave"], final["first_sample"], final["wave"]) == (0, 2, 2, 2)
            mins = [lowest(s["confidences"], WINDOW) for s in warm["sequences"]]
            threshold = np.percentile(mins, PERCENTILE[name])
            assert rec["threshold"] == pytest.approx(threshold, abs=1e-12) == final["threshold"]
            samples = parallel[pid]["sequences"]
            for s, p in zip(warm["sequences"], samples[:2]):  # the warm-up is parallel's first samples
                assert s["text"] == p["text"] and s["finish_reason"] != T.LOW_CONFIDENCE
            for s, p in zip(final["sequences"], samples[2:]):  # the final wave draws parallel's samples 2, 3
                assert len(s["confidences"]) == s["new_tokens"] and p["text"].startswith(s["text"])
                at = first_crossing(s["confidences"], WINDOW, threshold)
                if at is None:
                    assert s["finish_reason"] in (T.STOP, T.LENGTH) and s["text"] == p["text"]
                    outcomes.add("ran")
                else:
                    assert s["finish_reason"] == T.LOW_CONFIDENCE and s["new_tokens"] == at + 1
                    outcomes.add("stopped")
            seqs = warm["sequences"] + final["sequences"]
            assert [s["min_conf"] for s in rec["sequences"]] == pytest.approx([lowest(s["confidences"], WINDOW)
                                                                               for s in seqs])
            assert "confidences" not in rec["sequences"][0]  # they stay in the journal
            assert rec["#T"] == warm["#T"] + final["#T"] == sum(s["new_tokens"] for s in seqs)  # stopped ones too
    assert outcomes == {"ran", "stopped"}


def test_report_shows_deepconf_with_the_weighted_vote(run, tmp_path):
    r = eager("report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    (group,) = json.loads(r.stdout)
    rows = {row["point"]: row for row in group["points"]}
    assert {LOW, HIGH, "parallel_M4"} <= set(rows)
    for name in (LOW, HIGH):
        recs = list(records(run, name).values())
        cons = []
        for rec in recs:
            answers = [extract_answer(s["text"], "numeric") for s in rec["sequences"]]
            weights = [s["min_conf"] if s["min_conf"] is not None and s["min_conf"] >= rec["threshold"] else None
                       for s in rec["sequences"]]
            vote = heaviest(answers, weights)
            cons.append(vote is not None and vote_key(vote) == vote_key(rec["reference"]))
        row = rows[name]
        assert row["cons@k"] == pytest.approx(sum(cons) / len(recs))
        assert row["#T"] == pytest.approx(sum(x["#T"] for x in recs) / len(recs)) and row["#S"] == M
        assert row["complete"] and row["tokens_vs_parallel"] == pytest.approx(row["#T"] / rows["parallel_M4"]["#T"])
    # deepconf-high borrows deepconf-low's warm-up (the same samples): those tokens were spent once.
    borrowed = [w for w in journal(run, HIGH) if w.get("borrowed_from")]
    assert sorted(w["id"] for w in borrowed) == sorted(records(run, LOW)) and all(w["round"] == 1 for w in borrowed)
    low_warm = {w["id"]: w for w in journal(run, LOW) if w["round"] == 1}
    assert all(w["sequences"] == low_warm[w["id"]]["sequences"] and w["borrowed_from"] == "deepconf-low"
               for w in borrowed)
    spent = sum(w["#T"] for name in (LOW, HIGH) for w in journal(run, name) if not w.get("borrowed_from"))
    assert group["budget"]["spent"] == spent + sum(x["#T"] for x in records(run, "parallel_M4").values())
    table = eager("report", str(run)).stdout
    assert "deepconf-low" in table and "deepconf-high" in table and "p90 of the warm-up" in table
    png = tmp_path / "plot.png"
    assert eager("report", str(run), "--plot", str(png)).returncode == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_a_no_op(run, toy_file):
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    r = eager(*eval_args(toy_file, run))
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == before


def test_resume_regenerates_only_the_missing_waves(run, toy_file, tmp_path):
    """A kill after the warm-up: the journal holds round 1 (and a torn line), no merged records. The
    rerun replays the warm-up from the journal, sets the same thresholds, and decodes the final
    waves to the same samples."""
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    for name in (LOW, HIGH):
        (out / f"{name}.jsonl").unlink()
        (out / f"{name}.stats.json").unlink()
        lines = [line for line in (out / f"{name}.waves.jsonl").read_bytes().split(b"\n") if line]
        warm = [line for line in lines if json.loads(line)["round"] == 1]
        final = [line for line in lines if json.loads(line)["round"] == 2]
        (out / f"{name}.waves.jsonl").write_bytes(b"\n".join(warm) + b"\n" + final[0][:50])
    r = eager(*eval_args(toy_file, out))
    assert r.returncode == 0, r.stderr
    for name in (LOW, HIGH):
        old, new = journal(run, name), journal(out, name)
        assert [w for w in new if w["round"] == 1] == [w for w in old if w["round"] == 1]  # not regenerated
        key = lambda w: w["id"]  # noqa: E731
        for a, b in zip(sorted((w for w in old if w["round"] == 2), key=key),
                        sorted((w for w in new if w["round"] == 2), key=key)):
            assert a["threshold"] == b["threshold"]
            assert [(s["text"], s["finish_reason"], s["confidences"]) for s in a["sequences"]] == \
                   [(s["text"], s["finish_reason"], s["confidences"]) for s in b["sequences"]]
        assert len(new) == len(old)
        for pid, rec in records(run, name).items():
            again = records(out, name)[pid]
            assert {k: again[k] for k in ("#T", "#S", "threshold", "deepconf")} == \
                   {k: rec[k] for k in ("#T", "#S", "threshold", "deepconf")}


def test_bad_options(toy_file, tmp_path):
    out = str(tmp_path / "o")
    base = ["eval", "--dataset", str(toy_file), "--problem-field", "question", "--answer-field", "solution",
            "--out", out, "--method", "deepconf-low"]
    one_line_error(eager(*base, "-M", "4", "--deepconf-warmup", "5"), "deepconf-warmup", "4")
    one_line_error(eager(*base, "--deepconf-warmup", "many"), "deepconf-warmup")
    one_line_error(eager(*base, "--deepconf-window", "0"), "deepconf-window")
    one_line_error(eager(*base, "-n", "64", "--deepconf-window", "65"), "deepconf-window", "64")
    assert not os.path.exists(out)
