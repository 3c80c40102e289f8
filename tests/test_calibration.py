"""Calibration of θ: maths on known data, profile keys and files on disk, and the real model end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import eager
from eager_local import calibration as C
from eager_local.config import ConfigError, make_config, option_fields, parse_theta_spec
from eager_local.engine import Request
from eager_local.errors import EagerError

LOW, HIGH = 0.5, 2.9  # entropies below / above every θ used in the synthetic tests


# --- quantiles -------------------------------------------------------------------------------------
def test_quantiles_hand_computed():
    # type 7: h = (n-1) p/100; [1,2,3,4] -> q25 at h=0.75 is 1.75, q50 at h=1.5 is 2.5
    assert C.quantiles([4.0, 1.0, 3.0, 2.0], [0, 25, 50, 100]) == [1.0, 1.75, 2.5, 4.0]
    assert C.quantiles([7.0], [0, 50, 99.5]) == [7.0, 7.0, 7.0]
    assert C.quantiles([1.0, math.nan, 3.0], [50]) == [2.0]  # NaN = not computed, dropped


def test_quantiles_match_numpy():
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 0.5, size=1001).tolist()
    levels = [0, 1, 12.5, 50, 90, 99, 99.5, 99.9, 100]
    assert np.allclose(C.quantiles(data, levels), np.percentile(data, levels), rtol=0, atol=1e-12)


def test_quantiles_reject_bad_input():
    with pytest.raises(C.CalibrationError):
        C.quantiles([], [50])
    with pytest.raises(C.CalibrationError):
        C.quantiles([1.0], [101])


def test_calibration_errors_are_user_errors_not_value_errors():
    # the command line reports EagerError as one line; a ValueError is a bug and keeps its traceback
    assert issubclass(C.CalibrationError, EagerError) and not issubclass(C.CalibrationError, ValueError)


# --- the estimator on synthetic traces ---------------------------------------------------------
def est(traces, theta=2.0, m=16, **kw):
    return C.estimate_sequences(traces, theta, m, **kw)


def test_no_entropy_above_theta_gives_one_sequence():
    assert est([[[LOW] * 50, [LOW] * 30]]) == 1.0


def test_all_above_theta_doubles_each_step_up_to_the_cap():
    # Every live sequence branches at every step: 2^L sequences after L steps, capped at M.
    assert est([[[HIGH] * 3]], m=16) == 8.0
    assert est([[[HIGH] * 10]], m=5) == 5.0
    assert est([[[HIGH] * 1]], m=16) == 2.0  # branch at the only step, then both end
    assert est([[[HIGH] * 10]], m=1) == 1.0


def test_one_spike_gives_two_and_two_spikes_give_four():
    one = [LOW] * 5 + [HIGH] + [LOW] * 5
    two = [LOW] * 2 + [HIGH] + [LOW] * 3 + [HIGH] + [LOW] * 3
    assert est([[one]]) == 2.0
    assert est([[two]]) == 4.0  # parent and child both meet the second spike
    assert est([[two]], m=3) == 3.0


def test_branch_window_closes_branching():
    trace = [HIGH] + [LOW] * 9 + [HIGH] + [LOW] * 3  # spikes at steps 0 and 10
    # The engine closes branching once W steps in a row passed without a branch: steps 1..9 are
    # 9 such steps, so the spike at 10 still branches with W = 10 but not with W = 9.
    assert est([[trace]], branch_window=5) == 2.0
    assert est([[trace]], branch_window=9) == 2.0
    assert est([[trace]], branch_window=10) == 4.0
    # From the start: a first spike at step 3 comes after 3 steps without a branch.
    late = [LOW] * 3 + [HIGH] + [LOW] * 2
    assert est([[late]], branch_window=3) == 1.0
    assert est([[late]], branch_window=4) == 2.0


def test_children_resample_the_prompts_traces():
    # Root follows A (one spike at 0) or B (none) with probability 1/2: E[#S] = 1.5.
    a, b = [HIGH] + [LOW] * 4, [LOW] * 5
    value = est([[a, b]], replicates=4000)
    assert abs(value - 1.5) < 0.05, value
    # A spike late in a trace is reached only by branches that resample a trace long enough:
    # root on A branches at 0; child follows A or B from step 1; A' has a spike at 3, B' is short.
    a2 = [HIGH, LOW, LOW, HIGH, LOW]
    b2 = [LOW, LOW]
    # Root A (1/2): branch at 0 -> 2; parent meets the spike at 3 -> +1; the child too if it drew A (1/2).
    # E = 1/2 * (3 + 1/2) + 1/2 * 1 = 2.25
    value = est([[a2, b2]], replicates=8000)
    assert abs(value - 2.25) < 0.06, value


def test_mean_over_prompts_and_monotone_in_theta():
    assert est([[[LOW] * 4], [[HIGH] * 3]], m=16) == 4.5
    rng = np.random.default_rng(0)
    traces = [[rng.uniform(0, 3, size=60).tolist() for _ in range(3)] for _ in range(4)]
    values = [est(traces, theta=t, m=8) for t in (1.0, 2.0, 2.5, 2.8, 2.95)]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_theta_for_target_by_bisection():
    trace = [2.8, 2.4, 1.9, 1.0, 0.2]  # θ in [2.4, 2.8): 2 seqs; [1.9, 2.4): 4; [1.0, 1.9): 8
    theta, predicted = C.theta_for_target([[trace]], 4, 16, top_k_entropy=20)
    assert 1.9 <= theta < 2.4 and predicted == 4.0
    theta, predicted = C.theta_for_target([[trace]], 2, 16, top_k_entropy=20)
    assert 2.4 <= theta < 2.8 and predicted == 2.0
    # Unreachable: even θ = 0 gives 2^5 = 32 > 16 … capped at 16; a target of 64 returns θ = 0.
    assert C.theta_for_target([[trace]], 64, 16, top_k_entropy=20) == (0.0, 16.0)
    assert C.theta_for_target([[trace]], 1, 16, top_k_entropy=20)[0] == pytest.approx(math.log(20))


def test_interpolate_theta_between_two_real_runs():
    # log-linear: 12 -> 3 over 0.2 nats; 6 is halfway in log #S
    assert C.interpolate_theta(2.4, 12.0, 2.6, 3.0, 6.0) == pytest.approx(2.5)
    assert C.interpolate_theta(2.6, 3.0, 2.4, 12.0, 6.0) == pytest.approx(2.5)
    assert C.interpolate_theta(2.4, 12.0, 2.6, 7.0, 6.0) is None  # both above the target: no bracket
    assert C.interpolate_theta(2.4, 12.0, 2.4, 3.0, 6.0) is None


def test_measured_theta_pools_real_runs():
    assert C.estimator._non_increasing([1.0, 3.0, 2.0]) == [2.0, 2.0, 2.0]
    assert C.estimator._non_increasing([3.0, 1.0, 2.0]) == [3.0, 1.5, 1.5]
    # (2.4, 12) and (2.5, 5) bracket 6: f = ln(12/6) / ln(12/5)
    expected = 2.4 + math.log(2) / math.log(12 / 5) * 0.1
    assert C.measured_theta([(2.6, 3.0), (2.4, 12.0), (2.5, 5.0)], 6.0) == pytest.approx(expected)
    # noise makes #S rise with θ: pooled to [12, 4, 4] first
    assert C.measured_theta([(2.4, 12.0), (2.5, 3.0), (2.6, 5.0)], 6.0) == pytest.approx(2.4 + math.log(2) / math.log(3) * 0.1)
    assert C.measured_theta([(2.4, 12.0), (2.5, 9.0)], 6.0) is None
    assert C.measured_theta([(2.4, 12.0)], 12.0) is None


def test_corrected_theta_scales_the_estimate_to_the_real_run():
    trace = [2.8, 2.4, 1.9, 1.0, 0.2]  # estimate: θ in [2.4, 2.8) -> 2, [1.9, 2.4) -> 4, [1.0, 1.9) -> 8
    # A real run at θ = 2.0 (estimate 4) reached 8: the estimator is low by 2x, so target 4 needs
    # the θ the estimator gives 2 for.
    theta, ratio = C.corrected_theta([[trace]], 2.0, 8.0, 4, 16, top_k_entropy=20)
    assert ratio == pytest.approx(2.0) and 2.4 <= theta < 2.8
    # It reached 2: the estimator is high by 2x, target 4 needs the estimator's 8.
    theta, ratio = C.corrected_theta([[trace]], 2.0, 2.0, 4, 16, top_k_entropy=20)
    assert ratio == pytest.approx(0.5) and 1.0 <= theta < 1.9
    # Exactly on target: the θ found has the same estimate as the run's.
    theta, ratio = C.corrected_theta([[trace]], 2.0, 4.0, 4, 16, top_k_entropy=20)
    assert ratio == pytest.approx(1.0) and 1.9 <= theta < 2.4
    # A run with no branching, or every prompt at the cap, says nothing about the level.
    assert C.corrected_theta([[trace]], 2.0, 1.0, 4, 16, top_k_entropy=20) is None
    assert C.corrected_theta([[trace]], 2.0, 16.0, 4, 16, top_k_entropy=20) is None
    assert C.corrected_theta([[trace]], 2.9, 3.0, 4, 16, top_k_entropy=20) is None  # estimate 1 at θ


def test_choose_theta_interpolates_corrects_or_keeps_the_run():
    trace = [2.8, 2.4, 1.9, 1.0, 0.2]  # estimate: 2 in [2.4, 2.8), 4 in [1.9, 2.4), 8 in [1.0, 1.9)

    def run(theta, achieved, stderr):
        return {"theta": theta, "achieved": achieved, "stderr": stderr, "predicted": 4.0}

    def choose(runs, measured=()):
        return C.choose_theta([[trace]], runs, list(measured), 4, 16, top_k_entropy=20)

    # Missed by more than its standard error: the run's level corrects the estimate (8 / 4 = 2x).
    chosen = choose([run(2.0, 8.0, 1.0)])
    assert chosen["corrected"] and chosen["ratio"] == 2.0 and 2.4 <= chosen["theta"] <= 2.8  # rounded to 4 places
    assert chosen["measured_theta"] == 2.0 and chosen["measured"] == 8.0 and chosen["achieved"] is None
    # Within one standard error: no evidence against the estimate, the run's θ and mean are kept.
    assert choose([run(2.0, 5.0, 2.0)]) == {"theta": 2.0, "predicted": 4.0, "achieved": 5.0}
    # Refined, and the two runs bracket the target: interpolated in log #S (8 -> 2: halfway is 4).
    chosen = choose([run(2.0, 8.0, 1.0), run(2.6, 2.0, 0.5)])
    assert chosen["interpolated"] and chosen["theta"] == pytest.approx(2.3)
    # Refined but not bracketing: the closer run corrects the estimate.
    chosen = choose([run(2.0, 9.0, 1.0), run(2.2, 6.0, 1.0)])
    assert chosen["corrected"] and chosen["measured_theta"] == 2.2 and chosen["ratio"] == 1.5


def test_calibration_prompts_follow_the_token_budget(monkeypatch):
    monkeypatch.delenv(C.PROMPTS_ENV, raising=False)
    assert C.calibration_prompts(512) == 8  # the defaults: under two minutes
    assert C.calibration_prompts(96) == 42  # 8192 // (2 x 96)
    assert C.calibration_prompts(96, samples=1) == 64  # capped
    assert C.calibration_prompts(4096) == C.MIN_PROMPTS
    # eval calibrates on four times the tokens, up to 128 prompts
    assert C.calibration_prompts(512, for_eval=True) == 32
    assert C.calibration_prompts(160, for_eval=True) == 102
    assert C.calibration_prompts(96, for_eval=True) == C.EVAL_MAX_PROMPTS == 128
    assert C.calibration_prompts(4096, for_eval=True) == C.MIN_PROMPTS
    monkeypatch.setenv(C.PROMPTS_ENV, "3")
    assert C.calibration_prompts(96) == 3
    assert C.calibration_prompts(96, for_eval=True) == 3
    for bad in ("0", "many"):
        monkeypatch.setenv(C.PROMPTS_ENV, bad)
        with pytest.raises(C.CalibrationError, match=C.PROMPTS_ENV):
            C.calibration_prompts(96)


def test_check_seeds_reach_the_run_count():
    # eval asks for EVAL_CHECK_RUNS runs: 2 seeds at 128 prompts, 3 at 102, capped at 4 (32 prompts)
    assert C.check_seed_count(128, C.EVAL_CHECK_RUNS) == 2
    assert C.check_seed_count(102, C.EVAL_CHECK_RUNS) == 3
    assert C.check_seed_count(32, C.EVAL_CHECK_RUNS) == C.MAX_CHECK_SEEDS == 4
    assert C.check_seed_count(300, C.EVAL_CHECK_RUNS) == 1
    assert C.check_seed_count(8) == C.check_seed_count(8, None) == 1  # run/chat: one seed


def test_default_targets():
    assert C.default_targets(8) == [2, 4, 8]
    assert C.default_targets(12) == [2, 4, 8, 12]
    assert C.default_targets(1) == []


def test_theta_spec_parsing():
    assert parse_theta_spec("2.4") == ("number", 2.4)
    assert parse_theta_spec("auto") == ("auto", None)
    assert parse_theta_spec("q99.5") == ("quantile", 99.5)
    for bad in ("q101", "fast", "-1", "nan"):
        with pytest.raises(ConfigError):
            parse_theta_spec(bad)


def test_task_of_dataset():
    assert C.task_of_dataset(None) == "default"
    assert C.task_of_dataset("arith:20:1") == C.task_of_dataset("arith") == "arith"
    assert C.task_of_dataset("GSM8K") == "gsm8k"
    assert C.task_of_dataset("arith:8:0:1-2") == "arith"
    assert C.task_of_dataset("my.jsonl") == "file:" + str(Path("my.jsonl").resolve())


# --- profile keys ---------------------------------------------------------------------------------
def make_key(model_sha256="ab" * 32, prompt_format="chat:0123456789ab", task="arith", **options):
    return C.CalibrationKey.of(model_sha256, make_config(**{"max_new_tokens": 96, **options}), prompt_format, task)


# Ids written by the code that wrote users' existing profiles (computed with it, from the same
# settings): an entry is looked up by its id, so a changed id would orphan every saved profile.
SAVED_KEY_IDS = {
    "defaults, -n 96": ({}, "692946fa7c1a5b53"),
    "every entropy option changed": (dict(top_k_entropy=10, temperature=0.8, tempered_entropy=True, top_k=40,
                                          top_p=0.9, min_p=0.05, prompt_format="raw:0123456789ab", task="gsm8k"),
                                     "3347630d5079599c"),
}


@pytest.mark.parametrize("name", sorted(SAVED_KEY_IDS))
def test_key_ids_are_those_of_saved_profiles(name):
    changes, saved = SAVED_KEY_IDS[name]
    assert make_key(**changes).id() == saved


def test_key_ids_of_the_real_model_are_those_of_saved_profiles(llm):
    # model sha256 and the GGUF's chat template hash included; an int temperature names the same setting
    key = C.make_key(llm, llm.config(max_new_tokens=96), C.PromptFormat(chat=True), "default")
    assert key.id() == "59553e365035ae2a" and key.prompt_format == "chat:5a6b5d65c24b"
    raw = C.make_key(llm, llm.config(temperature=1), C.PromptFormat(chat=False, template="Q: {problem}"), "arith")
    assert raw.id() == "49c77b07b50c81a7" and raw.prompt_format == "raw:04f8880e44c0"


def _changed(value):
    """Another valid value of an option: a flipped switch, a larger int, a smaller positive float."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value * 0.5 if value > 0 else 0.05


