"""`eval --theta qNN.N / auto` tunes θ on the dataset's problems outside the evaluated selection,
never on the problems it is evaluated on: real processes on the default model.

Each test has its own EAGER_LOCAL_HOME (a profile of its own) and calibrates on 4 problems
(EAGER_LOCAL_CALIBRATION_PROMPTS) with a quantile θ, which needs no check run. arith:N:SEED names
its problems arith-L<level>-<index> (levels 1-5 in turn), and a smaller N is a prefix of a larger N.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, eager
from eager_local.eval.datasets import load_dataset

THREADS = ["--threads", os.environ["EAGER_LOCAL_THREADS"]] if os.environ.get("EAGER_LOCAL_THREADS") else []


def ids(indices) -> list[str]:
    return [f"arith-L{i % 5 + 1}-{i:04d}" for i in indices]


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, EAGER_LOCAL_HOME=str(tmp_path / "home"), EAGER_LOCAL_CALIBRATION_PROMPTS="4")


@pytest.fixture
def tiny(default_model_path):
    """Small settings; the private home has no models, so the cached default GGUF is named."""
    return ["--method", "eager-init", "--theta", "q90", "-M", "4", "-n", "16", "--model", str(default_model_path),
            "--no-progress", *THREADS]


def profile_entries(env) -> list[dict]:
    paths = list((Path(env["EAGER_LOCAL_HOME"]) / "profiles").glob("*.json"))
    return [e for p in paths for e in json.loads(p.read_text())["entries"].values()]


def calibration(out: Path) -> tuple[list[str], dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    (info,) = manifest["theta_calibration"]
    return manifest["problems"], info


def texts(dataset: str, indices) -> list[str]:
    problems = load_dataset(dataset)
    return [problems[i].problem for i in indices]


def test_shards_calibrate_outside_the_whole_selection_and_share_theta(env, tiny, tmp_path):
    outs = [tmp_path / f"shard{i}" for i in range(2)]
    first = eager("eval", "-d", "arith:12:0", "--limit", "4", "--shard", "0/2", *tiny, "-o", str(outs[0]), env=env)
    assert first.returncode == 0, first.stderr
    assert "calibrating θ for task 'arith'" in first.stderr
    evaluated, info = calibration(outs[0])
    assert evaluated == ids([0, 2])
    # outside the evaluated selection (problems 0-3, both shards), in dataset order
    used = info["calibration_problems"]
    assert used["ids"] == ids(range(4, 8)) and used["count"] == 4 and used["not_in_dataset"] == 0
    (entry,) = profile_entries(env)
    assert entry["source"]["problems"] == texts("arith:12:0", range(4, 8)) and len(entry["traces"]) == 4

    second = eager("eval", "-d", "arith:12:0", "--limit", "4", "--shard", "1/2", *tiny, "-o", str(outs[1]), env=env)
    assert second.returncode == 0, second.stderr
    assert "calibrating" not in second.stderr  # the profile is outside this shard's selection too
    evaluated2, info2 = calibration(outs[1])
    assert evaluated2 == ids([1, 3]) and info2["theta"] == info["theta"]
    assert info2["calibration_problems"]["ids"] == ids(range(4, 8))

    report = eager("report", str(outs[0]), str(outs[1]), env=env)
    assert report.returncode == 0, report.stderr
    assert "2 dirs merged" in report.stdout  # same θ: one evaluation
    assert (f"θ {info['theta']:g} calibrated on 4 problem(s) outside the evaluated selection: "
            "arith-L5-0004, arith-L1-0005, arith-L2-0006, arith-L3-0007") in report.stdout


def test_a_profile_recorded_on_evaluated_problems_is_not_used(env, tiny, default_model_path, tmp_path):
    made = eager("calibrate", "--dataset", "arith:12:0", "--limit", "4", "--no-check", "-M", "4", "-n", "16",
                 "--model", str(default_model_path), *THREADS, env=env)
    assert made.returncode == 0, made.stderr
    (entry,) = profile_entries(env)
    assert entry["source"] == {**entry["source"], "dataset": "arith:12:0", "limit": 4, "offset": 0}  # problems 0-3

    out = tmp_path / "run"
    r = eager("eval", "-d", "arith:12:0", "--limit", "4", *tiny, "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert "the saved profile was recorded on 4 of the evaluated problems and is replaced" in r.stderr
    evaluated, info = calibration(out)
    assert evaluated == ids(range(4)) and info["calibration_problems"]["ids"] == ids(range(4, 8))
    assert info["calibrated_now"]
    (entry,) = profile_entries(env)  # the same key: the entry was replaced
    assert entry["source"]["problems"] == texts("arith:12:0", range(4, 8))


def test_too_few_left_warns_and_none_left_refuses(env, tiny, tmp_path):
    # arith:4:0 is evaluated whole: nothing to calibrate on, one line, nothing written
    refused = tmp_path / "refused"
    assert_one_line_error(eager("eval", "-d", "arith:4:0", *tiny, "-o", str(refused), env=env),
                          "no problems of task 'arith' are left outside the evaluated selection", "--limit")
    assert not refused.exists() and profile_entries(env) == []

    # arith:6:0 minus its first 4: 2 problems, fewer than the 4 calibration wants
    few = tmp_path / "few"
    r = eager("eval", "-d", "arith:6:0", "--limit", "4", *tiny, "-o", str(few), env=env)
    assert r.returncode == 0, r.stderr
    assert "warning: only 2 problem(s) outside the evaluated selection to calibrate θ on (calibration wants 4)" in (
        r.stderr)
    _, info = calibration(few)
    assert info["calibration_problems"]["ids"] == ids([4, 5])

    # That profile (problems 4 and 5 of the task) lies outside arith:4:0: now it is used.
    whole = tmp_path / "whole"
    r = eager("eval", "-d", "arith:4:0", *tiny, "-o", str(whole), env=env)
    assert r.returncode == 0, r.stderr
    assert "calibrating" not in r.stderr
    evaluated, info2 = calibration(whole)
    assert evaluated == ids(range(4)) and info2["theta"] == info["theta"]
    assert info2["calibration_problems"] == {**info2["calibration_problems"], "count": 2, "ids": [],
                                             "not_in_dataset": 2}
