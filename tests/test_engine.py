"""The engine on the real default model: branch rule, caps, budget, forks, determinism, KV full."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eager_local import tree as T
from eager_local.budget import TokenBudget
from eager_local.config import ConfigError
from eager_local.engine import Engine, Request
from eager_local.engine.sizing import RowForecast
from eager_local.entropy import top_k_entropy
from eager_local.llama import Context, ContextSize
from llama_helpers import greedy


def requests_for(llm, prompts):
    return [Request(tokens=llm.prompt_tokens(p), text=p, index=i) for i, p in enumerate(prompts)]


def gen(llm, prompts, budget=None, **options):
    options.setdefault("max_new_tokens", 48)
    config = llm.config(**options)
    spent_before = budget.spent if budget else 0
    trees = llm.engine.generate(requests_for(llm, prompts), config, budget=budget)
    for tree in trees:
        check_invariants(tree, config)
    if budget is not None:
        assert budget.spent - spent_before == sum(t.generated_tokens for t in trees)
        assert budget.limit is None or budget.spent <= budget.limit
    return trees


def check_invariants(tree, config):
    """What must hold on every run: the cap M, max_new_tokens, one event per extra sequence, #T."""
    seqs = tree.sequences
    assert len(seqs) <= config.max_sequences
    roots = [s for s in seqs if s.parent is None]
    if tree.started:
        assert len(roots) == (config.max_sequences if config.method == "parallel" else 1)
    assert len(tree.events) == len(seqs) - len(roots)
    for s in seqs:
        assert len(s.tokens) <= config.max_new_tokens
        assert len(s.entropies) == len(s.tokens)
        assert s.finish_reason in T.FINISH_REASONS
        if s.parent is not None:
            assert 0 <= s.fork_at < len(s.tokens)
    assert tree.generated_tokens == sum(len(s.tokens) - s.fork_at for s in seqs)


def test_cap_m_holds_and_low_theta_reaches_it(llm, arith_prompt):
    for m in (1, 3, 8):
        (tree,) = gen(llm, [arith_prompt], theta=0.0, max_sequences=m)
        assert len(tree.sequences) == m  # θ = 0: every uncertain step branches until the cap
        assert len(tree.events) == m - 1  # one event adds exactly one sequence
    (tree,) = gen(llm, [arith_prompt], theta=3.5, max_sequences=8)  # above ln 20: never branches
    assert len(tree.sequences) == 1 and tree.events == []


def test_branch_events_follow_the_rule(llm, arith_prompt):
    (tree,) = gen(llm, [arith_prompt], theta=1.5, max_sequences=6, max_new_tokens=64)
    assert tree.events, "expected at least one branch at θ=1.5 on this prompt"
    by_id = {s.id: s for s in tree.sequences}
    for e in tree.events:
        parent, child = by_id[e.parent], by_id[e.child]
        assert e.entropy > e.threshold == 1.5
        assert child.fork_at == e.step and child.parent == e.parent
        assert child.tokens[: e.step] == parent.tokens[: e.step]  # shared prefix
        assert parent.tokens[e.step] == e.top1 and child.tokens[e.step] == e.top2 != e.top1
        assert child.entropies[e.step] == pytest.approx(e.entropy)
    # #T counts shared prefixes once
    assert tree.generated_tokens == sum(len(s.tokens) - s.fork_at for s in tree.sequences)
    assert tree.generated_tokens < sum(len(s.tokens) for s in tree.sequences)