def test_every_entropy_option_and_only_those_change_the_key():
    # config.py's `entropy` flag says which options the recorded entropies depend on; an option
    # added there with entropy=True must split profiles without any change to calibration.
    base = make_config()
    flat = base.flat()
    for f in option_fields():
        value = flat[f.name]
        if value is None or isinstance(value, str):  # method, end_of_thinking: no numeric change to make
            continue
        other = base.with_options(**{f.name: _changed(value)})
        changed = C.CalibrationKey.of("ab" * 32, other, "chat:x", "t") != C.CalibrationKey.of("ab" * 32, base, "chat:x", "t")
        assert changed == f.metadata["entropy"], f.name


# --- profiles on disk ----------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(tmp_path))
    return tmp_path


def test_profile_round_trip(home):
    entry = C.Calibration(key=make_key(), traces=[[[0.1, 2.5, math.nan], [1.0]], [[0.3, 0.4]]],
                          source={"dataset": "arith:8:0"}, created="now",
                          checks=[{"target": 4, "max_sequences": 8, "branch_window": 1000, "theta": 2.1,
                                   "predicted": 4.1, "achieved": 3.9, "runs": [], "refined": False}])
    path = C.save_entry(entry)
    assert path == home / "profiles" / ("ab" * 8 + ".json") and path.exists()
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file
    back = C.load_entry(make_key())
    assert back.key == entry.key and back.source == entry.source and back.checks == entry.checks
    assert back.traces[0][0][:2] == [0.1, 2.5] and math.isnan(back.traces[0][0][2])
    assert back.theta_for(4, 8, 1000)[0] == 2.1  # the checked θ is what auto uses
    # A second entry (other K) lives in the same file beside the first.
    C.save_entry(C.Calibration(key=make_key(top_k_entropy=10), traces=[[[0.2]]], source={}))
    assert C.load_entry(make_key()) is not None and C.load_entry(make_key(top_k_entropy=10)) is not None


