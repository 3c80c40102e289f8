"""`eager-local serve` driven by the real `openai` client over HTTP, on the test model.

Expectations come from the request (n is the cap M, max_tokens the length) and from the raw
tokens the engine reports, not from the server's own arithmetic: #T is recounted from the
branches' token counts and fork points, the streamed text is compared with the same request
unstreamed, a seed's answer with the same seed's answer.
"""

from __future__ import annotations

import math

import pytest

from eager_local.engine import StepStats
from serve_helpers import CAP, running_server, wait_until

QUESTION = [{"role": "user", "content": "What is 23 + 19? Put the answer in \\boxed{}."}]


@pytest.fixture(scope="module")
def server(llm):
    with running_server(llm) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def recount(eager: dict) -> int:
    """#T from the branches: each one's tokens after the point it shares with its parent."""
    return sum(b["tokens"] - b["fork_at"] for b in eager["branches"])


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [server.limits.model]
    import httpx

    health = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["max_sequences"] == CAP


def test_chat_n8_one_choice_per_branch_and_usage_counts_shared_prefixes_once(client, server):
    out = client.chat.completions.create(model=server.limits.model, messages=QUESTION, n=8, max_tokens=24, seed=3,
                                         extra_body={"theta": 1.0})
    eager = out.model_extra["eager"]
    assert 1 <= len(out.choices) <= 8 and len(out.choices) == eager["sequences"]
    assert [c.index for c in out.choices] == list(range(len(out.choices)))
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in out.choices)
    assert eager["max_sequences"] == 8 and eager["theta"] == 1.0 and eager["seed"] == 3
    assert len(eager["events"]) == len(out.choices) - 1 > 0  # each branch event adds one sequence
    assert all(b["tokens"] <= 24 for b in eager["branches"])
    assert out.usage.completion_tokens == recount(eager)
    if any(b["fork_at"] for b in eager["branches"]):  # a shared prefix is counted once
        assert out.usage.completion_tokens < sum(b["tokens"] for b in eager["branches"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert eager["votes"] >= (1 if eager["answer"] is not None else 0)


def test_n1_is_one_sequence(client, server):
    out = client.chat.completions.create(model=server.limits.model, messages=QUESTION, n=1, max_tokens=12,
                                         extra_body={"theta": 0.0})
    assert len(out.choices) == 1 and out.model_extra["eager"]["events"] == []  # θ 0 but M = 1: no branch


def test_completions_parallel_draws_exactly_n(client, server):
    out = client.completions.create(model=server.limits.model, prompt="The capital of France is", n=3,
                                    max_tokens=8, seed=5, extra_body={"method": "parallel"})
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.object == "text_completion" and all(isinstance(c.text, str) for c in out.choices)
    assert out.usage.completion_tokens == recount(out.model_extra["eager"])
    assert all(b["fork_at"] == 0 and b["tokens"] <= 8 for b in out.model_extra["eager"]["branches"])


def test_seed_gives_the_same_answer_and_another_seed_another(client, server):
    def ask(seed):
        out = client.chat.completions.create(model=server.limits.model, messages=QUESTION, n=4, max_tokens=16,
                                             seed=seed, temperature=1.0, extra_body={"theta": 1.0})
        return [c.message.content for c in out.choices]

    first = ask(11)
    assert ask(11) == first
    assert ask(12) != first


def test_stop_string_ends_the_text_before_it(client, server):
    plain = client.completions.create(model=server.limits.model, prompt="Count: 1, 2, 3,", n=1, max_tokens=12,
                                      temperature=0)
    text = plain.choices[0].text
    assert "," in text
    stop = text[text.index(","):text.index(",") + 1]
    out = client.completions.create(model=server.limits.model, prompt="Count: 1, 2, 3,", n=1, max_tokens=12,
                                    temperature=0, stop=[stop])
    assert out.choices[0].text == text[:text.index(",")]
    assert out.choices[0].finish_reason == "stop"


def test_stream_first_branch_matches_the_unstreamed_answer(client, server):
    kwargs = dict(model=server.limits.model, messages=QUESTION, max_tokens=20, seed=21, extra_body={"theta": 1.0})
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert {c.choices[0].index for c in chunks if c.choices} == {0}  # without n only the first branch streams
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    eager = chunks[-1].model_extra["eager"]  # the others' texts travel in the eager object
    assert [b.get("text") for b in eager["branches"]] == [c.message.content for c in whole.choices]


def test_stream_with_n_sends_every_branch_as_its_choice(client, server):
    kwargs = dict(model=server.limits.model, messages=QUESTION, n=5, max_tokens=20, seed=8, extra_body={"theta": 1.0})
    whole = client.chat.completions.create(**kwargs)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completion_stream_with_stop(client, server):
    kwargs = dict(model=server.limits.model, prompt="Count: 1, 2, 3,", n=1, max_tokens=16, temperature=0,
                  stop=[", 7"])
    whole = client.completions.create(**kwargs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].text and ", 7" not in streamed


def test_disconnect_mid_stream_frees_the_rows_and_the_server_still_serves(client, server):
    scheduler = server.scheduler
    kwargs = dict(model=server.limits.model, prompt="1, 2, 3, 4, 5,", n=1, max_tokens=120, temperature=0)
    whole = client.completions.create(**kwargs)
    assert whole.usage.completion_tokens == 120  # left alone, this request decodes 120 steps
    scheduler.loop.stats = stats = StepStats()
    stream = client.completions.create(stream=True, **kwargs)
    received = 0
    for _ in stream:
        received += 1
        if received == 3:
            break
    stream.close()
    assert wait_until(lambda: not scheduler.loop.runs, timeout=20)
    assert stats.steps < 60  # cancelled long before its 120 tokens
    steps = stats.steps
    out = client.completions.create(model=server.limits.model, prompt="Hello", n=1, max_tokens=4)
    assert out.choices and stats.steps > steps


def test_client_that_gives_up_waiting_cancels_its_request(client, server):
    import httpx

    scheduler = server.scheduler
    scheduler.loop.stats = stats = StepStats()
    body = {"model": server.limits.model, "prompt": "1, 2, 3, 4, 5,", "n": 1, "max_tokens": 120, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    assert wait_until(lambda: not scheduler.loop.runs, timeout=20)
    assert stats.steps < 100  # the same request runs 120 steps when its client waits (test above)


def test_concurrent_clients_share_batched_decodes(llm, server):
    """Several clients at once: all complete, and steps decoded more than one prompt at a time; a
    seeded request gives the same answer in that crowd (other settings beside it) as alone."""
    from concurrent.futures import ThreadPoolExecutor

    client = server.client()
    probe = dict(model=server.limits.model, messages=QUESTION, n=3, max_tokens=20, seed=99, temperature=0.9,
                 extra_body={"theta": 1.2})
    alone = [c.message.content for c in client.chat.completions.create(**probe).choices]
    server.scheduler.loop.stats = stats = StepStats()

    def one(i):
        if i == 0:
            return [c.message.content for c in client.chat.completions.create(**probe).choices]
        extra = {"method": "parallel"} if i % 2 else {"theta": 0.8}
        out = client.chat.completions.create(model=server.limits.model, n=2, max_tokens=20, seed=i,
                                             temperature=0.3 * i, top_p=0.9, extra_body=extra,
                                             messages=[{"role": "user", "content": f"Name {i} animals."}])
        return [c.message.content for c in out.choices]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert all(results) and results[0] == alone
    assert stats.peak_prompts >= 2 and stats.prompt_steps > stats.steps  # several prompts per decode


def test_api_key_required_when_set(llm):
    import openai

    with running_server(llm, api_key="sesame", slots=1) as running:
        with pytest.raises(openai.AuthenticationError) as caught:
            running.client(api_key="wrong").models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            running.client(api_key="wrong").chat.completions.create(model=running.limits.model, messages=QUESTION,
                                                                    max_tokens=2)
        out = running.client(api_key="sesame").chat.completions.create(model=running.limits.model,
                                                                       messages=QUESTION, max_tokens=2, n=1)
        assert len(out.choices) == 1


def test_logprobs_chat_greedy_token_is_the_most_likely(client, server):
    out = client.chat.completions.create(model=server.limits.model, messages=QUESTION, n=1, max_tokens=10,
                                         temperature=0, logprobs=True, top_logprobs=3)
    choice = out.choices[0]
    content = choice.logprobs.content
    assert 1 <= len(content) <= 10
    assert "".join(t.token for t in content) == choice.message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert entry.token == entry.top_logprobs[0].token and entry.logprob == entry.top_logprobs[0].logprob
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-9
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token


def test_logprobs_of_branches_share_the_prefix_and_the_child_takes_the_second_token(client, server):
    out = client.chat.completions.create(model=server.limits.model, messages=QUESTION, n=4, max_tokens=16, seed=3,
                                         temperature=0.9, logprobs=True, top_logprobs=2, extra_body={"theta": 1.0})
    events = out.model_extra["eager"]["events"]
    assert events
    content = {c.index: c.logprobs.content for c in out.choices}
    checked = 0
    for e in events:
        if any(t.startswith("<|") for t in e["tokens"]):  # an end-of-turn token is not listed
            continue
        parent, child, at = content[e["sequence"]], content[e["child"]], e["at"]
        assert [t.token for t in child[:at]] == [t.token for t in parent[:at]]
        assert (parent[at].token, child[at].token) == tuple(e["tokens"])
        assert child[at].logprob == parent[at].top_logprobs[1].logprob <= parent[at].logprob
        checked += 1
    assert checked


def test_logprobs_completions_and_stream(client, server):
    kwargs = dict(model=server.limits.model, prompt="The capital of France is", n=1, max_tokens=6, temperature=0,
                  logprobs=2)
    out = client.completions.create(**kwargs)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text and len(lp.tokens) == len(lp.token_logprobs)
    assert all(len(top) == 2 and max(top.values()) == logprob for top, logprob in zip(lp.top_logprobs, lp.token_logprobs))
    streamed = [c for c in client.completions.create(stream=True, **kwargs) if c.choices and c.choices[0].logprobs]
    assert len(streamed) == 1 and streamed[0].choices[0].logprobs.tokens == lp.tokens


def test_budget_caps_the_requests_generated_tokens(client, server):
    kwargs = dict(model=server.limits.model, messages=QUESTION, n=8, max_tokens=64, seed=3)
    free = client.chat.completions.create(**kwargs, extra_body={"theta": 0.5})
    assert free.usage.completion_tokens > 30
    out = client.chat.completions.create(**kwargs, extra_body={"theta": 0.5, "budget": 30})
    eager = out.model_extra["eager"]
    assert out.usage.completion_tokens == recount(eager) == 30
    assert "budget" in [b["finish_reason"] for b in eager["branches"]]
