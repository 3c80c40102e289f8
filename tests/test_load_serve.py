"""scripts/load_serve.py: the completion-token recount that makes servers comparable (each choice's
text, tokenized by the real model's tokenizer), and which text of a choice it counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "load_serve.py"


@pytest.fixture(scope="module")
def load_serve():
    spec = importlib.util.spec_from_file_location("load_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choice_text_takes_a_chat_message_or_a_completion_text(load_serve):
    assert load_serve.choice_text({"message": {"role": "assistant", "content": "4"}}) == "4"
    assert load_serve.choice_text({"message": {"reasoning_content": "2+2 ", "content": "is 4"}}) == "2+2 is 4"
    assert load_serve.choice_text({"message": {"role": "assistant", "content": None}}) == ""
    assert load_serve.choice_text({"text": " 4"}) == " 4"


def test_recount_counts_every_choice(load_serve, default_model_path):
    path = str(default_model_path)
    assert load_serve.recount_tokens([], path) == 0
    assert load_serve.recount_tokens([""], path) == 0
    assert load_serve.recount_tokens(["Hello"], path) == 1  # one token in SmolLM2's vocabulary
    text = "What is 12 + 34? The answer is \\boxed{46}."
    one = load_serve.recount_tokens([text], path)
    assert one > 5
    # four choices of the same text count four times, whatever a server's `usage` says
    assert load_serve.recount_tokens([text] * 4, path) == 4 * one
    # a registry name resolves to the same file as its path
    assert load_serve.recount_tokens([text], "smollm2-135m") == one