def test_a_profile_saved_by_earlier_versions_is_found(home):
    # The file as the pre-redesign code wrote it: the key a flat object with these field names.
    old_key = {"model_sha256": "ab" * 32, "top_k_entropy": 20, "temperature": 0.6, "max_new_tokens": 96,
               "prompt_format": "chat:0123456789ab", "task": "arith", "tempered_entropy": False, "top_k": 0,
               "top_p": 1.0, "min_p": 0.0, "version": 1}
    check = {"target": 2, "max_sequences": 8, "branch_window": 1000, "theta": 2.5, "runs": []}
    doc = {"format": "eager_local.calibration", "version": 1, "model_sha256": "ab" * 32,
           "entries": {"692946fa7c1a5b53": {"key": old_key, "created": "then", "source": {}, "timing": {},
                                            "quantiles": {}, "checks": [check], "traces": [[[0.5, None]]]}}}
    path = home / "profiles" / ("ab" * 8 + ".json")
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    entry = C.load_entry(make_key())
    assert entry is not None and entry.created == "then" and entry.theta_for(2, 8, 1000)[0] == 2.5
    assert entry.top_k_entropy == 20 and math.isnan(entry.traces[0][0][1])
    C.save_entry(entry)  # written back in the same form
    assert json.loads(path.read_text())["entries"]["692946fa7c1a5b53"]["key"] == old_key


