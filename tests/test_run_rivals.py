"""`eager-local run --method` with eval's wave methods (adaptive-consistency, esc, deepconf-low,
eager-conf) on one prompt, on the real test model, as a user runs it.

Every expected value is recomputed here from `run --method parallel` with the same seed and
options (the waves draw parallel sampling's random streams): the samples' texts, ESC's first
agreeing window, Adaptive-Consistency's Beta tail (numpy quadrature, not the exact sum the code
uses), DeepConf's threshold (np.percentile of the warm-up's lowest group confidences, themselves
recomputed from the recorded per-token confidences), its early stops and the votes.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from cli_helpers import assert_one_line_error as one_line_error, eager
from eager_local.answers import extract_answer, vote_key

THREADS = ["--threads", os.environ["EAGER_LOCAL_THREADS"]] if os.environ.get("EAGER_LOCAL_THREADS") else []
PROMPT = "What is 2 + 2? Answer with a number."
M, N = 8, 32
COMMON = ["-M", str(M), "-n", str(N), "--seed", "55", *THREADS]
WARMUP, WINDOW = 4, 4  # DeepConf's defaults at M = 8 (M // 2) and -n 32 (32 // 8)


def run_json(*args) -> dict:
    r = eager("run", PROMPT, *COMMON, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def parallel(default_model_path):
    return run_json("--method", "parallel")["sequences"]


@pytest.fixture(scope="module")
def ac(default_model_path):
    return run_json("--method", "adaptive-consistency")


@pytest.fixture(scope="module")
def esc(default_model_path):
    return run_json("--method", "esc", "--esc-window", "2")


@pytest.fixture(scope="module")
def deepconf_low(default_model_path):
    return run_json("--method", "deepconf-low")


# --- independent recomputation ---------------------------------------------------------------------
def samples(doc: dict) -> list[dict]:
    """Every sample of every wave, in the order drawn, with its tree sequence's text and tokens."""
    out = []
    for wave in doc["waves"]:
        assert len(wave["samples"]) == len(wave["tree"]["sequences"])
        for sample, seq in zip(wave["samples"], wave["tree"]["sequences"]):
            out.append({**sample, "text": seq["text"], "token_ids": seq["tokens"]})
    return out


def top_two(answers) -> tuple[int, int]:
    sizes = sorted(Counter(vote_key(a) for a in answers if a is not None).values(), reverse=True) + [0, 0]
    return sizes[0], sizes[1]


def beta_tail(a: int, b: int) -> float:
    """∫_{1/2}^1 x^a (1−x)^b dx / ∫_0^1 x^a (1−x)^b dx by the trapezoid rule on a fine grid."""
    x = np.linspace(0.0, 1.0, 200_001)
    f = x**a * (1 - x) ** b
    return float(np.trapezoid(f[100_000:], x[100_000:]) / np.trapezoid(f, x))


def majority(answers):
    counts = Counter(vote_key(a) for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[vote_key(a)] == best)  # ties: first seen


def lowest(confs: list[float], w: int) -> float:
    milli = [round(c * 1000) for c in confs]
    if len(milli) < w:
        return sum(milli) / (1000 * len(milli))
    return min(sum(milli[i - w + 1:i + 1]) for i in range(w - 1, len(milli))) / (1000 * w)


def first_crossing(confs: list[float], w: int, threshold: float) -> int | None:
    milli = [round(c * 1000) for c in confs]
    return next((i for i in range(w - 1, len(milli)) if sum(milli[i - w + 1:i + 1]) / (1000 * w) < threshold), None)


# --- the sampling-only rivals ---------------------------------------------------------------------
def test_the_waves_draw_parallel_samplings_samples(parallel, ac, esc):
    for doc in (ac, esc):
        drawn = samples(doc)
        assert [s["id"] for s in drawn] == list(range(len(drawn)))  # numbered across waves
        assert [s["text"] for s in drawn] == [s["text"] for s in parallel[:len(drawn)]]
        firsts = [w["first_sample"] for w in doc["waves"]]
        assert firsts == [sum(len(w["samples"]) for w in doc["waves"][:i]) for i in range(len(firsts))]
    assert len(ac["waves"]) >= 2  # the prompt is chosen so that AC needs more than one wave


def test_esc_stops_at_the_first_agreeing_window(parallel, esc):
    answers = [extract_answer(s["text"]) for s in parallel]
    windows = [answers[i:i + 2] for i in range(0, M, 2)]
    agree = next((i for i, w in enumerate(windows) if None not in w and len({vote_key(a) for a in w}) == 1), None)
    drawn = samples(esc)
    assert [s["answer"] for s in drawn] == answers[:len(drawn)]
    if agree is None:
        assert (esc["stopped_by"], len(drawn)) == ("cap", M)
    else:
        assert (esc["stopped_by"], len(drawn)) == ("rule", 2 * (agree + 1))
    assert [w["size"] for w in esc["waves"]] == [2] * len(esc["waves"])
    assert esc["vote"] == {"answer": majority(answers[:len(drawn)]), "weighted": False,
                           "voters": sum(a is not None for a in answers[:len(drawn)])}


