"""The pool of KV streams (engine/streams.py): EAGer prompts share parallel sampling's streams, a
fork that finds none pauses its prompt, and the trees stay those of an unlimited pool."""

from __future__ import annotations

import numpy as np
import pytest

from eager_local import tree as T
from eager_local.engine import Engine, Request
from eager_local.engine import streams
from eager_local.engine.state import WAITING, PromptRun, Row
from eager_local.llama import Context, ContextSize
from llama_helpers import greedy

PROMPTS = [f"What is {a} + {3 * a}? Explain." for a in range(2, 8)]


def reduced(trees):
    return [[(s.parent, s.fork_at, s.tokens, s.finish_reason) for s in t.sequences] for t in trees]


# --- the banker's rule, on hand-made claims ---------------------------------------------------------
@pytest.mark.parametrize("free, claims, expected", [
    (0, [], True),
    (0, [(1, 0)], True),  # claims nothing more: it finishes
    (0, [(1, 1)], False),  # wants one more id and none is free
    (1, [(2, 1), (1, 3)], True),  # the first finishes and gives back 2: 3 free for the second
    (1, [(1, 2), (1, 2)], False),  # neither can ever get its second id
    (2, [(1, 2), (1, 2)], True),
    (3, [(0, 4), (5, 3), (1, 8)], True),  # 3 → 8 → 8 → 9: an order exists
    (3, [(0, 4), (1, 3), (1, 8)], False),  # 3 → 4 → 4, and 8 never fits
])
def test_safe_is_the_bankers_rule(free, claims, expected):
    assert streams.safe(free, claims) is expected


# --- the engine with a small pool -------------------------------------------------------------------
def test_a_small_pool_pauses_prompts_and_grows_the_same_trees(llm, monkeypatch):
    """Six EAGer prompts that all reach M = 4 at once (θ = 0) with a batch limit of 8 rows: a pool
    of 11 streams (8 × POOL_HEADROOM + 1; and the spare) for the three prompts admitted at once, 12
    rows: forks wait, prompts pause, memory is the pool's, and every tree is, token for token, the
    one a pool large enough for all 24 rows grows without waiting."""
    config = llm.config(theta=0.0, max_sequences=4, max_new_tokens=24, seed=3)
    requests = [Request(tokens=llm.prompt_tokens(p), text=p, index=i) for i, p in enumerate(PROMPTS)]

    roomy = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=32)
    waits = []
    original_wait = streams.SequencePool.wait
    monkeypatch.setattr(streams.SequencePool, "wait", lambda self, row, source: (waits.append(row.seq.id),
                                                                                  original_wait(self, row, source)))
    expected = reduced(roomy.generate(requests, config))
    assert not waits and roomy.stats.peak_prompts == 6

    small = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    got = reduced(small.generate(requests, config))
    assert small.context.size.n_seq_max == 12  # the highest, 11, is the spare: never a row's
    assert waits, "no fork had to wait: the test no longer exercises the pool"
    assert small.stats.peak_rows <= 11
    assert small.stats.peak_prompts > 2  # more prompts than 11 streams hold at M each
    assert got == expected
    assert all(len(t) == 4 for t in got)
    roomy.reset()
    small.reset()


def test_a_budget_cuts_rows_while_forks_wait(llm):
    """A session budget cuts rows while forks wait, and nothing is lost or double-counted."""
    from eager_local.budget import TokenBudget

    config = llm.config(theta=0.0, max_sequences=4, max_new_tokens=24, seed=3)
    requests = [Request(tokens=llm.prompt_tokens(p), text=p, index=i) for i, p in enumerate(PROMPTS)]
    small = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    budget = TokenBudget(150)
    trees = small.generate(requests, config, budget=budget)
    assert budget.spent == sum(t.generated_tokens for t in trees) <= 150
    assert all(s.finish_reason for t in trees for s in t.sequences)
    # every stream was given back: only the prompt cache keeps cells, one stream per distinct prompt
    holding = [i for i in range(11) if small.context.seq_length(i) > 0]
    assert len(holding) <= len({tuple(r.tokens) for r in requests})
    small.reset()