def test_mismatched_or_stale_profiles_are_not_used(home):
    C.save_entry(C.Calibration(key=make_key(), traces=[[[0.1]]], source={}))
    for other in (make_key(top_k_entropy=10), make_key(temperature=0.8), make_key(max_new_tokens=128),
                  make_key(prompt_format="raw:0123456789ab"), make_key(task="gsm8k")):
        assert C.load_entry(other) is None
    assert C.load_entry(make_key(model_sha256="cd" + "ab" * 31)) is None  # same file name, other model
    path = C.profile_path("ab" * 32)
    doc = json.loads(path.read_text())
    doc["version"] = C.PROFILE_VERSION - 1  # an older profile format
    path.write_text(json.dumps(doc))
    assert C.load_entry(make_key()) is None
    path.write_text("{ not json")
    assert C.load_entry(make_key()) is None


# --- the real model ------------------------------------------------------------------------------
def tiny(llm, **options):
    """A run's config with small settings: cheap calibrations."""
    return llm.config(**{"max_sequences": 4, "max_new_tokens": 24, **options})


def test_resolve_theta_auto_calibrates_then_reuses_and_recalibrates_when_stale(llm, home):
    theta, info = C.resolve_theta("auto", llm, tiny(llm), target_sequences=2, dataset_hint="arith:2:0",
                                  calibrate_prompts=2)
    assert info["calibrated_now"] and info["mode"] == "auto" and info["target"] == 2
    path = home / "profiles" / (C.model_sha256(llm)[:16] + ".json")
    assert str(path) == info["profile"] and path.exists()
    doc = json.loads(path.read_text())
    (entry,) = doc["entries"].values()
    assert len(entry["traces"]) == 2 and all(len(p) == C.DEFAULT_SAMPLES for p in entry["traces"])
    assert all(0 < len(t) <= 24 for p in entry["traces"] for t in p)

    # The check's real runs, redone through the public API (same prompts, seed, M): same #S per
    # prompt. The θ used is the one the check kept, and what info says about it holds for those runs.
    (check,) = entry["checks"]
    assert check["target"] == 2 and check["max_sequences"] == 4 and theta == check["theta"]
    problems = C.dataset_problems("arith:2:0", limit=2)
    api_mean = {}
    for run in check["runs"]:
        trees = llm.generate(problems, theta=run["theta"], max_sequences=4, max_new_tokens=24, seed=55)
        assert [len(t.sequences) for t in trees] == run["per_prompt"], run
        api_mean[run["theta"]] = float(np.mean([len(t.sequences) for t in trees]))
    if info["achieved_on_calibration"] is not None:  # the θ of a real run, kept as measured
        assert info["achieved_on_calibration"] == pytest.approx(api_mean[theta])
    elif info["corrected"]:  # a real run's level applied along the estimate
        assert info["measured_on_calibration"] == pytest.approx(api_mean[info["measured_theta"]])
        assert 1 < info["measured_on_calibration"] < 4  # strictly between "no branching" and the cap M
    else:  # between two real runs that bracket the target
        assert info["interpolated"] and len(api_mean) == 2
        (lo, s_lo), (hi, s_hi) = sorted(api_mean.items())
        assert lo <= theta <= hi and s_hi <= 2 <= s_lo

    again, info2 = C.resolve_theta("auto", llm, tiny(llm), target_sequences=2, dataset_hint="arith:5:9",
                                   calibrate_prompts=2)
    assert not info2["calibrated_now"] and again == theta  # same family, same settings: reused

    # A quantile of every recorded entropy (numpy's percentile over the saved traces, 4 decimals).
    q, info3 = C.resolve_theta("q90", llm, tiny(llm), dataset_hint="arith", calibrate_prompts=2)
    recorded = [h for p in entry["traces"] for t in p for h in t if h is not None]
    assert not info3["calibrated_now"] and q == pytest.approx(np.percentile(recorded, 90), abs=1e-4)

    _, info4 = C.resolve_theta("auto", llm, tiny(llm, temperature=0.8), target_sequences=2, dataset_hint="arith",
                               calibrate_prompts=2)
    assert info4["calibrated_now"]  # other temperature: recalibrated, not reused
    _, info5 = C.resolve_theta("q50", llm, tiny(llm, top_k_entropy=10), dataset_hint="arith", calibrate_prompts=2)
    assert info5["calibrated_now"] and info5["theta"] <= math.log(10)
    assert len(json.loads(path.read_text())["entries"]) == 3
    # Options the entropies do not depend on share the profile (θ, the seed, the dynamic threshold).
    _, info6 = C.resolve_theta("q50", llm, tiny(llm, theta=1.0, seed=3, dynamic_threshold=True),
                               dataset_hint="arith", calibrate_prompts=2)
    assert not info6["calibrated_now"]

    assert C.resolve_theta("2.2", llm, tiny(llm)) == (2.2, {"spec": "2.2", "mode": "fixed", "theta": 2.2})