def test_forked_branches_see_the_same_logits_as_a_fresh_context(llm, arith_prompt):
    """Every recorded entropy of every branch equals the one a fresh context computes for that prefix.

    The fresh context is fed the prefix one token per decode, as the engine does: a single batched
    prefill takes another matmul path and differs by ~0.1 nats on this model, which would hide bugs.
    """
    (tree,) = gen(llm, [arith_prompt], theta=1.2, max_sequences=4, max_new_tokens=24)
    forked = [s for s in tree.sequences if s.fork_at > 0]
    assert forked, "expected a fork after the first token"
    prompt = llm.prompt_tokens(arith_prompt)
    ctx = Context(llm.model, ContextSize(cells=512, n_seq_max=1, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        for seq in tree.sequences:
            ctx.clear()
            logits = [ctx.prefill(prompt, 0)]
            for i, token in enumerate(seq.tokens[:-1]):
                logits.append(np.array(ctx.decode([token], [len(prompt) + i], [0], [1])[0]))
            fresh = top_k_entropy(np.stack(logits), 20)
            recorded = np.array(seq.entropies)
            computed = ~np.isnan(recorded)
            assert computed.sum() > 0
            np.testing.assert_allclose(recorded[computed], fresh[computed], atol=1e-4)
            if seq.parent is not None:  # the child took the second most likely token at its fork
                assert seq.tokens[seq.fork_at] == int(np.argsort(logits[seq.fork_at])[-2])
    finally:
        ctx.close()


def test_same_seed_same_tree_other_seed_other_tree(llm, arith_prompt):
    a = gen(llm, [arith_prompt], theta=1.8, max_sequences=4, seed=7)[0]
    b = gen(llm, [arith_prompt], theta=1.8, max_sequences=4, seed=7)[0]
    c = gen(llm, [arith_prompt], theta=1.8, max_sequences=4, seed=8, temperature=1.0)[0]
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert [(e.step, e.parent) for e in a.events] == [(e.step, e.parent) for e in b.events]
    assert [s.tokens for s in a.sequences] != [s.tokens for s in c.sequences]


def test_parallel_draws_m_independent_samples(llm):
    prompt = "Name a random animal."
    (tree,) = gen(llm, [prompt], method="parallel", max_sequences=8, temperature=1.0, max_new_tokens=12)
    assert len(tree.sequences) == 8 and tree.events == []
    assert all(s.parent is None and s.fork_at == 0 for s in tree.sequences)
    assert len({tuple(s.tokens) for s in tree.sequences}) >= 4  # independent draws differ
    # nothing is shared between independent samples: #T is the plain sum
    assert tree.generated_tokens == sum(len(s.tokens) for s in tree.sequences)


def test_budget_is_never_exceeded_and_nothing_is_lost(llm, arith_prompt):
    for limit in (1, 7, 30, 100):
        budget = TokenBudget(limit)
        trees = gen(llm, [arith_prompt, "What is 5 + 4?"], budget=budget, theta=0.5, max_sequences=4, max_new_tokens=40)
        total = sum(t.generated_tokens for t in trees)
        assert total == budget.spent <= limit
        reasons = [s.finish_reason for t in trees for s in t.sequences]
        assert T.BUDGET in reasons or any(not t.started for t in trees)
        assert None not in reasons
    # a session budget spans calls
    budget = TokenBudget(60)
    first = gen(llm, [arith_prompt], budget=budget, theta=3.5, max_new_tokens=40)[0]
    second = gen(llm, [arith_prompt], budget=budget, theta=3.5, max_new_tokens=40)[0]
    assert first.generated_tokens + second.generated_tokens == budget.spent <= 60
    assert second.sequences[0].finish_reason == T.BUDGET


def test_max_new_tokens_counts_from_the_first_step(llm, arith_prompt):
    (tree,) = gen(llm, [arith_prompt], theta=0.5, max_sequences=5, max_new_tokens=20)
    for s in tree.sequences:
        assert len(s.tokens) <= 20
        if s.finish_reason == T.LENGTH:
            assert len(s.tokens) == 20  # a late branch gets only what is left


def test_branch_window_closes_branching(llm, arith_prompt):
    options = dict(theta=1.5, max_sequences=32, max_new_tokens=48)
    (closed,) = gen(llm, [arith_prompt], branch_window=1, **options)
    (open_,) = gen(llm, [arith_prompt], **options)
    # W = 1: the first step without a branch closes branching, so branch steps run 0, 1, 2, ... unbroken
    steps = sorted({e.step for e in closed.events})
    assert steps == list(range(len(steps)))
    open_steps = sorted({e.step for e in open_.events})
    assert open_steps != list(range(len(open_steps)))  # the same run with W = 1000 branches later too
    # once the window is closed, entropy is no longer computed
    assert any(math.isnan(h) for s in closed.sequences for h in s.entropies)


def test_record_entropies_computes_every_step_without_changing_the_tokens(llm, arith_prompt):
    """record_entropies=True computes the entropy where the engine otherwise skips it, and only that."""
    # parallel with M = 1: one plain sampled sequence, branching never open, so nothing is computed
    # unless recording
    options = dict(method="parallel", max_sequences=1, max_new_tokens=32, ignore_eos=True, seed=13)
    (plain,) = gen(llm, [arith_prompt], **options)
    (recorded,) = gen(llm, [arith_prompt], record_entropies=True, **options)
    assert [s.tokens for s in recorded.sequences] == [s.tokens for s in plain.sequences]
    assert len(recorded.sequences[0].tokens) == 32
    assert all(math.isnan(h) for h in plain.sequences[0].entropies)
    assert all(0 <= h <= math.log(20) for h in recorded.sequences[0].entropies)

    # eager-init that never branches (θ above ln 20) with W = 4: the window closes after the 4th
    # step, so without recording only the first 4 tokens have an entropy
    options = dict(theta=3.5, max_sequences=4, branch_window=4, max_new_tokens=24, ignore_eos=True, seed=13)
    (plain,) = gen(llm, [arith_prompt], **options)
    (recorded,) = gen(llm, [arith_prompt], record_entropies=True, **options)
    assert len(plain.sequences) == len(recorded.sequences) == 1
    assert recorded.sequences[0].tokens == plain.sequences[0].tokens
    plain_h, recorded_h = plain.sequences[0].entropies, recorded.sequences[0].entropies
    assert [math.isnan(h) for h in plain_h] == [False] * 4 + [True] * 20
    assert all(0 <= h <= math.log(20) for h in recorded_h)
    assert recorded_h[:4] == pytest.approx(plain_h[:4])


def test_no_branching_after_end_of_thinking(llm, arith_prompt):
    marker = " is"
    marker_id = llm.model.single_token(marker)
    assert marker_id is not None
    (tree,) = gen(llm, [arith_prompt], theta=0.0, max_sequences=24, max_new_tokens=40, end_of_thinking=marker, temperature=1.0)
    by_id = {s.id: s for s in tree.sequences}
    for e in tree.events:
        assert marker_id not in by_id[e.parent].tokens[: e.step]
    past = [s for s in tree.sequences if marker_id in s.tokens]
    assert past, "some sequence should have emitted the marker"
    for s in past:
        after = s.tokens.index(marker_id) + 1
        assert all(math.isnan(h) for h in s.entropies[after:])


def test_dynamic_threshold_rises_above_theta(llm, arith_prompt):
    (tree,) = gen(llm, [arith_prompt], theta=0.5, max_sequences=8, dynamic_threshold=True, max_new_tokens=64)
    assert tree.events
    assert all(e.threshold >= 0.5 for e in tree.events)
    assert any(e.threshold > 0.5 for e in tree.events)


def test_many_prompts_share_batches(llm):
    prompts = [f"What is {a} + {b}?" for a, b in [(2, 3), (10, 7), (41, 1), (8, 8)]]
    trees = gen(llm, prompts, theta=2.0, max_sequences=4, max_new_tokens=24)
    assert [t.index for t in trees] == [0, 1, 2, 3]
    assert all(t.sequences and all(s.finish_reason for s in t.sequences) for t in trees)


def test_kv_full_cuts_sequences_without_losing_tokens(llm, arith_prompt):
    """Memory for M + 1 streams of 256 cells only: sequences that reach the end of their stream
    finish with kv_full, keeping every token they sampled."""
    streams = 8 + 1
    tiny = Engine(llm.model, n_threads=llm.engine.n_threads, kv_memory=streams * 256 * llm.model.kv_bytes_per_cell())
    config = llm.config(theta=0.0, max_sequences=8, max_new_tokens=400, ignore_eos=True)
    (tree,) = tiny.generate(requests_for(llm, [arith_prompt]), config)
    assert tiny.context.n_ctx == streams * 256 and tiny.context.cells_per_seq == 256
    reasons = {s.finish_reason for s in tree.sequences}
    assert reasons == {T.KV_FULL}
    assert len(tree.sequences) == 8
    # each sequence filled its stream: prompt + every token but the last (never decoded) = 256 cells
    assert all(tree.prompt_tokens + len(s.tokens) - 1 == 256 for s in tree.sequences)
    tiny.context.close()


def test_kv_full_in_a_unified_cache_cuts_sequences_without_losing_tokens(llm, arith_prompt):
    """A caller who keeps sequences gets a unified cache; when its 256 cells run out, rows are cut."""
    tiny = Engine(llm.model, n_threads=llm.engine.n_threads, kv_memory=256 * llm.model.kv_bytes_per_cell())
    config = llm.config(theta=0.0, max_sequences=8, max_new_tokens=200)
    (tree,) = tiny.generate(requests_for(llm, [arith_prompt]), config, keep_sequences=True)
    assert tiny.context.size.unified and tiny.context.n_ctx == 256
    reasons = {s.finish_reason for s in tree.sequences}
    assert T.KV_FULL in reasons
    assert all(len(s.tokens) > 0 for s in tree.sequences)
    assert tree.generated_tokens + tree.prompt_tokens > 256 - 8  # it really filled the cache
    for seq in tree.sequences:
        tiny.release(seq.llama_seq)
    tiny.context.close()


def test_parked_sequence_resumes_exactly(llm, arith_prompt):
    """Save a sequence's state, drop it, disturb the cache, restore it elsewhere: same continuation."""
    model = llm.model
    prompt = llm.prompt_tokens(arith_prompt)
    ctx = Context(model, ContextSize(cells=256, n_seq_max=4, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        first = ctx.prefill(prompt, 0)
        head, logits = greedy(ctx, 0, first, len(prompt), 5)
        state = ctx.park(0)
        reference, ref_logits = greedy(ctx, 0, logits, len(prompt) + 5, 10)
        ctx.drop(0)
        ctx.prefill(model.tokenize("Something else entirely, to reuse the cells."), 1)
        ctx.restore(state, 2)
        assert ctx.seq_length(2) == len(prompt) + 5
        resumed, res_logits = greedy(ctx, 2, logits, len(prompt) + 5, 10)
        assert resumed == reference
        np.testing.assert_allclose(res_logits, ref_logits, atol=1e-3)
    finally:
        ctx.close()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(theta=-1.0), "theta"),
        (dict(max_sequences=0), "max-sequences"),
        (dict(max_new_tokens=0), "max-new-tokens"),
        (dict(method="beam"), "method"),
    ],
)
def test_nonsense_parameters_are_refused(llm, options, message):
    with pytest.raises(ConfigError, match=message):
        gen(llm, ["hi"], **options)


def test_prompt_longer_than_context_is_refused(llm):
    with pytest.raises(ConfigError, match="does not fit"):
        gen(llm, ["word " * (llm.model.n_ctx_train + 10)])


def test_a_request_may_raise_its_own_cap(llm, arith_prompt):
    """Reallocated EAGer runs give a prompt its own cap, above the config's M: it must be honoured."""
    config = llm.config(theta=0.0, max_sequences=2, max_new_tokens=24)
    request = Request(tokens=llm.prompt_tokens(arith_prompt), text=arith_prompt, max_sequences=6)
    (tree,) = llm.engine.generate([request], config)
    assert tree.started and len(tree.sequences) == 6


SIX_PROMPTS = [f"What is {a} + {a}?" for a in range(2, 8)]


def step_widths_of(llm, monkeypatch, engine, config) -> tuple[list, list[int]]:
    """Generate for SIX_PROMPTS; the trees and the number of rows of every decode step (prefills left out)."""
    widths = []
    original = Context.decode

    def observed(self, tokens, positions, seq_ids, want_logits):
        if len(set(np.asarray(seq_ids).tolist())) == len(tokens):  # a step: one token per row (a prefill
            widths.append(len(tokens))                             # decodes many into one sequence)
        return original(self, tokens, positions, seq_ids, want_logits)

    monkeypatch.setattr(Context, "decode", observed)
    requests = requests_for(llm, SIX_PROMPTS)
    trees = engine.generate(requests, config)
    engine.reset()
    return trees, widths


def test_new_prompts_wait_while_the_batch_is_full(llm, monkeypatch):
    """Admission stops at max_batch_rows live rows."""
    engine = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    config = llm.config(method="parallel", max_sequences=4, max_new_tokens=12)
    trees, step_widths = step_widths_of(llm, monkeypatch, engine, config)
    assert all(len(t.sequences) == 4 for t in trees)
    assert max(step_widths) <= 8  # two prompts of four rows at a time, never all six
    assert 8 in step_widths


def test_eager_prompts_are_admitted_by_the_rows_they_grow_to(llm):
    """In a unified cache (a caller that keeps sequences) an EAGer prompt starts as one row but
    branches: admission counts the rows it is expected to hold (before any prompt finished
    (1 + M) / 2, then learnt from finished prompts), not its first row. (On streams, the pool
    bounds the rows instead: tests/test_stream_pool.py.)"""
    engine = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=8)
    config = llm.config(theta=0.0, max_sequences=4, max_new_tokens=12)  # θ = 0: every prompt reaches 4
    trees = engine.generate(requests_for(llm, SIX_PROMPTS), config, keep_sequences=True)
    assert engine.context.size.unified and all(len(t.sequences) == 4 for t in trees)
    # 2.5 rows expected of each before any finished: three at first (7.5 <= 8; 12 rows once they
    # branched), never all six (admitted by their first row, six would grow to 24 rows)
    assert engine.stats.peak_rows <= 12 and engine.stats.peak_prompts == 3
    for tree in trees:
        for seq in tree.sequences:
            engine.release(seq.llama_seq)
    engine.reset()