# --- a handed-over stream holds exactly the prefix --------------------------------------------------
def test_a_finished_parent_hands_its_stream_to_its_waiting_forks(llm, arith_prompt):
    """Two forks wait on one parent, made after its 2nd and its 5th token. The parent finishes:
    the later fork takes over its stream cut back to its prefix, the earlier one copies from that.
    Both continue exactly as a fresh stream given the parent's history up to their fork does (the
    prompt prefilled, then one token per decode: a batched prefill of the generated tokens would
    give other bits on some CPUs, llama.EXACT_BATCH_ROWS)."""
    prompt = llm.prompt_tokens(arith_prompt)
    P = len(prompt)
    ctx = Context(llm.model, ContextSize(cells=256, n_seq_max=4, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        pool = streams.SequencePool(ctx, set(), pooled=True)
        assert pool.spare == 3 and pool.free == [0, 1, 2]  # the highest id stays spare
        run = PromptRun(request=Request(tokens=prompt), config=llm.config(), cap=4, theta=0.0, reserved=0,
                        started_at=0.0, tree=T.Tree(prompt=arith_prompt, prompt_tokens=P, method="eager-init"))
        parent_id = pool.take()
        tokens, _ = greedy(ctx, parent_id, ctx.prefill(prompt, parent_id), P, 10)  # KV: prompt + 10 tokens

        def row(seq_id, n_tokens, llama_id):
            return Row(seq=T.Sequence(id=seq_id, parent=None, fork_at=0, tokens=tokens[:n_tokens]), run=run,
                       llama_id=llama_id, rng=None)

        parent = row(0, 2, parent_id)
        early = row(1, 2, WAITING)
        pool.wait(early, parent)  # forked when the parent had 2 tokens
        parent.seq.tokens = tokens[:5]
        late = row(2, 5, WAITING)
        pool.wait(late, parent)
        assert (early.keep, late.keep, pool.waiting_for(run)) == (P + 2, P + 5, 2)

        pool.release(parent)  # the parent finished at the fork
        assert late.llama_id == parent_id and ctx.seq_length(parent_id) == P + 5
        assert early.waiting and early.source is late
        pool.start_waiting(lambda r: True)
        assert not pool.waiting and pool.waiting_for(run) == 0
        assert early.llama_id not in (WAITING, parent_id) and ctx.seq_length(early.llama_id) == P + 2

        fresh = pool.take()
        for who, n in ((late, 5), (early, 2)):
            ctx.drop(fresh)
            _, reference = greedy(ctx, fresh, ctx.prefill(prompt, fresh), P, n)  # the parent's first n steps
            got_tokens, got_logits = greedy(ctx, who.llama_id, reference, P + n, 4)
            want_tokens, want_logits = greedy(ctx, fresh, reference, P + n, 4)
            assert got_tokens == want_tokens == tokens[n:n + 4]
            np.testing.assert_array_equal(got_logits, want_logits)
    finally:
        ctx.close()


def test_a_request_cancelled_while_forks_wait_frees_every_stream(llm, monkeypatch):
    """A server's pool of 11 streams (and the spare), six prompts that all branch to M = 4: one
    request is cancelled mid-run, from another request's token callback. Every request ends, every
    sequence has a finish reason, and every stream is given back."""
    import threading

    from eager_local.engine import Inbox

    waits = []
    original_wait = streams.SequencePool.wait
    monkeypatch.setattr(streams.SequencePool, "wait", lambda self, row, source: (waits.append(row.seq.id),
                                                                                  original_wait(self, row, source)))
    engine = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    inbox = Inbox()
    config = llm.config(theta=0.0, max_sequences=4, max_new_tokens=24, seed=3)
    loop = engine.serving_loop(config, inbox, prompt_tokens=64, slots=6)
    requests = [Request(tokens=llm.prompt_tokens(p), text=p, index=i) for i, p in enumerate(PROMPTS)]

    def cancel_the_second(tree, seq, token):
        if len(seq.tokens) == 6:
            inbox.cancel(requests[1])

    requests[0].on_token = cancel_the_second
    results = {}

    def serve():
        for request, tree in loop.serve():
            results[id(request)] = tree
            if len(results) == len(requests):
                inbox.close()

    thread = threading.Thread(target=serve)
    thread.start()
    for request in requests:
        inbox.submit(request)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert waits and engine.context.size.n_seq_max == 12
    trees = [results[id(r)] for r in requests]
    assert any(s.finish_reason == T.CANCELLED for s in trees[1].sequences)
    assert all(s.finish_reason for t in trees for s in t.sequences)
    assert all(len(t.sequences) == 4 for i, t in enumerate(trees) if i != 1)
    # every stream was given back: only the prompt cache keeps cells, one stream per distinct prompt
    holding = [i for i in range(12) if engine.context.seq_length(i) > 0]
    assert len(holding) <= len({tuple(r.tokens) for r in requests})
    engine.reset()


# --- a paused prompt's rows leave no holes in the decoded block -------------------------------------
@pytest.mark.parametrize("n_seq_max, via", [(6, "the spare"), (7, "a free id")])
def test_compact_moves_a_paused_prompts_rows_out_of_the_block(llm, n_seq_max, via):
    """Five rows hold ids 0-4; the rows at 1 and 2 belong to a paused prompt. compact gives the three
    decoded rows ids 0-2 (one micro-batch) and the paused ones ids above them, moving streams through
    the spare when no id is free, else through the free one. Every row keeps its own cells: decoding one token
    on all five gives, bit for bit, what a context prefilled straight into the final ids gives."""
    prompts = [llm.prompt_tokens(p)[:12 + 3 * i] for i, p in enumerate(PROMPTS[:5])]  # five lengths
    size = ContextSize(cells=256, n_seq_max=n_seq_max, n_batch=512)
    ctx = Context(llm.model, size, n_threads=llm.engine.n_threads)
    reference = Context(llm.model, size, n_threads=llm.engine.n_threads)
    try:
        pool = streams.SequencePool(ctx, set(), pooled=True)
        assert pool.spare == n_seq_max - 1
        rows = []
        for i, tokens in enumerate(prompts):
            run = PromptRun(request=Request(tokens=tokens), config=llm.config(), cap=4, theta=0.0, reserved=0,
                            started_at=0.0, tree=T.Tree(prompt="", prompt_tokens=len(tokens), method="eager-init"))
            row = Row(seq=T.Sequence(id=0, parent=None, fork_at=0, tokens=[]), run=run, llama_id=pool.take(), rng=None)
            ctx.prefill(tokens, row.llama_id)
            rows.append(row)
        assert len(pool.free) == n_seq_max - 6  # 0 or 1 left
        decoded, parked = [rows[0], rows[3], rows[4]], [rows[1], rows[2]]
        pool.compact(decoded, parked=parked)
        assert sorted(r.llama_id for r in decoded) == [0, 1, 2]
        assert sorted(r.llama_id for r in parked) == ([3, 4] if via == "the spare" else [4, 5])  # above the block
        assert pool.spare == n_seq_max - 1 and ctx.seq_length(pool.spare) == 0
        for row, tokens in zip(rows, prompts):
            assert ctx.seq_length(row.llama_id) == len(tokens)
            reference.prefill(tokens, row.llama_id)
        order = sorted(range(5), key=lambda i: rows[i].llama_id)
        step = ([7] * 5, [len(prompts[i]) for i in order], [rows[i].llama_id for i in order], [1] * 5)
        np.testing.assert_array_equal(ctx.decode(*step).copy(), reference.decode(*step))
    finally:
        ctx.close()
        reference.close()