def test_an_interrupted_check_keeps_the_recording(llm, home, monkeypatch):
    """The traces are saved before the check runs: Ctrl-C in the check loses only the check, and the
    next resolve_theta checks from the saved traces instead of recording them again."""
    from eager_local.calibration import resolve as R

    real_check = R.run_check

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "run_check", interrupted)  # failure injection: Ctrl-C during the check
    with pytest.raises(KeyboardInterrupt):
        C.resolve_theta("auto", llm, tiny(llm), target_sequences=2, dataset_hint="arith:2:0", calibrate_prompts=2)
    path = home / "profiles" / (C.model_sha256(llm)[:16] + ".json")
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert len(entry["traces"]) == 2 and not entry.get("checks")

    def no_recording(*args, **kwargs):
        raise AssertionError("the saved traces should have been used")

    monkeypatch.setattr(R, "run_check", real_check)
    monkeypatch.setattr(R, "record_traces", no_recording)
    theta, info = C.resolve_theta("auto", llm, tiny(llm), target_sequences=2, dataset_hint="arith:2:0",
                                  calibrate_prompts=2)
    assert not info["calibrated_now"] and info["target"] == 2
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert entry["traces"] and [c["target"] for c in entry["checks"]] == [2] and theta == entry["checks"][0]["theta"]


