"""The `eager-local` command as a user runs it: real processes, real model, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, eager


def test_run_prints_branches_and_summary(default_model_path):
    r = eager("run", "What is 17*23? Put the answer in \\boxed{}.", "--theta", "1.8", "-M", "4", "-n", "48")
    assert r.returncode == 0, r.stderr
    assert "branch #0 · root" in r.stdout
    assert "forked from #" in r.stdout  # θ = 1.8 branches on this prompt with the tiny model
    summary = r.stdout.strip().splitlines()[-1]
    assert "sequences" in summary and "generated tokens" in summary and "tokens/s" in summary


def test_run_json(default_model_path):
    r = eager("run", "What is 2+2?", "--json", "-M", "3", "--theta", "1.5", "-n", "24", "--seed", "3")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["summary"]["sequences"] == len(doc["sequences"]) <= 3
    assert doc["summary"]["generated_tokens"] == doc["generated_tokens"]
    assert all(len(s["tokens"]) == len(s["entropies"]) for s in doc["sequences"])


def test_run_budget_cuts_cleanly(default_model_path):
    r = eager("run", "Count from one to fifty.", "--json", "--budget", "10", "-n", "64", "--theta", "3.5")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["generated_tokens"] == 10
    assert doc["sequences"][0]["finish_reason"] == "budget"


def test_missing_model_file(tmp_path):
    assert_one_line_error(eager("run", "hi", "--model", str(tmp_path / "nope.gguf")), "not found")


def test_text_file_renamed_gguf(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("this is not a model\n" * 10)
    assert_one_line_error(eager("run", "hi", "--model", str(fake)), "not a GGUF")


def test_truncated_gguf(tmp_path, default_model_path):
    cut = tmp_path / "cut.gguf"
    with open(default_model_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(20_000_000))
    assert_one_line_error(eager("run", "hi", "--model", str(cut)), "truncated")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--theta", "-1"], "theta"),
        (["-M", "0"], "max-sequences"),
        (["--theta", "abc"], "theta"),
        (["--temperature", "-0.5"], "temperature"),
        (["--max-new-tokens", "0"], "max-new-tokens"),
        (["--budget", "-5"], "budget"),
    ],
)
def test_nonsense_parameters(default_model_path, args, fragment):
    assert_one_line_error(eager("run", "hi", *args), fragment)


def test_prompt_longer_than_context(default_model_path):
    assert_one_line_error(eager("run", "word " * 9000), "does not fit")


def test_models_list_and_path(default_model_path):
    r = eager("models", "list")
    assert r.returncode == 0 and "smollm2-135m" in r.stdout and "(default)" in r.stdout
    r = eager("models", "path", "smollm2-135m")
    assert r.returncode == 0 and r.stdout.strip() == str(default_model_path)


def test_console_script_is_installed():
    """`pip install -e .` puts `eager-local` beside the interpreter (on PATH in an activated venv)."""
    script = Path(sys.executable).parent / "eager-local"
    found = shutil.which("eager-local") or (str(script) if script.exists() else None)
    assert found, "eager-local console script not installed"
    r = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "run" in r.stdout and "models" in r.stdout
