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
    # A raw count the test model continues far past 10 tokens on any CPU, so only the budget ends it.
    r = eager("run", "--raw", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "--json", "--budget", "10", "-n", "64", "--theta", "3.5")
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
    assert r.returncode == 0 and "(default)" in r.stdout
    listed = {line.split()[1]: line for line in r.stdout.splitlines() if line[:1] in "* " and line[2:3].strip()}
    assert "(default)" in listed["qwen2.5-coder-1.5b"]
    assert "$EAGER_LOCAL_MODEL" in listed["smollm2-135m"]  # the suite's test model (conftest)
    r = eager("models", "path", "smollm2-135m")
    assert r.returncode == 0 and r.stdout.strip() == str(default_model_path)


def test_console_script_is_installed():
    """`pip install -e .` puts `eager-local` beside the interpreter (on PATH in an activated venv)."""
    script = Path(sys.executable).parent / "eager-local"
    found = shutil.which("eager-local") or (str(script) if script.exists() else None)
    assert found, "eager-local console script not installed"
    r = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "run" in r.stdout and "models" in r.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-M", "4,abc"], "max-sequences: 'abc' is not an integer"),
        (["--theta", "auto,2.0", "-M", "4,8"], "needs a single -M"),
        (["--theta", "2.0", "-S", "3"], "--target-sequences goes with --theta auto"),
        (["--method", "eager,beam"], "unknown method 'beam'"),
        (["--ids", "@missing-ids.txt"], "cannot read ids file"),
    ],
)
def test_eval_refuses_nonsense_before_loading_anything(tmp_path, args, fragment):
    r = eager("eval", "-d", "arith:8", "--out", str(tmp_path / "run"), *args, cwd=tmp_path)
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "run").exists()


def test_every_config_option_is_a_flag_of_every_generating_command():
    """config.py is the one definition: each of its command-line options is an option of run,
    chat and eval under the field's own name and flags."""
    from eager_local.cli import cli
    from eager_local.config import option_fields

    for name in ("run", "chat", "eval"):
        params = {p.name: p for p in cli.commands[name].params}
        for f in option_fields():
            if not f.metadata["cli"]:
                assert f.name not in params, (name, f.name)
                continue
            if name == "eval" and f.name == "method":
                continue  # eval's --method is a comma list of the evaluation methods
            assert f.name in params, (name, f.name)
            assert set(f.metadata["flags"]) <= set(params[f.name].opts) | set(params[f.name].secondary_opts)


BUG = """
import sys
import eager_local.cli.options as options

def broken(**flat):
    raise {error}

options.make_config = broken  # config_from_options builds every command's config through it
from eager_local.cli import main
main(["run", "hi", "-n", "4"])
"""


@pytest.mark.parametrize("error", ['ValueError("operands could not be broadcast")', "IndexError('index 3 is out of "
                                   "bounds')", "OSError(28, 'No space left on device')"])
def test_a_bug_is_not_disguised_as_bad_input(error):
    """Only the project's own errors (and a missing or unreadable file) become one line and exit 2:
    a ValueError, an IndexError or a full disk on the run path shows its traceback."""
    r = subprocess.run([sys.executable, "-c", BUG.format(error=error)], capture_output=True, text=True, timeout=120)
    assert r.returncode not in (0, 2), (r.returncode, r.stderr)
    assert "Traceback" in r.stderr and error.split("(")[0] in r.stderr.splitlines()[-1]