def test_recorded_traces_are_every_steps_entropy(llm):
    """The traces are what EAGer-init computes when it may branch at every step but cannot (θ above
    ln K, a window longer than the generation): the same runs' entropies, token for token."""
    tokens = [llm.prompt_tokens("What is 2 + 2?"), llm.prompt_tokens("Name a colour.")]
    traces, generated, _ = C.record_traces(llm, tokens, llm.config(max_new_tokens=12), samples=2)
    assert len(traces) == 2 and all(len(p) == 2 for p in traces)
    requests = [Request(tokens=t, index=C.decode.RECORD_INDEX_OFFSET + p * 2 + s)
                for p, t in enumerate(tokens) for s in range(2)]
    never = llm.config(max_new_tokens=12, theta=math.log(20) + 1, max_sequences=2, branch_window=13)
    trees = llm.generate_requests(requests, never)
    assert all(len(t.sequences) == 1 for t in trees)
    assert [t for p in traces for t in p] == [t.sequences[0].entropies for t in trees]
    assert generated == sum(t.generated_tokens for t in trees)
    assert not any(math.isnan(h) for p in traces for t in p for h in t)
    assert C.PromptFormat(chat=True).key(llm.model.chat_template()) != C.PromptFormat(chat=False).key(None)


def test_a_check_with_seeds_is_the_runs_of_each_seed(llm):
    """seeds=2 runs every prompt with seed and seed + 1 in one batch: per seed, what a one-seed check
    with that seed gives (what `eval --seed` gives), and the mean over the prompts' means."""
    prompts = ["What is 23 + 19?", "What is 71 - 38?", "Name a colour.", "What is 9 * 7?"]
    tokens = [llm.prompt_tokens(p) for p in prompts]
    both = C.check_theta(llm, tokens, llm.config(max_new_tokens=16, max_sequences=4, seed=55), 2.4, seeds=2)
    one = [C.check_theta(llm, tokens, llm.config(max_new_tokens=16, max_sequences=4, seed=s), 2.4) for s in (55, 56)]
    assert one[0]["per_prompt"] != one[1]["per_prompt"]  # the seeds differ, so the mapping is tested
    assert both["seeds"] == 2 and both["per_seed"] == [r["achieved"] for r in one]
    pairs = zip(one[0]["per_prompt"], one[1]["per_prompt"])
    assert both["per_prompt"] == [pytest.approx((a + b) / 2) for a, b in pairs]
    assert both["achieved"] == pytest.approx(np.mean(both["per_prompt"]), abs=1e-3)
    assert both["stderr"] == pytest.approx(np.std(both["per_prompt"], ddof=1) / 2, abs=1e-3)
    assert both["tokens"] == one[0]["tokens"] + one[1]["tokens"]
    assert "seeds" not in one[0] and all(isinstance(c, int) for c in one[0]["per_prompt"])


