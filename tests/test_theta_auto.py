"""--theta auto / qNN.N / -S on `run` and `eval`: real processes on the default model.

Each test has its own EAGER_LOCAL_HOME, so calibration really runs (tiny settings: 24 new tokens,
M = 4) and its profile is written, found again, and redone when stale.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, eager
from eager_local import calibration as C

@pytest.fixture
def env(tmp_path):
    # At 24 new tokens the default would decode 64 calibration prompts (calibration_prompts): the
    # old 8 keep these tests fast; test_calibration checks the default count.
    return dict(os.environ, EAGER_LOCAL_HOME=str(tmp_path / "home"), EAGER_LOCAL_CALIBRATION_PROMPTS="8")


@pytest.fixture
def tiny(default_model_path):
    """Small settings; the private home has no models, so the cached default GGUF is named (same sha256)."""
    return ["-M", "4", "-n", "24", "--model", str(default_model_path)]


def profile_path(env) -> Path:
    (path,) = (Path(env["EAGER_LOCAL_HOME"]) / "profiles").glob("*.json")
    return path


def profile_file(env) -> dict:
    return json.loads(profile_path(env).read_text())


def run_json(prompt, *options, env, tiny):
    result = eager("run", prompt, *tiny, "--json", *options, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_run_theta_auto_calibrates_once_uses_the_profile_and_redoes_a_stale_one(env, tiny):
    doc, err = run_json("What is 12 + 30?", "--theta", "auto", "-S", "2", env=env, tiny=tiny)
    info = doc["theta"]
    assert info["mode"] == "auto" and info["target"] == 2 and info["calibrated_now"]
    assert "calibrating θ for task 'default'" in err and f"θ = {info['theta']:.3f} (auto: target 2 sequences per prompt" in err
    # The generation really used the calibrated θ: the tree records it, and every fork is above it.
    assert doc["settings"]["theta"] == pytest.approx(info["theta"])
    assert all(event["entropy"] > info["theta"] for event in doc["events"])
    (entry,) = profile_file(env)["entries"].values()
    assert entry["key"]["task"] == "default" and entry["key"]["max_new_tokens"] == 24
    assert entry["source"]["prompts"] == 8 and len(entry["traces"]) == 8  # EAGER_LOCAL_CALIBRATION_PROMPTS
    checked = [c for c in entry["checks"] if c["target"] == 2 and c["max_sequences"] == 4]
    assert checked and checked[0]["theta"] == pytest.approx(info["theta"])
    # run/chat check with one seed (the two-minute bound); eval with several (below)
    assert entry["source"]["check_seeds"] == 1 and all("seeds" not in r for r in checked[0]["runs"])

    again, err = run_json("What is 12 + 30?", "--theta", "auto", "-S", "2", env=env, tiny=tiny)
    assert not again["theta"]["calibrated_now"] and again["theta"]["theta"] == info["theta"]
    assert "calibrating" not in err  # the profile was found

    quantile, _ = run_json("What is 12 + 30?", "--theta", "q90", env=env, tiny=tiny)
    assert quantile["theta"]["mode"] == "quantile" and not quantile["theta"]["calibrated_now"]
    assert quantile["theta"]["theta"] == pytest.approx(entry["quantiles"]["q90"], abs=1e-4)

    # A profile written by an older format is stale: recalibrated, not silently used.
    path = profile_path(env)
    stale = json.loads(path.read_text())
    stale["version"] = C.PROFILE_VERSION - 1
    path.write_text(json.dumps(stale))
    redone, _ = run_json("What is 12 + 30?", "--theta", "auto", "-S", "2", env=env, tiny=tiny)
    assert redone["theta"]["calibrated_now"]
    assert profile_file(env)["version"] == C.PROFILE_VERSION


def test_eval_theta_auto_pins_the_calibrated_theta_and_report_shows_the_target(env, tiny, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--dataset", "arith:6:0", "--limit", "3", "--method", "eager-init", "--theta", "auto,2.0", "-S", "2",
            *tiny, "--no-progress", "--out", str(out)]
    first = eager(*args, env=env)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    (calibrated,) = manifest["theta_calibration"]
    assert calibrated["mode"] == "auto" and calibrated["target"] == 2 and calibrated["task"] == "arith"
    assert sorted(manifest["params"]["theta"]) == sorted([2.0, calibrated["theta"]])
    assert (out / f"eager-init_theta{calibrated['theta']:g}_M4.jsonl").exists()
    # eval's check decodes about as many runs as it evaluates prompts (min(EVAL_CHECK_RUNS, 3) = 3):
    # the 3 problems outside the selection, once each
    (entry,) = profile_file(env)["entries"].values()
    assert entry["source"]["check_seeds"] == 1 and len(entry["traces"]) == 3
    assert all("seeds" not in r and len(r["per_prompt"]) == 3 for c in entry["checks"] for r in c["runs"])

    again = eager(*args, env=env)  # the profile is found again: same θ, so the run resumes as a no-op
    assert again.returncode == 0, again.stderr
    assert "calibrating" not in again.stderr

    report = eager("report", str(out), env=env)
    assert report.returncode == 0, report.stderr
    records = [json.loads(line) for line in (out / f"eager-init_theta{calibrated['theta']:g}_M4.jsonl").open()]
    mean_s = sum(r["#S"] for r in records) / len(records)
    assert (f"θ {calibrated['theta']:g} = auto, target 2 sequences per prompt: eager-init reached #S {mean_s:.2f}"
            in report.stdout)


def test_eval_calibrates_on_the_eval_budget(env, default_model_path, tmp_path):
    # Without the override, eval's calibration takes calibration_prompts(for_eval=True): 128 at 8
    # new tokens, where run/chat would take 64 — so all 69 problems outside the selection, not 64. (A
    # quantile θ needs no check run, which keeps this cheap; auto calibrates the same way.)
    env = {k: v for k, v in env.items() if k != C.PROMPTS_ENV}
    out = tmp_path / "run"
    result = eager("eval", "--dataset", "arith:70:0", "--limit", "1", "--method", "eager-init", "--theta", "q99",
                   "-M", "4", "-n", "8", "--model", str(default_model_path), "--no-progress",
                   "--raw", "--prompt-template", "{problem}",  # short prompts: 70 prefills stay cheap
                   "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert C.calibration_prompts(8) == C.MAX_PROMPTS == 64
    (entry,) = profile_file(env)["entries"].values()
    assert "only 69 problem(s) outside the evaluated selection to calibrate θ on (calibration wants 128)" in (
        result.stderr)
    assert len(entry["traces"]) == 69


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "hi", "--theta", "lots"], "theta must be a number (nats), 'auto' or a quantile"),
        (["run", "hi", "--theta", "q120"], "between q0 and q100"),
        (["run", "hi", "-S", "2"], "--target-sequences goes with --theta auto"),
        (["run", "hi", "--theta", "auto", "-S", "0"], "target-sequences must be >= 1"),
        (["eval", "-d", "arith:2", "-o", "x", "--theta", "auto", "-M", "4,8"], "needs a single -M"),
        (["eval", "-d", "arith:2", "-o", "x", "--theta", "2.0", "-S", "2"], "--target-sequences goes with --theta auto"),
        (["eval", "-d", "arith:2", "-o", "x", "--theta", "auto,-1"], "theta must be a number >= 0"),
    ],
)
def test_bad_theta_options_are_one_line_errors(args, fragment, env, tmp_path):
    assert_one_line_error(eager(*args, env=env, cwd=tmp_path), fragment)
    assert not (tmp_path / "x").exists()
