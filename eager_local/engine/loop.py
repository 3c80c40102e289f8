"""The step loop: every live sequence of every active prompt advances one token per llama_decode.

This is llama.cpp's `parallel` example with branching added. One call's state lives in a
`StepLoop`, and each step runs the same four stages:

    admit    while there is room, take the next waiting prompt and prefill it into a free sequence
             (after the cells an earlier prompt with the same opening left there, streams.py);
             its logits give the prompt's first row its first token. `parallel` forks that sequence
             M - 1 more times (the prompt's KV cells are copied, nothing is recomputed); EAGer
             starts with the one row.
    decode   one batch holding each live row's newest token: one llama_decode, one logits row per
             live row (`_decode_step`).
    advance  per row, all rows at once in numpy: the top-K entropy (entropy.py), the branch rule,
             cap and budget (branching.py), a sampled token (sampling.py). A branching row keeps its
             top-1 token and a new row, forked from it, takes the top-2 (`_advance`, `_fork`).
             Rows that stop (end of generation, length, budget, full KV) finish, and a prompt whose
             rows have all finished yields its tree.
    repeat   until no row is live and no prompt waits.

A row is a live sequence: its entry in the prompt's tree, its llama sequence id and its own random
stream (so a sequence samples the same tokens whichever rows share its batch). Sequence ids come
from a `SequencePool` (streams.py), which keeps the ids decoded together one contiguous block.

With a KV stream per sequence (run, eval, serve) the streams are one pool for all prompts, sized
like parallel sampling's batch (`sizing.plan_context`), not M per prompt: an EAGer prompt is
admitted when the pool can take it, and a prompt whose fork finds no stream pauses, in step, until
one frees (streams.py). Memory then stays at parallel sampling's while more prompts share the
batch, and the trees are those of an unlimited pool. A unified cache (chat) reserves M ids per
prompt instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from .. import branching as branching_rule
from .. import tree as T
from ..budget import TokenBudget
from ..config import GenerationConfig
from ..entropy import top_k_entropy, top_two_tokens
from ..llama import Context, KVCacheFull, Model
from ..sampling import sample_rows, sequence_rng, token_logprobs
from .groups import by_config, decide, entropy_key, sampling_key
from .request import Request, TokenCallback
from .sizing import RowForecast
from .state import WAITING, PromptRun, Row, StepStats, tree_settings
from .streams import SequencePool, safe


class StepLoop:
    """One call's worth of generation state over a context the Engine sized for it.

    Each prompt runs with its request's config when it has one (`Request.config`: a server's
    requests differ in method, θ, M, length, seed and sampling), else with the call's `config`.

    kept_ids: the sequence ids the engine keeps alive for its caller; this call never hands them
    out, and with keep=True its finished sequences join them instead of being dropped.
    """

    def __init__(self, ctx: Context, model: Model, requests: list[Request], config: GenerationConfig,
                 budget: TokenBudget, *, on_token: TokenCallback | None, keep: bool, concurrent: int,
                 kept_ids: set[int], stats: StepStats, max_batch_rows: int):
        self.ctx = ctx
        self.model = model
        self.config = config
        self.budget = budget
        self.on_token = on_token
        self.keep = keep
        self.kept_ids = kept_ids
        self.stats = stats
        self.max_batch_rows = max_batch_rows
        self.concurrent = concurrent
        self.pending = list(requests)
        self.pending.reverse()  # pop() from the end = request order
        self.runs: list[PromptRun] = []
        self.rows: list[Row] = []
        # A stream per sequence and nothing kept between calls: the streams are one pool (above).
        self.ids = SequencePool(ctx, kept_ids, pooled=not ctx.size.unified and not keep)
        self._think_tokens: dict[str | None, int | None] = {}
        self.context_limit = model.n_ctx_train
        self.forecast = RowForecast(max((r.max_sequences or (r.config or config).max_sequences for r in requests),
                                        default=config.max_sequences))

    # main loop ----------------------------------------------------------------------------------
    def run(self) -> Iterator[T.Tree]:
        yield from self._admit()
        while self.rows:
            rows, logits = self._decode_step()
            self.stats.record(len(rows), len(self.runs))
            yield from self._advance(rows, logits)
            self.ids.start_waiting(self._may_take)
            yield from self._admit()
        # Budget ran out before these prompts got a turn: report them, empty.
        while self.pending:
            yield self._result(self.pending.pop(), None)

    # admit --------------------------------------------------------------------------------------
    def _admit(self) -> Iterator[T.Tree]:
        """Start waiting prompts while there is room: prefill, then 1 (eager) or M (parallel) rows.

        Room means fewer than `concurrent` prompts active, the rows they hold or are expected to
        hold under the batch limit (the first prompt is always let in), and
        - pooled streams: no fork waiting for a stream, and ids for the prompt's first row (M for
          parallel sampling) that leave every prompt able to finish (`streams.safe`);
        - unified cache: M free sequence ids beyond those the active prompts reserved.
        """
        while self.pending and len(self.runs) < self.concurrent and not self.budget.exhausted:
            request = self.pending.pop()
            config = request.config or self.config
            cap = request.max_sequences or config.max_sequences
            parallel = config.method == "parallel"
            batch_full = self.runs and self._reserved_rows() + self._expected_rows(cap, parallel=parallel) > self.max_batch_rows
            if self.ids.pooled:
                rows = cap if parallel else 1
                room = (not self.ids.waiting and len(self.ids.free) >= rows
                        and safe(len(self.ids.free) - rows, self._claims() + [(rows, cap - rows)]))
            else:
                room = len(self.ids.free) - sum(run.reserved for run in self.runs) >= cap
            if batch_full or not room:
                self.pending.append(request)
                break
            tree = T.Tree(prompt=request.text, prompt_tokens=len(request.tokens), method=config.method,
                          index=request.index, settings=tree_settings(config, cap, request))
            run = PromptRun(
                request=request,
                config=config,
                tree=tree,
                cap=cap,
                theta=config.theta if request.theta is None else request.theta,
                reserved=0 if self.ids.pooled else cap,
                started_at=time.perf_counter(),
                branching_open=not parallel,
                think_token=self._think_token(config),
            )
            llama_id, cached = self._first_id(run)
            try:
                first_logits = self._prefill(run, llama_id, cached)
            except KVCacheFull:
                self.ids.put_back(llama_id)
                run.reserved = 0
                self.pending.append(request)
                if not self.runs:  # nothing will ever free space: report and move on
                    self.pending.pop()
                    yield self._result(request, None)
                return
            self.runs.append(run)
            root = self._new_row(run, parent=None, fork_at=0, tokens=[], llama_id=llama_id)
            root.fresh_logits = first_logits  # the prefill's sequence becomes the first row
            if parallel:
                for _ in range(cap - 1):
                    row = self._new_row(run, parent=None, fork_at=0, tokens=[], llama_id=self._take_id(run))
                    self.ctx.fork(root.llama_id, row.llama_id)
                    row.fresh_logits = first_logits

    def _expected_rows(self, cap: int, run: PromptRun | None = None, *, parallel: bool = False) -> float:
        """Rows a prompt holds or is expected to hold: M for parallel, the forecast for EAGer
        (a new prompt, of method `parallel` or not, when `run` is None)."""
        if run is not None:
            parallel = run.parallel
        if parallel:
            return cap if run is None else run.live
        if run is not None and not run.branching_open:
            return run.live  # it will not grow any more
        expected = self.forecast.rows(cap)
        return expected if run is None else max(run.live, expected)

    def _reserved_rows(self) -> float:
        return sum(self._expected_rows(run.cap, run) for run in self.runs)

    def _think_token(self, config: GenerationConfig) -> int | None:
        marker = config.end_of_thinking
        if marker not in self._think_tokens:
            self._think_tokens[marker] = self.model.single_token(marker) if marker else None
        return self._think_tokens[marker]

    def _first_id(self, run: PromptRun) -> tuple[int, int]:
        """A new prompt's first id and how many prompt tokens its cells hold already: a kept
        conversation's (`Request.prefix_seq`), the prompt cache's (pooled streams, streams.py; not
        when every prompt token's logits are wanted), or none."""
        request = run.request
        if request.prefix_seq is not None:
            llama_id, start = self._take_id(run), min(request.reuse, len(request.tokens) - 1)  # decode >= 1 token
            self.ctx.fork(request.prefix_seq, llama_id)
            self.ctx.truncate(llama_id, start)
            return llama_id, start
        if self.ids.pooled and request.on_prompt_logprobs is None:
            return self.ids.take_for_prompt(request.tokens)
        return self._take_id(run), 0

    def _prefill(self, run: PromptRun, llama_id: int, start: int) -> np.ndarray:
        """Decode the prompt into `llama_id` after its first `start` tokens; its last logits.
        A request with `on_prompt_logprobs` gets its prompt tokens' log-probabilities."""
        request = run.request
        scored: list[tuple] = []
        on_logits = None
        if request.on_prompt_logprobs is not None:
            def on_logits(first: int, logits: np.ndarray) -> None:  # row i predicts the token after it
                for i in range(len(logits)):
                    if (at := start + first + i + 1) < len(request.tokens):
                        token = request.tokens[at]
                        scored.append((token, *token_logprobs(logits[i], token, request.top_logprobs)))
        try:
            logits = self.ctx.prefill(request.tokens[start:], llama_id, start_pos=start, on_logits=on_logits)
        except KVCacheFull:
            self.ctx.drop(llama_id)  # earlier chunks may have landed
            raise
        if request.on_prompt_logprobs is not None:
            request.on_prompt_logprobs(scored)
        run.tree.cached_tokens = start
        self.stats.record_prompt(len(request.tokens), start)
        return logits

    # sequence ids -------------------------------------------------------------------------------
    def _take_id(self, run: PromptRun) -> int:
        run.reserved = max(0, run.reserved - 1)
        return self.ids.take()

    def _claims(self, taking: PromptRun | None = None) -> list[tuple[int, int]]:
        """(ids held, ids it may still claim) of every active prompt, after `taking` took one more.
        A prompt may claim an id for each waiting row and each sequence it may still fork."""
        claims = []
        for run in self.runs:
            forks_left = run.cap - len(run.tree.sequences) if run.branching_open and not run.parallel else 0
            waiting = self.ids.waiting_for(run)
            held, claim = run.live - waiting, waiting + max(0, forks_left)
            claims.append((held + 1, claim - 1) if run is taking else (held, claim))
        return claims

    def _may_take(self, run: PromptRun) -> bool:
        """Whether `run` may take a free id now without risking that the prompts lock up."""
        return bool(self.ids.free) and safe(len(self.ids.free) - 1, self._claims(taking=run))

    def _new_row(self, run: PromptRun, *, parent, fork_at, tokens, llama_id, source: Row | None = None) -> Row:
        seq = T.Sequence(id=len(run.tree.sequences), parent=parent, fork_at=fork_at, tokens=tokens)
        seq.entropies = []
        run.tree.sequences.append(seq)
        seed = run.config.seed if run.request.seed is None else run.request.seed
        rng = sequence_rng(seed, run.request.index, run.request.first_sequence + run.n_created)
        run.n_created += 1
        run.live += 1
        run.peak_live = max(run.peak_live, run.live)
        row = Row(seq=seq, run=run, llama_id=llama_id, rng=rng)
        if row.waiting:
            self.ids.wait(row, source)
        self.rows.append(row)
        return row

    # decode -------------------------------------------------------------------------------------
    def _decode_step(self) -> tuple[list[Row], np.ndarray]:
        """Decode the newest token of every row whose prompt is not paused, in one batch; those
        rows and their logits, in the same order.

        Rows admitted this step already have logits from their prefill: they are not decoded and
        go last (self.rows is reordered to match, paused prompts' rows after them).
        """
        paused_runs = {id(w.run) for w in self.ids.waiting}
        paused = [r for r in self.rows if id(r.run) in paused_runs]
        decoded = [r for r in self.rows if r.fresh_logits is None and id(r.run) not in paused_runs]
        fresh = [r for r in self.rows if r.fresh_logits is not None and id(r.run) not in paused_runs]
        self.ids.compact(decoded + fresh, parked=paused)  # a waiting row always pauses its prompt
        while decoded:
            ids = np.fromiter((r.llama_id for r in decoded), dtype=np.int32, count=len(decoded))
            # streams: llama.cpp wants increasing ids (see Context)
            order = np.arange(len(ids)) if self.ctx.size.unified else np.argsort(ids, kind="stable")
            in_order = [decoded[i] for i in order]
            tokens = np.fromiter((r.seq.tokens[-1] for r in in_order), dtype=np.int32, count=len(decoded))
            positions = np.fromiter((r.position for r in in_order), dtype=np.int32, count=len(decoded))
            try:
                view = self.ctx.decode(tokens, positions, ids[order], np.ones(len(decoded), dtype=np.int8))
                if np.any(order != np.arange(len(order))):
                    view = view[np.argsort(order)]  # back to row order (a copy)
                break
            except KVCacheFull:
                # No room for this step: stop forking everywhere and cut the newest sequence,
                # whose cells are the likeliest to be its own; retry with the rest.
                for run in self.runs:
                    run.branching_open = False
                victim = decoded.pop()
                self._finish(victim, T.KV_FULL)
        else:  # nothing to decode (every row is fresh, or a full cache cut them all)
            view = np.empty((0, self.model.n_vocab), dtype=np.float32)
        self.rows = decoded + fresh + paused
        if fresh:
            view = np.concatenate([view] + [r.fresh_logits[None, :] for r in fresh])
            for r in fresh:
                r.fresh_logits = None
        return decoded + fresh, view

    # advance ------------------------------------------------------------------------------------
    def _advance(self, rows: list[Row], logits: np.ndarray) -> Iterator[T.Tree]:
        """Choose each row's next token (branching where the rule says) and retire finished rows."""
        rows = list(rows)  # children created below are appended to self.rows, not here
        n = len(rows)
        if n == 0:  # a full cache cut every row: their prompts are complete
            yield from self._completed_runs()
            return
        entropies, computed = self._entropies(rows, logits)
        thresholds = {id(run): run.threshold(run.config.dynamic_threshold) for run in self.runs}
        open_rows = np.fromiter((r.run.branching_open for r in rows), dtype=bool, count=n)
        branching, cut = decide(
            np.where(open_rows, entropies, np.nan),  # NaN never branches
            np.fromiter((thresholds[id(r.run)] for r in rows), dtype=np.float64, count=n),
            np.fromiter((id(r.run) for r in rows), dtype=np.int64, count=n),
            {id(run): len(run.tree.sequences) for run in self.runs},
            {id(run): run.cap for run in self.runs},
            self.budget.remaining,
            {id(run): run.budget_left for run in self.runs if run.request.budget is not None},
        )

        tokens = self._sample(rows, logits, ~branching & ~cut)
        branched_runs: set[int] = set()
        children: list[tuple[Row, int]] = []  # each with its parent's row index
        for i in np.flatnonzero(branching):
            row = rows[i]
            top1, top2 = top_two_tokens(logits[i])
            tokens[i] = top1
            children.append((self._fork(row, top2, float(entropies[i]), thresholds[id(row.run)], top1), i))
            branched_runs.add(id(row.run))

        for i in np.flatnonzero(computed & open_rows):
            if rows[i].run.config.dynamic_threshold:
                rows[i].run.entropy_history.append(float(entropies[i]))

        for i, row in enumerate(rows):
            if cut[i]:
                self._finish(row, T.BUDGET)
            else:
                self._report_logprobs(row, logits[i], int(tokens[i]))
                self._append(row, int(tokens[i]), float(entropies[i]))
        for child, i in children:  # its token (the top-2) was appended by _fork
            self._report_logprobs(child, logits[i], child.seq.tokens[-1])
            self._after_token(child)

        self._update_windows(branched_runs)
        self.rows = [r for r in self.rows if r.seq.finish_reason is None]
        yield from self._completed_runs()

    def _entropies(self, rows: list[Row], logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top-K entropy where a branch may happen (everywhere with record_entropies),
        never past the end of thinking; NaN elsewhere. Also returns where it was computed."""
        n = len(rows)
        entropies = np.full(n, np.nan)
        computed = np.fromiter(
            ((r.run.config.record_entropies or r.run.branching_open) and not r.past_thinking for r in rows),
            dtype=bool, count=n,
        )
        if computed.any():
            for (k, temperature), idx in by_config(rows, np.flatnonzero(computed), entropy_key):
                subset = logits if len(idx) == n else logits[idx]  # no copy in the common case
                entropies[idx] = top_k_entropy(subset, k, temperature or 1.0)
        return entropies, computed

    def _sample(self, rows: list[Row], logits: np.ndarray, sampled: np.ndarray) -> np.ndarray:
        """A sampled token for each row in `sampled` (one uniform from each row's own stream); 0 elsewhere."""
        n = len(rows)
        tokens = np.zeros(n, dtype=np.int64)
        if sampled.any():
            for params, idx in by_config(rows, np.flatnonzero(sampled), sampling_key):
                uniforms = np.fromiter((rows[i].rng.random() for i in idx), dtype=np.float64, count=len(idx))
                subset = logits if len(idx) == n else logits[idx]
                tokens[idx] = sample_rows(subset, uniforms, params)
        return tokens

    def _report_logprobs(self, row: Row, logits: np.ndarray, token: int) -> None:
        """The token's log-probability, for a request that asked for them (Request.on_logprobs)."""
        request = row.run.request
        if request.on_logprobs is not None:
            logprob, top = token_logprobs(logits, token, request.top_logprobs)
            request.on_logprobs(row.seq, token, logprob, top)

    def _update_windows(self, branched_runs: set[int]) -> None:
        """Count the step for every prompt; close branching where the window ran out or the cap is reached."""
        for run in self.runs:
            run.tree.steps += 1
            if not run.branching_open:
                continue
            run.steps_since_branch = 0 if id(run) in branched_runs else run.steps_since_branch + 1
            if (not branching_rule.window_open(run.steps_since_branch, run.config.branch_window)
                    or not branching_rule.under_cap(len(run.tree.sequences), run.cap)):
                run.branching_open = False

    def _fork(self, parent: Row, top2: int, entropy: float, threshold: float, top1: int) -> Row:
        """A new row continuing `parent`'s prefix with the second most likely token (it waits for
        a stream when the pool has none free)."""
        run = parent.run
        prefix = list(parent.seq.tokens)
        if self.ids.pooled and not self._may_take(run):
            llama_id = WAITING
        else:
            llama_id = self._take_id(run)
            self.ctx.fork(parent.llama_id, llama_id)  # copies the prefix's cells: nothing recomputed
        child = self._new_row(run, parent=parent.seq.id, fork_at=len(prefix), tokens=prefix, llama_id=llama_id,
                              source=parent)
        child.seq.entropies = list(parent.seq.entropies)
        child.past_thinking = parent.past_thinking
        run.tree.events.append(
            T.BranchEvent(
                step=len(prefix),
                parent=parent.seq.id,
                child=child.seq.id,
                entropy=entropy,
                threshold=threshold,
                top1=top1,
                top2=top2,
                top1_text=self.model.detokenize([top1]),
                top2_text=self.model.detokenize([top2]),
            )
        )
        child.seq.tokens.append(top2)
        child.seq.entropies.append(entropy)
        self.budget.spend(1)
        run.spent += 1
        return child

    def _append(self, row: Row, token: int, entropy: float) -> None:
        row.seq.tokens.append(token)
        row.seq.entropies.append(entropy)
        self.budget.spend(1)
        row.run.spent += 1
        self._after_token(row)

    # finish -------------------------------------------------------------------------------------
    def _after_token(self, row: Row) -> None:
        """Report the row's newest token and finish the row if that token ends it."""
        token = row.seq.tokens[-1]
        run = row.run
        if self.on_token:
            self.on_token(run.tree, row.seq, token)
        stopped = run.request.on_token(run.tree, row.seq, token) if run.request.on_token else None
        if token == run.think_token:
            row.past_thinking = True
        if stopped:  # True: a stop string; a finish reason: the callback's own (Request's TokenCallback)
            self._finish(row, stopped if isinstance(stopped, str) else T.STOP)
        elif self.model.is_eog(token) and not run.config.ignore_eos:
            self._finish(row, T.STOP)
        elif len(row.seq.tokens) >= run.config.max_new_tokens or row.position + 1 >= self.context_limit:
            self._finish(row, T.LENGTH)
        elif row.position >= self.ctx.cells_per_seq:  # its stream is full (streams under a tight memory limit)
            self._finish(row, T.KV_FULL)

    def _finish(self, row: Row, reason: str) -> None:
        """End a row: keep its sequence for the caller (keep=True), hand its stream to a fork
        waiting on its prefix, or free its cells and id."""
        if row.seq.finish_reason is not None:
            return
        row.seq.finish_reason = reason
        row.run.live -= 1
        if self.keep:
            row.seq.llama_seq = row.llama_id
            self.kept_ids.add(row.llama_id)
        else:
            self.ids.release(row)

    def _completed_runs(self) -> Iterator[T.Tree]:
        done = [run for run in self.runs if run.live == 0]
        for run in done:
            self.runs.remove(run)
            if not run.parallel:
                self.forecast.observe(run.peak_live)
            yield self._result(run.request, self._finalize(run))

    def _result(self, request: Request, tree: T.Tree | None):
        """What the loop yields for a completed prompt: its tree (None: it never started, see
        `_empty_tree`). A loop that serves many callers yields (request, tree) instead."""
        return self._empty_tree(request) if tree is None else tree

    def _finalize(self, run: PromptRun) -> T.Tree:
        tree = run.tree
        tree.wall_time = time.perf_counter() - run.started_at
        for seq in tree.sequences:
            seq.text = self.model.detokenize(t for t in seq.tokens if not self.model.is_eog(t))
        return tree

    def _empty_tree(self, request: Request) -> T.Tree:
        """The tree of a prompt that never started (no budget, or no room for its prompt)."""
        config = request.config or self.config
        return T.Tree(
            prompt=request.text,
            prompt_tokens=len(request.tokens),
            method=config.method,
            index=request.index,
            settings=tree_settings(config, request.max_sequences or config.max_sequences, request),
            started=False,
        )

    # interruption -------------------------------------------------------------------------------
    def cancel(self) -> Iterator[T.Tree]:
        """End every live row with finish reason `cancelled`; yield the trees that completes."""
        for row in list(self.rows):
            self._finish(row, T.CANCELLED)
        self.rows = []
        yield from self._completed_runs()

    def abandon(self) -> None:
        """Free everything this call holds in the context (the caller lets the interrupt through)."""
        self.ids.drop_all(self.rows)

