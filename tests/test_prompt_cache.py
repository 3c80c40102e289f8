"""The prompt cache (engine/streams.py): a new prompt continues the KV cells a finished prompt with
the same opening left in a free stream, and gets exactly the cells and logits a full prefill gives.

The expected values are worked out by hand (chunk bounds, how much to reuse) or come from a fresh
prefill or a run with the cache turned off (MIN_REUSE raised past every prompt), never from the
cached path itself."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from eager_local.engine import Engine, Request
from eager_local.engine import streams
from eager_local.llama import EXACT_BATCH_ROWS, Context, ContextSize, chunk_bounds

from serve_helpers import running_server

SYSTEM = ("You are a careful tutor. Read the question twice, write out every step of the arithmetic, "
          "check the result by a second method, and end with the final answer in \\boxed{}.")
QUESTIONS = [f"What is {a} + {3 * a}?" for a in range(2, 8)]


def reduced(trees):
    return [[(s.parent, s.fork_at, s.tokens, s.finish_reason) for s in t.sequences] for t in trees]


# --- the rules, on hand-made numbers ---------------------------------------------------------------
@pytest.mark.parametrize("n, step, expected", [
    (10, 512, [(0, 10)]),  # shorter than EXACT_BATCH_ROWS, and alone: as it is
    (512, 512, [(0, 512)]),
    (528, 512, [(0, 512), (512, 528)]),  # a last chunk of 16 is long enough
    (527, 512, [(0, 511), (511, 527)]),  # one of 15 takes a token from the chunk before
    (1030, 512, [(0, 512), (512, 1014), (1014, 1030)]),
    (130, 128, [(0, 114), (114, 130)]),
])
def test_chunk_bounds_keep_every_chunk_long(n, step, expected):
    assert EXACT_BATCH_ROWS == 16
    assert chunk_bounds(n, step) == expected


@pytest.mark.parametrize("common, n_tokens, expected", [
    (40, 100, 40),  # all shared tokens, 60 left to decode
    (100, 100, 84),  # the same prompt again: 16 decoded afresh
    (90, 100, 84),
    (15, 100, 0),  # under MIN_REUSE: not worth a stream copy
    (30, 40, 24),
    (30, 31, 0),  # 15 could be kept: under MIN_REUSE
])
def test_reusable_leaves_exact_batch_rows_to_decode(common, n_tokens, expected):
    assert streams.MIN_REUSE == 16
    assert streams.reusable(common, n_tokens) == expected


def test_common_prefix():
    a = np.array([1, 2, 3, 4], dtype=np.int32)
    assert streams.common_prefix(a, np.array([1, 2, 9], dtype=np.int32)) == 2
    assert streams.common_prefix(a, np.array([1, 2], dtype=np.int32)) == 2
    assert streams.common_prefix(a, np.array([7], dtype=np.int32)) == 0


# --- llama.cpp: reused cells give a full prefill's logits -------------------------------------------
def test_a_prompt_continued_from_reused_cells_has_a_full_prefills_logits(llm):
    """A prompt decoded whole, and the same prompt decoded after its first k cells were left by
    another prompt with that opening (cut back, or copied from its stream): the same logits, to
    the last bit, for every split that leaves EXACT_BATCH_ROWS tokens to decode."""
    tokens = llm.prompt_tokens(QUESTIONS[0], system=SYSTEM)
    other = llm.prompt_tokens(QUESTIONS[1], system=SYSTEM)
    shared = streams.common_prefix(np.array(tokens), np.array(other))
    assert shared > 40
    ctx = Context(llm.model, ContextSize(cells=512, n_seq_max=4, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        fresh = ctx.prefill(tokens, 0)
        for keep in (shared, streams.reusable(shared, len(tokens)), len(tokens) - EXACT_BATCH_ROWS):
            ctx.drop(1)
            ctx.drop(2)
            ctx.prefill(other, 1)  # another prompt with the same opening, as a finished row leaves it
            ctx.fork(1, 2)
            ctx.truncate(2, keep)
            copied = ctx.prefill(tokens[keep:], 2, start_pos=keep)
            ctx.truncate(1, keep)
            cut_back = ctx.prefill(tokens[keep:], 1, start_pos=keep)
            assert np.array_equal(copied, fresh), keep
            assert np.array_equal(cut_back, fresh), keep
    finally:
        ctx.close()


def fresh_logits(llm, tokens):
    ctx = Context(llm.model, ContextSize(cells=512, n_seq_max=1, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        return ctx.prefill(tokens, 0)
    finally:
        ctx.close()


# --- the engine -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["parallel", "eager-init"])
def test_prompts_with_one_opening_reuse_its_cells_and_grow_the_same_trees(llm, monkeypatch, method):
    """Six prompts with one long system message, two at a time: the later ones continue the cells
    the earlier ones left, and every tree is, token for token, the one grown with the cache off."""
    config = llm.config(method=method, theta=1.0, max_sequences=4, max_new_tokens=24, seed=5)
    requests = [Request(tokens=llm.prompt_tokens(q, system=SYSTEM), text=q, index=i)
                for i, q in enumerate(QUESTIONS)]
    shared = streams.common_prefix(np.array(requests[0].tokens), np.array(requests[1].tokens))

    cached = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    got = cached.generate(requests, config)
    monkeypatch.setattr(streams, "MIN_REUSE", 10**6)
    plain = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    expected = plain.generate(requests, config)

    assert plain.stats.cached_tokens == 0 and all(t.cached_tokens == 0 for t in expected)
    assert cached.stats.peak_prompts < len(requests)  # later prompts came after earlier ones finished
    reused = [t.cached_tokens for t in got]
    # the system message and "What is" are shared; 16 tokens are decoded afresh in any case
    can_reuse = [min(shared, len(r.tokens) - EXACT_BATCH_ROWS) for r in requests]
    assert shared >= 40 and min(can_reuse) >= 16  # MIN_REUSE (patched away below for the plain run)
    assert reused[0] == 0 and all(r in (0, c) for r, c in zip(reused, can_reuse))
    assert sum(r > 0 for r in reused) >= 3
    assert cached.stats.cached_tokens == sum(reused)
    assert cached.stats.prompt_tokens == plain.stats.prompt_tokens == sum(len(r.tokens) for r in requests)
    assert reduced(got) == reduced(expected)
    assert [t.to_dict()["sequences"] for t in got] == [t.to_dict()["sequences"] for t in expected]
    assert "cached_tokens" not in got[1].to_dict()  # a record does not depend on what ran before


def test_the_cache_never_hands_out_a_stream_holding_cells(llm):
    """After a call, free streams hold cached prompts; a later call's pool drops them, and a
    stream taken from the pool for anything but a prompt starts empty."""
    engine = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    config = llm.config(method="parallel", max_sequences=2, max_new_tokens=8, seed=1)
    requests = [Request(tokens=llm.prompt_tokens(q, system=SYSTEM), text=q, index=i)
                for i, q in enumerate(QUESTIONS[:3])]
    engine.generate(requests, config)
    ctx = engine.context
    assert any(ctx.seq_length(i) > 0 for i in range(ctx.size.n_seq_max))  # cells left cached
    pool = streams.SequencePool(ctx, set(), pooled=True)
    assert all(ctx.seq_length(i) == 0 for i in range(ctx.size.n_seq_max))
    tokens = requests[0].tokens
    first, kept = pool.take_for_prompt(tokens)
    assert kept == 0  # nothing cached yet in this pool
    ctx.prefill(tokens, first)
    pool.cached[first] = np.asarray(tokens, dtype=np.int32)
    pool.put_back(first)
    again = pool.take()  # the lowest id: it must come empty, its prompt moved to the highest empty id
    top = ctx.size.n_seq_max - 2  # the highest id is the pool's spare, never free
    assert pool.spare == top + 1
    ctx.prefill(tokens[:EXACT_BATCH_ROWS], again)  # a decode carries out the queued copy
    assert again == first and list(pool.cached) == [top] and ctx.seq_length(top) == len(tokens)
    assert ctx.seq_length(again) == EXACT_BATCH_ROWS
    reused, kept = pool.take_for_prompt(tokens)  # continues the moved prompt's cells
    assert kept == len(tokens) - EXACT_BATCH_ROWS and reused != top and top in pool.cached
    assert np.array_equal(ctx.prefill(tokens[kept:], reused, start_pos=kept),
                          fresh_logits(llm, tokens))


# --- the server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(llm):
    with running_server(llm, slots=2) as running:
        yield running


def test_a_repeated_request_reuses_its_prompt_and_answers_the_same(server):
    client = server.client()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[2]}]
    ask = dict(model=server.limits.model, messages=messages, max_tokens=24, seed=9, n=2, temperature=0.8)
    first = client.chat.completions.create(**ask)
    second = client.chat.completions.create(**ask)
    n_prompt = first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == n_prompt - EXACT_BATCH_ROWS
    assert [c.message.content for c in second.choices] == [c.message.content for c in first.choices]
    assert second.usage.completion_tokens == first.usage.completion_tokens


def test_a_conversations_next_turn_reuses_the_turns_before(server):
    client = server.client()
    model = server.limits.model
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[3]}]
    turn = client.chat.completions.create(model=model, messages=history, max_tokens=16, seed=2)
    history += [{"role": "assistant", "content": turn.choices[0].message.content},
                {"role": "user", "content": "Now add 10 to it."}]
    nxt = client.chat.completions.create(model=model, messages=history, max_tokens=16, seed=2)
    # at least the whole first prompt is reused (its cells; the reply's are decoded again)
    assert nxt.usage.prompt_tokens_details.cached_tokens >= turn.usage.prompt_tokens - 1
    assert nxt.usage.prompt_tokens_details.cached_tokens <= nxt.usage.prompt_tokens - EXACT_BATCH_ROWS
    engine = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()["engine"]
    assert engine["cached_tokens"] >= nxt.usage.prompt_tokens_details.cached_tokens
    assert engine["prompt_tokens"] >= turn.usage.prompt_tokens + nxt.usage.prompt_tokens
