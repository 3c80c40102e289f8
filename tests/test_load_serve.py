"""scripts/load_serve.py: the completion-token recount that makes servers comparable (each choice's
text, tokenized by the real model's tokenizer), which text of a choice it counts, the answers'
scoring, and llama-server's batch counters (with the real binary, when there is one)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_llama_server import SERVER, LlamaServer, _no_repack, needs_server

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


def test_a_conversation_load_carries_each_turn_and_the_prompt_cache_skips_it(load_serve, llm):
    """--conversation: a client's later requests carry its earlier turns, so their prompts grow,
    and eager-local's prompt cache reports the turns before as reused."""
    import argparse

    from serve_helpers import running_server

    args = argparse.Namespace(clients=2, requests=3, max_tokens=8, temperature=0.6, n=1, extra=None, seed=4,
                              timeout=120, api_key=None, model_name=None, conversation=True,
                              tokenizer="smollm2-135m")
    with running_server(llm, slots=2) as server:
        args.model_name = server.limits.model
        report = load_serve.run_load(server.base_url, args)
    assert report["answered"] == 6 and report["nothing_lost_or_duplicated"]
    assert 0 <= report["vote_accuracy"] <= report["pass_at_n"] <= 1  # a right vote is a right choice
    single = args.max_tokens * 0 + len(llm.prompt_tokens(load_serve.prompts(1, 4)[0][0]))
    # three turns each: the prompts grow (by a question and an answer per turn), far past three single ones
    assert report["prompt_tokens"] > 2 * 3 * single * 1.5
    assert report["prompt_tokens_reused"] >= 2 * 2 * (single - 16)


def test_prompts_carry_their_answers_and_are_seeded(load_serve):
    pairs = load_serve.prompts(5, seed=3)
    assert pairs == load_serve.prompts(5, seed=3) and pairs != load_serve.prompts(5, seed=4)
    for text, answer in pairs:
        a, b = (int(x) for x in text.removeprefix("What is ").split("?")[0].split(" + "))
        assert answer == a + b and text.endswith("in \\boxed{}.")


def test_score_reads_the_vote_and_any_choice(load_serve):
    answered = [
        (["so \\boxed{46}", "\\boxed{46}", "\\boxed{45}"], 46),  # vote right, some choice right
        (["\\boxed{45}", "45", "the sum is 46"], 46),  # vote wrong ("45" twice), one choice right
        (["no number here"], 12),  # nothing to read: wrong both ways
        (["\\boxed{12.0}"], 12),  # numbers compare by value
    ]
    assert load_serve.score(answered) == {"vote_accuracy": 0.5, "pass_at_n": 0.75}
    assert load_serve.score([]) == {"vote_accuracy": 0.0, "pass_at_n": 0.0}


@needs_server
@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "no-metrics"])
def test_reads_the_batch_counters_of_a_llama_server_started_with_metrics(load_serve, default_model_path, llm,
                                                                         metrics):
    """load_serve.py reports llama-server's llama_decode calls and busy slots per call from /metrics;
    without --metrics the server refuses /metrics, and the report has none."""
    prompt = llm.prompt_tokens("What is 2+2?")
    server = LlamaServer(SERVER, default_model_path, slots=4, n_ctx=2048, threads=1,
                         extra_args=[*(["--metrics"] if metrics else []), *_no_repack()])
    with server:
        outs = server.complete_many(prompt, n=4, n_predict=16, temperature=0.6, seed=1)
        got = load_serve.llama_server_metrics(server.url)
    if not metrics:
        assert got == {}
        return
    assert got["tokens_predicted_total"] >= sum(o.tokens for o in outs)
    # 4 choices on 4 slots: a decode per token of the longest at least, one per token at most
    # (and a few for the prompt)
    assert max(o.tokens for o in outs) <= got["n_decode_total"] <= sum(o.tokens for o in outs) + 8
    assert 1 <= got["n_busy_slots_per_decode"] <= 4