def test_row_forecast_starts_halfway_to_the_cap_and_follows_finished_prompts():
    forecast = RowForecast(8)
    assert forecast.rows(8) == 4.5 and forecast.rows(3) == 3  # (1 + 8) / 2, never above the cap
    for _ in range(3):
        forecast.observe(peak_rows=2)
    assert forecast.rows(8) == pytest.approx((4.5 + 2 + 2 + 2) / 4)


# --- KV layout: a stream per sequence (run, eval) or one unified cache (chat) ------------------------
def test_streams_by_default_unified_when_sequences_are_kept(llm, arith_prompt):
    engine = Engine(llm.model, n_threads=llm.engine.n_threads)
    config = llm.config(theta=1.5, max_sequences=4, max_new_tokens=8)
    requests = requests_for(llm, [arith_prompt])
    engine.generate(requests, config)
    assert not engine.context.size.unified
    (tree,) = engine.generate(requests, config, keep_sequences=True)
    assert engine.context.size.unified
    for seq in tree.sequences:
        engine.release(seq.llama_seq)
    engine.reset()


def test_moved_and_forked_sequences_continue_exactly(llm, arith_prompt):
    """A fork copies the parent's stream before the next decode; a move renumbers a sequence; parking
    right after them (nothing decoded in between) must still save the copied cells."""
    prompt = llm.prompt_tokens(arith_prompt)
    ctx = Context(llm.model, ContextSize(cells=256, n_seq_max=4, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        head, logits = greedy(ctx, 0, ctx.prefill(prompt, 0), len(prompt), 5)
        ctx.fork(0, 1)
        ctx.move(1, 3)
        state = ctx.park(3)  # before any decode: the copies must be made first
        ctx.drop(3)
        ctx.restore(state, 2)
        assert [ctx.seq_length(i) for i in range(4)] == [len(prompt) + 5, 0, len(prompt) + 5, 0]
        original, original_logits = greedy(ctx, 0, logits, len(prompt) + 5, 10)
        copied, copied_logits = greedy(ctx, 2, logits, len(prompt) + 5, 10)
        assert copied == original
        np.testing.assert_allclose(copied_logits, original_logits, atol=1e-4)
    finally:
        ctx.close()


def batch_ids_of(llm, monkeypatch, engine, config) -> list[list[int]]:
    """The sequence ids of every generation step's batch (every row wants logits; prefills do not)."""
    batches = []
    original = Context.decode

    def observed(self, tokens, positions, seq_ids, want_logits):
        if len(tokens) and np.all(np.asarray(want_logits) == 1):
            batches.append([int(i) for i in seq_ids])
        return original(self, tokens, positions, seq_ids, want_logits)

    monkeypatch.setattr(Context, "decode", observed)
    engine.generate(requests_for(llm, SIX_PROMPTS), config)
    monkeypatch.setattr(Context, "decode", original)
    return batches


def test_rows_keep_one_block_of_increasing_ids(llm, monkeypatch):
    """llama.cpp runs one micro-batch per run of consecutive ids: rows that finish leave holes, and
    the engine moves the highest rows into them. A prompt's prefilled row skips one step (its
    logits come from the prefill), so admissions leave a hole for that step only."""
    config = llm.config(theta=1.8, max_sequences=4, max_new_tokens=40)

    def holed_steps(engine):
        batches = batch_ids_of(llm, monkeypatch, engine, config)
        assert all(ids == sorted(ids) for ids in batches)  # increasing, as llama.cpp wants them
        engine.reset()
        return sum(ids != list(range(ids[0], ids[0] + len(ids))) or ids[0] != 0 for ids in batches), len(batches)

    # A pool with a stream for every row the six prompts may grow to: no prompt pauses (a paused
    # prompt's rows keep their ids without being decoded, holes compaction must not fill).
    engine = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=24)
    holed, steps = holed_steps(engine)
    assert steps > 20
    assert holed <= len(SIX_PROMPTS)  # at most the step after each admission

    monkeypatch.setattr("eager_local.engine.streams.SequencePool.compact", lambda self, rows, parked=(): None)
    holed_without_moves, _ = holed_steps(engine)
    assert holed_without_moves > 2 * len(SIX_PROMPTS)


def test_a_paused_prompts_rows_leave_no_hole_in_the_block(llm, monkeypatch):
    """With a pool too small for every fork (θ = 0: six prompts all branch to M = 4, 5 rows, a pool
    of 7 streams and the spare) prompts pause; their rows hold ids without being decoded. The
    engine moves them above the decoded rows, so a step's ids stay one run of consecutive ids (one
    micro-batch) except in the step after an admission; without those moves they split steps."""
    from eager_local.engine import streams

    config = llm.config(theta=0.0, max_sequences=4, max_new_tokens=24, seed=3)
    waits = []
    original_wait = streams.SequencePool.wait
    monkeypatch.setattr(streams.SequencePool, "wait", lambda self, row, source: (waits.append(row.seq.id),
                                                                                  original_wait(self, row, source)))

    def split_steps(engine):
        batches = batch_ids_of(llm, monkeypatch, engine, config)
        engine.reset()
        return sum(any(b != a + 1 for a, b in zip(ids, ids[1:])) for ids in batches)

    engine = Engine(llm.model, n_threads=llm.engine.n_threads, max_batch_rows=5)
    split = split_steps(engine)
    assert waits, "no fork had to wait: the test no longer exercises paused prompts"
    assert split <= len(SIX_PROMPTS)  # at most the step after each admission

    original_compact = streams.SequencePool.compact
    monkeypatch.setattr(streams.SequencePool, "compact", lambda self, rows, parked=(): original_compact(self, rows))
    assert split_steps(engine) > 2 * len(SIX_PROMPTS)  # paused rows ignored: holes stay