def test_adaptive_consistency_stops_where_the_beta_tail_reaches_the_threshold(parallel, ac):
    answers = [extract_answer(s["text"]) for s in parallel]
    tails = [beta_tail(*top_two(answers[:n])) for n in range(1, M + 1)]
    stop = next((n for n, p in enumerate(tails, 1) if p >= 0.95), None)
    drawn = samples(ac)
    assert (ac["stopped_by"], len(drawn)) == (("rule", stop) if stop else ("cap", M))
    for wave in ac["waves"]:  # each verdict is the tail after the wave's last sample
        n = wave["first_sample"] + len(wave["samples"])
        assert wave["verdict"]["value"] == pytest.approx(tails[n - 1], abs=1e-6)
        assert wave["verdict"]["stop"] == (tails[n - 1] >= 0.95)
    assert ac["vote"]["answer"] == majority(answers[:len(drawn)])


# --- DeepConf ------------------------------------------------------------------------------------------
def test_deepconf_low_threshold_early_stops_and_vote(parallel, deepconf_low):
    doc = deepconf_low
    drawn = samples(doc)
    assert [w["size"] for w in doc["waves"]] == [WARMUP, M - WARMUP] and doc["stopped_by"] == "cap"
    mins = [lowest(s["confidences"], WINDOW) for s in drawn]
    assert [s["min_conf"] for s in drawn] == pytest.approx(mins)
    threshold = float(np.percentile(mins[:WARMUP], 90))
    assert doc["threshold"] == pytest.approx(threshold) == doc["waves"][1]["threshold"]
    for s, reference in zip(drawn, parallel):
        assert len(s["confidences"]) == len(s["token_ids"])
        crossing = first_crossing(s["confidences"], WINDOW, threshold) if s["wave"] == 2 else None
        if crossing is None:  # the warm-up, and a watched sample that never crossed: parallel's sample
            assert s["finish_reason"] != "low_confidence" and s["token_ids"] == reference["tokens"]
        else:  # stopped at the first crossing, that token kept: a prefix of parallel's sample
            assert s["finish_reason"] == "low_confidence" and len(s["token_ids"]) == crossing + 1
            assert s["token_ids"] == reference["tokens"][:crossing + 1]
    weights = [m if m >= threshold else None for m in mins]
    totals: dict = {}
    for s, w in zip(drawn, weights):
        if s["answer"] is not None and w is not None:
            totals[vote_key(s["answer"])] = totals.get(vote_key(s["answer"]), 0.0) + w
    expected = None
    if totals:
        best = max(totals.values())
        expected = next(s["answer"] for s, w in zip(drawn, weights)
                        if s["answer"] is not None and w is not None and totals[vote_key(s["answer"])] == best)
    assert doc["vote"] == {"answer": expected, "weighted": True, "voters": sum(
        s["answer"] is not None and w is not None for s, w in zip(drawn, weights))}


def test_budget_stops_the_waves(default_model_path):
    doc = run_json("--method", "deepconf-low", "--budget", "20")
    assert doc["stopped_by"] == "budget" and doc["stop"].startswith("budget")
    assert doc["summary"]["generated_tokens"] == 20 and doc["summary"]["budget_left"] == 0
    assert doc["waves"][-1]["samples"] == [] and "budget" in doc["summary"]["finish_reasons"]


# --- eager-conf, the text output, bad input -----------------------------------------------------------
def test_eager_conf_text_shows_waves_branches_vote_and_stop(default_model_path):
    r = eager("run", PROMPT, *COMMON, "--method", "eager-conf", "--theta", "1.0")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("eager-conf (θ 1)") and "── wave 1 · samples #0–#" in out
    assert "forked from #" in out  # EAGer trees: θ = 1 nat branches this small model early
    assert "vote (confidence-weighted, " in out
    assert any(line.startswith("stopped by ") and line.split()[2].rstrip(":") in ("rule", "cap", "budget")
               for line in out.splitlines())


@pytest.mark.parametrize("args, fragment", [
    (["--method", "adaptive-consistency", "--ac-threshold", "2"], "ac-threshold"),
    (["--method", "esc", "--esc-window", "0"], "esc-window"),
    (["--method", "deepconf-low", "--deepconf-warmup", "9"], "deepconf-warmup"),
    (["--method", "deepconf-high", "--deepconf-window", "33"], "deepconf-window"),
    (["--method", "eager-conf", "--ac-threshold", "0.4"], "ac-threshold"),
    (["--method", "majority"], "majority"),
])
def test_bad_options_are_one_line(args, fragment):
    one_line_error(eager("run", PROMPT, *COMMON, *args), fragment)