def test_cli_calibrate_default_model(default_model_path, home, monkeypatch):
    import os

    env = dict(os.environ, EAGER_LOCAL_HOME=str(home), EAGER_LOCAL_THREADS=os.environ.get("EAGER_LOCAL_THREADS", "1"))
    threads = env["EAGER_LOCAL_THREADS"]
    r = eager("calibrate", "--model", str(default_model_path), "--dataset", "arith:3:0", "--limit", "3",
              "-M", "4", "-S", "2", "-n", "24", "--threads", threads, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "entropy quantiles" in out and "q99.5" in out
    assert "checked target 2" in out and "achieved" in out
    # --dataset checks as eval does: enough seeds for EVAL_CHECK_RUNS runs, here the cap of 4
    assert "precision: ±" in out and "standard error of the mean #S over 3 prompts x 4 seeds" in out
    assert "4 seeds per prompt; each seed's mean #S: " in out
    assert f"profile written to {home / 'profiles'}" in out
    written = list((home / "profiles").glob("*.json"))
    assert len(written) == 1
    doc = json.loads(written[0].read_text())
    (entry,) = doc["entries"].values()
    assert entry["key"]["task"] == "arith" and entry["key"]["max_new_tokens"] == 24
    assert entry["checks"][0]["target"] == 2 and entry["checks"][0]["max_sequences"] == 4
    assert entry["source"]["check_seeds"] == 4
    assert all(r["seeds"] == 4 and len(r["per_seed"]) == 4 for r in entry["checks"][0]["runs"])

    bad = eager("calibrate", "--model", str(default_model_path), "--dataset", "arith", "--prompts", "x.txt", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 1
    bad = eager("calibrate", "--model", str(default_model_path), "-M", "4", "-S", "9", env=env)
    assert bad.returncode == 2 and "target-sequences" in bad.stderr
    bad = eager("calibrate", "--model", str(default_model_path), "--check-seeds", "0", env=env)
    assert bad.returncode == 2 and "check-seeds must be >= 1" in bad.stderr
    bad = eager("calibrate", "--model", str(default_model_path), "--prompts", str(home / "none.txt"), env=env)
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_describe_theta_says_how_the_auto_theta_was_found():
    from eager_local.cli import describe_theta

    base = {"mode": "auto", "target": 4}
    assert describe_theta({**base, "achieved_on_calibration": 4.62}) == (
        "auto: target 4 sequences per prompt, 4.62 on the calibration prompts")
    assert describe_theta({**base, "achieved_on_calibration": None, "corrected": True,
                           "measured_on_calibration": 4.98, "measured_theta": 2.6125}) == (
        "auto: target 4 sequences per prompt, corrected from 4.98 on the calibration prompts at θ 2.612")
    assert describe_theta({**base, "achieved_on_calibration": None, "interpolated": True}) == (
        "auto: target 4 sequences per prompt")
    assert describe_theta({"mode": "quantile", "quantile": 99.5}) == "q99.5 of the model's top-K entropies"


def test_cli_calibrate_dataset_counts_prompts_as_eval_does(default_model_path, home):
    # --dataset makes eval's profile, so without --limit it decodes eval's count: 128 at -n 8, where
    # run/chat's would be 64 — all 70 problems here.
    import os

    env = {k: v for k, v in os.environ.items() if k != C.PROMPTS_ENV}
    env.update(EAGER_LOCAL_HOME=str(home), EAGER_LOCAL_THREADS=os.environ.get("EAGER_LOCAL_THREADS", "1"))
    r = eager("calibrate", "--model", str(default_model_path), "--dataset", "arith:70:0", "-M", "4", "-n", "8",
              "--raw", "--prompt-template", "{problem}", "--no-check", "--json", env=env)  # short prompts: cheap
    assert r.returncode == 0, r.stderr
    assert C.calibration_prompts(8) == 64
    doc = json.loads(r.stdout)
    assert doc["source"]["prompts"] == 70
