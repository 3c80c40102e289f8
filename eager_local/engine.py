"""The step loop: every live sequence of every active prompt advances one token per llama_decode.

Two strategies are policies over one loop (eager-method.md §2 and §4):
- `parallel`: prefill the prompt once, fork it M ways, sample M independent sequences;
- `eager-init`: start with one sequence; a live sequence whose top-K entropy exceeds θ branches:
  it keeps the most likely token and a new sequence (forked KV, nothing recomputed) takes the second.

The loop follows llama.cpp's `parallel` example: one batch per step with one token per live row,
prompts admitted as earlier ones finish so the batch stays full, sequence ids recycled.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from . import branching as branching_rule
from . import tree as T
from .budget import TokenBudget
from .config import MAX_SEQUENCES, METHODS, ConfigError, GenerationConfig  # noqa: F401 (re-exported)
from .entropy import top_k_entropy, top_two_tokens
from .llama import Context, ContextSize, KVCacheFull, Model
from .sampling import sample_rows, sequence_rng
DEFAULT_KV_MEMORY = 2 << 30  # bytes of KV cache the engine allocates at most by default
# New prompts are admitted while the rows the active prompts hold or are expected to hold stay under
# this (a soft limit: EAGer prompts may outgrow their forecast). In a unified KV cache every row
# attends over all cells in use, so admitting every prompt at once made steps slower per token:
# 16 prompts x 8 samples ran at 74 tokens/s, 4 at a time (32 rows) at 104 (docs/results.md). With a
# stream per sequence that cost is gone, but each admitted prompt still reserves M streams of memory
# and batching gains flatten out before 32 rows on a CPU (BENCHMARKS.md).
DEFAULT_BATCH_ROWS = 32


def default_kv_memory() -> int:
    """At most 2 GiB of KV cache, and at most a quarter of the memory available now."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    except (ValueError, OSError):
        pages = 0
    if not pages:
        try:
            pages = os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return DEFAULT_KV_MEMORY
    return max(64 << 20, min(DEFAULT_KV_MEMORY, pages * os.sysconf("SC_PAGE_SIZE") // 4))


@dataclass
class StepStats:
    """How full the step loop kept its batches. An Engine sums every call into `engine.stats`;
    replace it with a fresh StepStats to measure one stretch of work."""

    steps: int = 0
    row_steps: int = 0  # rows decoded, summed over steps
    prompt_steps: int = 0  # prompts active, summed over steps
    peak_rows: int = 0
    peak_prompts: int = 0

    def record(self, rows: int, prompts: int) -> None:
        self.steps += 1
        self.row_steps += rows
        self.prompt_steps += prompts
        self.peak_rows = max(self.peak_rows, rows)
        self.peak_prompts = max(self.peak_prompts, prompts)

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "mean_rows": round(self.row_steps / self.steps, 2) if self.steps else 0.0,
            "mean_prompts": round(self.prompt_steps / self.steps, 2) if self.steps else 0.0,
            "peak_rows": self.peak_rows,
            "peak_prompts": self.peak_prompts,
        }


# The KV layout (see llama.Context): "auto" = a stream per sequence, unless the caller keeps
# sequences (chat), which gets a unified cache; "unified" always (the layout before streams, kept
# for A/B runs: scripts/bench_admission.py).
KV_LAYOUTS = ("auto", "unified")

# How an EAGer prompt is counted when deciding whether another prompt fits in the batch.
ADMISSION_RULES = ("peak", "mean", "first-row")


class RowForecast:
    """How many rows an EAGer prompt will hold, learnt while a call runs.

    An EAGer prompt starts as one row; admitting by that first row ("first-row") let every prompt
    in and the batch then branched far past the row limit (GSM8K: 32 prompts admitted, 3.4
    sequences each, 74 rows per step on average). "peak" counts the mean widest point of the
    prompts finished so far, "mean" their mean width over their lifetime. Both start from one
    pseudo-observation halfway between one row and the cap M (before any prompt has finished, that
    is all the engine knows), and later ones follow what the model actually does. (Starting from M
    admitted only 4 of the 8 prompts of a calibration check, which then ran in two waves.)
    """

    def __init__(self, cap: int, rule: str = "peak"):
        self.rule = rule
        self.total = (1 + cap) / 2
        self.count = 1

    def observe(self, peak_rows: int, mean_rows: float) -> None:
        self.total += peak_rows if self.rule == "peak" else mean_rows
        self.count += 1

    def rows(self, cap: int) -> float:
        if self.rule == "first-row":
            return 1.0
        return min(float(cap), self.total / self.count)


@dataclass
class Request:
    """One prompt to generate for.

    `tokens` is the full prompt. To continue a conversation already in the KV cache, name the
    llama sequence holding it (`prefix_seq`) and how many leading tokens of `tokens` it already
    holds (`reuse`): only the rest is decoded.
    """

    tokens: list[int]
    text: str = ""
    index: int = 0  # selects the random streams: same index and seed, same samples
    max_sequences: int | None = None  # overrides the config's cap (reallocated EAGer runs)
    theta: float | None = None  # overrides the config's θ (full EAGer retries)
    seed: int | None = None  # overrides the config's seed (a calibration check runs a prompt with several)
    prefix_seq: int | None = None
    reuse: int = 0


@dataclass
class _Row:
    """A live sequence: its tree entry, its llama sequence id and its random stream."""

    seq: T.Sequence
    run: "_PromptRun"
    llama_id: int
    rng: np.random.Generator
    past_thinking: bool = False
    fresh_logits: np.ndarray | None = None  # set until the row's first decode (right after prefill)

    @property
    def position(self) -> int:  # KV position of the row's newest token
        return self.run.tree.prompt_tokens + len(self.seq.tokens) - 1


@dataclass
class _PromptRun:
    request: Request
    tree: T.Tree
    cap: int
    theta: float
    reserved: int  # llama sequence ids this prompt may still take (M at admission, one per sequence)
    started_at: float
    branching_open: bool = True
    steps_since_branch: int = 0
    live: int = 0
    peak_live: int = 0
    n_created: int = 0
    entropy_history: list[float] = field(default_factory=list)

    def threshold(self, dynamic: bool) -> float:
        return branching_rule.threshold(self.theta, self.entropy_history, dynamic)


TokenCallback = Callable[[T.Tree, T.Sequence, int], None]


class Engine:
    """Loads nothing itself: give it a Model. Keeps one llama.cpp context, grown on demand."""

    def __init__(
        self,
        model: Model,
        *,
        n_threads: int | None = None,
        kv_memory: int | None = None,
        max_concurrent_prompts: int | None = None,
        max_batch_rows: int = DEFAULT_BATCH_ROWS,
        admission: str = "peak",
        kv_layout: str = "auto",
    ):
        self.model = model
        self.n_threads = n_threads
        self.kv_memory = kv_memory or default_kv_memory()
        self.max_concurrent_prompts = max_concurrent_prompts
        self.max_batch_rows = max_batch_rows
        if admission not in ADMISSION_RULES:
            raise ConfigError(f"unknown admission rule {admission!r}; choose from {', '.join(ADMISSION_RULES)}")
        self.admission = admission  # "first-row" is the old rule, kept for A/B runs
        if kv_layout not in KV_LAYOUTS:
            raise ConfigError(f"unknown KV layout {kv_layout!r}; choose from {', '.join(KV_LAYOUTS)}")
        self.kv_layout = kv_layout
        self.stats = StepStats()
        self.context: Context | None = None
        self._pinned: set[int] = set()  # llama ids kept alive for the caller (chat branches)

    # sizing -------------------------------------------------------------------------------------
    def plan_context(self, longest_prompt: int, config: GenerationConfig, n_prompts: int,
                     unified: bool = False) -> tuple[ContextSize, int]:
        """Size the context for the work; return it and how many prompts may run at once.

        Each active prompt reserves its worst case, so no sequence runs out of cells in normal
        operation, and the memory limit lowers concurrency before that. Streams (see Context):
        every sequence gets a stream long enough for the longest prompt and a full generation, M
        per prompt (sequences kept for the caller imply a unified cache: see stream()); if even one
        prompt's streams do not fit, they are shortened and sequences that reach the end of theirs
        finish with `kv_full`.
        Unified: a prompt reserves its prompt plus M full-length sequences of cells.
        """
        cap = config.max_sequences
        pinned = len(self._pinned)
        cell_limit = self._cell_limit()
        if unified:
            per_prompt = longest_prompt + cap * config.max_new_tokens
            prompts_that_fit = cell_limit // per_prompt
        else:
            stream = _round_up(longest_prompt + config.max_new_tokens, 256)
            prompts_that_fit = (cell_limit // stream - pinned - 1) // cap
        concurrent = min(
            n_prompts,
            max(1, (MAX_SEQUENCES - pinned - 1) // cap),
            max(1, prompts_that_fit),
            self.max_concurrent_prompts or n_prompts,
        )
        if config.method == "parallel":  # admission never lets more in (M rows each): reserve no more
            concurrent = min(concurrent, max(1, self.max_batch_rows // cap))
        n_seq = min(MAX_SEQUENCES, concurrent * cap + pinned + 1)  # +1: a spare (Context._apply_copies)
        n_seq = max(n_seq, max(self._pinned, default=0) + 1)  # kept sequences keep their ids
        if unified:
            cells = _round_up(max(min(cell_limit, concurrent * per_prompt + self._pinned_cells()), longest_prompt + 1), 256)
        elif n_seq * stream <= cell_limit:
            cells = stream
        else:  # not even one prompt fits at full length
            cells = max(_round_up(longest_prompt + 1, 256), cell_limit // n_seq // 256 * 256, 256)
        return ContextSize(cells=cells, n_seq_max=n_seq, n_batch=max(512, n_seq), unified=unified), concurrent

    def _cell_limit(self) -> int:
        """KV cells the memory limit allows."""
        return max(256, self.kv_memory // self.model.kv_bytes_per_cell())

    def _pinned_cells(self) -> int:
        if not self.context:
            return 0
        return sum(self.context.seq_length(s) for s in self._pinned)

    def _ensure_context(self, size: ContextSize) -> Context:
        ctx = self.context
        if (ctx and ctx.size.unified == size.unified and ctx.cells_per_seq >= size.cells
                and ctx.size.n_seq_max >= size.n_seq_max):
            return ctx
        # Growing the context: park the sequences the caller keeps and restore them under the same
        # ids (kept sequences exist only in unified contexts: llama.cpp cannot restore a saved
        # sequence into a context with another number of streams).
        kept = {i: ctx.park(i) for i in sorted(self._pinned)} if ctx else {}
        if ctx and ctx.size.unified == size.unified:
            # Keep what the old context could do and grow by at least half again, so a conversation
            # that lengthens turn by turn does not rebuild its context every turn; within the
            # memory limit.
            grown = _round_up(ctx.cells_per_seq * 3 // 2, 256)
            roomy = replace(size, n_seq_max=max(size.n_seq_max, ctx.size.n_seq_max),
                            n_batch=max(size.n_batch, ctx.size.n_batch))
            if size.unified:
                size = replace(roomy, cells=max(size.cells, min(self._cell_limit(), grown)))
            else:
                cells = max(size.cells, grown) if size.cells > ctx.cells_per_seq else ctx.cells_per_seq
                roomy = replace(roomy, cells=cells)
                size = roomy if roomy.n_ctx <= self._cell_limit() else size
        if ctx:
            ctx.close()
        self.context = Context(self.model, size, n_threads=self.n_threads)
        for llama_id, state in kept.items():
            self.context.restore(state, llama_id)
        return self.context

    def reset(self) -> None:
        """Free the llama.cpp context (its KV cache); the next call creates a fresh one."""
        if self._pinned:
            raise RuntimeError("release or park the kept sequences before resetting the engine")
        if self.context:
            self.context.close()
            self.context = None

    # pinned sequences (for chat) ----------------------------------------------------------------
    def release(self, llama_id: int) -> None:
        """Drop a sequence the caller kept with keep_sequences=True."""
        if llama_id in self._pinned and self.context:
            self.context.drop(llama_id)
        self._pinned.discard(llama_id)

    def park(self, llama_id: int) -> bytes:
        """Save a kept sequence's KV state as bytes and free its cells."""
        state = self.context.park(llama_id)
        self.release(llama_id)
        return state

    def restore(self, state: bytes) -> int:
        """Load a parked sequence into a free id and keep it; returns the id."""
        llama_id = self._free_pinned_id()
        self.context.restore(state, llama_id)
        self._pinned.add(llama_id)
        return llama_id

    def _free_pinned_id(self) -> int:
        # Kept sequences take ids from the top so generation's low ids stay contiguous.
        for candidate in range(self.context.size.n_seq_max - 1, -1, -1):
            if candidate not in self._pinned:
                return candidate
        raise KVCacheFull("no free sequence id to restore into")

    # generation ---------------------------------------------------------------------------------
    def generate(self, requests: list[Request], config: GenerationConfig, **kwargs) -> list[T.Tree]:
        """Generate for all requests; trees in request order."""
        trees = list(self.stream(requests, config, **kwargs))
        return sorted(trees, key=lambda t: t.index)

    def stream(
        self,
        requests: list[Request],
        config: GenerationConfig,
        *,
        budget: TokenBudget | None = None,
        on_token: TokenCallback | None = None,
        keep_sequences: bool = False,
        catch_interrupt: bool = False,
    ) -> Iterator[T.Tree]:
        """Yield each prompt's tree as soon as it is complete (completion order).

        keep_sequences: leave finished sequences in the KV cache (their `llama_seq` is set) for
        the caller to continue, park or release; the engine then uses a unified KV cache. catch_interrupt: on Ctrl-C, end live sequences
        with finish reason `cancelled` and yield what exists instead of raising.
        """
        config.validate()
        budget = budget or TokenBudget()
        if not requests:
            return
        longest = max(len(r.tokens) for r in requests)
        self._check_prompt_lengths(requests)
        # Size for the largest per-request cap (reallocated runs override M), or it would never fit.
        biggest_cap = max(r.max_sequences or config.max_sequences for r in requests)
        if not 1 <= biggest_cap <= MAX_SEQUENCES:
            raise ConfigError(f"max-sequences must be between 1 and {MAX_SEQUENCES}, got {biggest_cap}")
        # Streams decode faster; a caller who keeps sequences (chat) gets a unified cache, where a
        # long shared history is stored once and kept sequences survive a context rebuild.
        unified = self.kv_layout == "unified" or keep_sequences or bool(self._pinned)
        size, concurrent = self.plan_context(longest, replace(config, max_sequences=biggest_cap), len(requests), unified)
        ctx = self._ensure_context(size)
        loop = _StepLoop(self, ctx, requests, config, budget, on_token, keep_sequences, concurrent)
        try:
            yield from loop.run()
        except KeyboardInterrupt:
            if not catch_interrupt:
                loop.abandon()
                raise
            yield from loop.cancel()

    def _check_prompt_lengths(self, requests: list[Request]) -> None:
        limit = self.model.n_ctx_train
        for r in requests:
            if not r.tokens:
                raise ConfigError("empty prompt")
            if len(r.tokens) >= limit:
                raise ConfigError(
                    f"prompt of {len(r.tokens)} tokens does not fit the model's context of {limit} tokens"
                )


class _StepLoop:
    """One call's worth of generation state. Separate from Engine so Engine stays reusable."""

    def __init__(self, engine, ctx, requests, config, budget, on_token, keep, concurrent):
        self.engine = engine
        self.model: Model = engine.model
        self.ctx: Context = ctx
        self.config: GenerationConfig = config
        self.budget: TokenBudget = budget
        self.on_token = on_token
        self.keep = keep
        self.concurrent = concurrent
        self.pending = list(requests)
        self.pending.reverse()  # pop() from the end = request order
        self.runs: list[_PromptRun] = []
        self.rows: list[_Row] = []
        self.parallel = config.method == "parallel"
        self.think_token = self.model.single_token(config.end_of_thinking) if config.end_of_thinking else None
        # A min-heap: sequences take the lowest free ids, so the ids decoded together stay a
        # contiguous block (llama.cpp runs one micro-batch per run of consecutive ids).
        self.free_ids = [i for i in range(ctx.size.n_seq_max) if i not in engine._pinned]
        for llama_id in self.free_ids:  # whatever an earlier, failed call left behind
            ctx.drop(llama_id)
        self.context_limit = self.model.n_ctx_train
        self.forecast = RowForecast(max((r.max_sequences or config.max_sequences) for r in requests), engine.admission)

    # main loop ----------------------------------------------------------------------------------
    def run(self) -> Iterator[T.Tree]:
        yield from self._admit()
        while self.rows:
            self.engine.stats.record(len(self.rows), len(self.runs))
            logits = self._decode_step()
            yield from self._advance(logits)
            yield from self._admit()
        # Budget ran out before these prompts got a turn: report them, empty.
        while self.pending:
            request = self.pending.pop()
            yield self._empty_tree(request)

    def _admit(self) -> Iterator[T.Tree]:
        """Start waiting prompts while there is room: prefill, then 1 (eager) or M (parallel) rows."""
        while self.pending and len(self.runs) < self.concurrent and not self.budget.exhausted:
            request = self.pending.pop()
            cap = request.max_sequences or self.config.max_sequences
            batch_full = self.runs and self._reserved_rows() + self._expected_rows(cap) > self.engine.max_batch_rows
            if len(self.free_ids) - self._reserved_ids() < cap or batch_full:
                self.pending.append(request)
                break
            run = _PromptRun(
                request=request,
                tree=T.Tree(
                    prompt=request.text,
                    prompt_tokens=len(request.tokens),
                    method=self.config.method,
                    index=request.index,
                    settings=_settings(self.config, cap, request),
                ),
                cap=cap,
                theta=self.config.theta if request.theta is None else request.theta,
                reserved=cap,
                started_at=time.perf_counter(),
                branching_open=not self.parallel,
            )
            llama_id = self._take_id(run)
            try:
                first_logits = self._prefill(run, llama_id)
            except KVCacheFull:
                heapq.heappush(self.free_ids, llama_id)
                run.reserved = 0
                self.pending.append(request)
                if not self.runs:  # nothing will ever free space: report and move on
                    self.pending.pop()
                    yield self._empty_tree(request)
                return
            self.runs.append(run)
            root = self._new_row(run, parent=None, fork_at=0, tokens=[], llama_id=llama_id)
            root.fresh_logits = first_logits  # the prefill's sequence becomes the first row
            if self.parallel:
                for _ in range(cap - 1):
                    row = self._new_row(run, parent=None, fork_at=0, tokens=[], llama_id=self._take_id(run))
                    self.ctx.fork(root.llama_id, row.llama_id)
                    row.fresh_logits = first_logits

    def _expected_rows(self, cap: int, run: _PromptRun | None = None) -> float:
        """Rows a prompt is expected to hold: M for parallel, the forecast for EAGer."""
        if self.parallel:
            return cap if run is None else run.live
        if run is not None and not run.branching_open:
            return run.live  # it will not grow any more
        expected = self.forecast.rows(cap)
        return expected if run is None else max(run.live, expected)

    def _reserved_rows(self) -> float:
        return sum(self._expected_rows(run.cap, run) for run in self.runs)

    # sequence ids -------------------------------------------------------------------------------
    def _reserved_ids(self) -> int:
        return sum(run.reserved for run in self.runs)

    def _take_id(self, run: _PromptRun) -> int:
        run.reserved -= 1
        return heapq.heappop(self.free_ids)

    def _compact_ids(self) -> None:
        """Move the rows with the highest ids into lower free ids, so the batch is one block.

        Rows finish in any order and leave holes; a move copies one stream (Context.move), which
        costs less than the extra micro-batch a hole costs every step after. (A unified cache runs
        one micro-batch whatever the ids.)
        """
        if self.ctx.size.unified:
            return
        for row in sorted(self.rows, key=lambda r: r.llama_id, reverse=True):
            if not self.free_ids or self.free_ids[0] > row.llama_id:
                return
            lower = heapq.heappop(self.free_ids)
            self.ctx.move(row.llama_id, lower)
            heapq.heappush(self.free_ids, row.llama_id)
            row.llama_id = lower

    def _prefill(self, run: _PromptRun, llama_id: int) -> np.ndarray:
        request = run.request
        start = 0
        if request.prefix_seq is not None:
            start = min(request.reuse, len(request.tokens) - 1)  # decode at least one token for logits
            self.ctx.fork(request.prefix_seq, llama_id)
            self.ctx.truncate(llama_id, start)
        try:
            return self.ctx.prefill(request.tokens[start:], llama_id, start_pos=start)
        except KVCacheFull:
            self.ctx.drop(llama_id)  # earlier chunks may have landed
            raise

    def _new_row(self, run, *, parent, fork_at, tokens, llama_id) -> _Row:
        seq = T.Sequence(id=len(run.tree.sequences), parent=parent, fork_at=fork_at, tokens=tokens)
        seq.entropies = []
        run.tree.sequences.append(seq)
        seed = self.config.seed if run.request.seed is None else run.request.seed
        rng = sequence_rng(seed, run.request.index, run.n_created)
        run.n_created += 1
        run.live += 1
        run.peak_live = max(run.peak_live, run.live)
        row = _Row(seq=seq, run=run, llama_id=llama_id, rng=rng)
        self.rows.append(row)
        return row

    def _decode_step(self) -> np.ndarray:
        """Decode every row's newest token in one batch; logits for all rows, in row order."""
        self._compact_ids()
        decoded = [r for r in self.rows if r.fresh_logits is None]
        fresh = [r for r in self.rows if r.fresh_logits is not None]
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
        else:
            view = np.empty((0, self.model.n_vocab), dtype=np.float32)
        self.rows = decoded + fresh
        if fresh:
            view = np.concatenate([view] + [r.fresh_logits[None, :] for r in fresh])
            for r in fresh:
                r.fresh_logits = None
        return view

    def _advance(self, logits: np.ndarray) -> Iterator[T.Tree]:
        """Choose each row's next token (branching where the rule says) and retire finished rows."""
        rows = list(self.rows)  # children created below are appended to self.rows, not here
        n = len(rows)
        if n == 0:  # a full cache cut every row: their prompts are complete
            yield from self._completed_runs()
            return
        # Entropy where a branch may happen (and everywhere when recording), never past the end of
        # thinking: NaN elsewhere, which never exceeds θ.
        entropies = np.full(n, np.nan)
        record = self.config.record_entropies
        wants_entropy = np.fromiter(
            ((record or r.run.branching_open) and not r.past_thinking for r in rows), dtype=bool, count=n
        )
        if wants_entropy.any():
            idx = np.flatnonzero(wants_entropy)
            temperature = self.config.sampling.temperature if self.config.tempered_entropy else 1.0
            subset = logits if len(idx) == n else logits[idx]  # no copy in the common case
            entropies[idx] = top_k_entropy(subset, self.config.top_k_entropy, temperature or 1.0)

        thresholds = {id(run): run.threshold(self.config.dynamic_threshold) for run in self.runs}
        open_rows = np.fromiter((r.run.branching_open for r in rows), dtype=bool, count=n)
        branching, cut = branching_rule.decide(
            np.where(open_rows, entropies, np.nan),
            np.fromiter((thresholds[id(r.run)] for r in rows), dtype=np.float64, count=n),
            np.fromiter((id(r.run) for r in rows), dtype=np.int64, count=n),
            {id(run): len(run.tree.sequences) for run in self.runs},
            {id(run): run.cap for run in self.runs},
            self.budget.remaining,
        )

        sampled = ~branching & ~cut
        tokens = np.zeros(n, dtype=np.int64)
        if sampled.any():
            idx = np.flatnonzero(sampled)
            uniforms = np.fromiter((rows[i].rng.random() for i in idx), dtype=np.float64, count=len(idx))
            subset = logits if len(idx) == n else logits[idx]
            tokens[idx] = sample_rows(subset, uniforms, self.config.sampling)

        branched_runs: set[int] = set()
        children: list[_Row] = []
        for i in np.flatnonzero(branching):
            row = rows[i]
            top1, top2 = top_two_tokens(logits[i])
            tokens[i] = top1
            child = self._fork(row, top2, float(entropies[i]), thresholds[id(row.run)], top1)
            children.append(child)
            branched_runs.add(id(row.run))

        if self.config.dynamic_threshold:
            for i in np.flatnonzero(wants_entropy & open_rows):
                rows[i].run.entropy_history.append(float(entropies[i]))

        for i, row in enumerate(rows):
            if cut[i]:
                self._finish(row, T.BUDGET)
                continue
            self._append(row, int(tokens[i]), float(entropies[i]))
        for child in children:
            self._after_token(child)

        for run in self.runs:
            run.tree.steps += 1
            if not run.branching_open:
                continue
            if id(run) in branched_runs:
                run.steps_since_branch = 0
            else:
                run.steps_since_branch += 1
            if (not branching_rule.window_open(run.steps_since_branch, self.config.branch_window)
                    or not branching_rule.under_cap(len(run.tree.sequences), run.cap)):
                run.branching_open = False

        self.rows = [r for r in self.rows if r.seq.finish_reason is None]
        yield from self._completed_runs()

    def _fork(self, parent: _Row, top2: int, entropy: float, threshold: float, top1: int) -> _Row:
        run = parent.run
        prefix = list(parent.seq.tokens)
        llama_id = self._take_id(run)
        self.ctx.fork(parent.llama_id, llama_id)  # copies the prefix's cells: nothing recomputed
        child = self._new_row(run, parent=parent.seq.id, fork_at=len(prefix), tokens=prefix, llama_id=llama_id)
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
        return child

    def _append(self, row: _Row, token: int, entropy: float) -> None:
        row.seq.tokens.append(token)
        row.seq.entropies.append(entropy)
        self.budget.spend(1)
        self._after_token(row)

    def _after_token(self, row: _Row) -> None:
        token = row.seq.tokens[-1]
        if self.on_token:
            self.on_token(row.run.tree, row.seq, token)
        if token == self.think_token:
            row.past_thinking = True
        if self.model.is_eog(token) and not self.config.ignore_eos:
            self._finish(row, T.STOP)
        elif len(row.seq.tokens) >= self.config.max_new_tokens or row.position + 1 >= self.context_limit:
            self._finish(row, T.LENGTH)
        elif row.position >= self.ctx.cells_per_seq:  # its stream is full (streams under a tight memory limit)
            self._finish(row, T.KV_FULL)

    def _finish(self, row: _Row, reason: str) -> None:
        if row.seq.finish_reason is not None:
            return
        row.seq.finish_reason = reason
        row.run.live -= 1
        if self.keep:
            row.seq.llama_seq = row.llama_id
            self.engine._pinned.add(row.llama_id)
        else:
            self.ctx.drop(row.llama_id)
            heapq.heappush(self.free_ids, row.llama_id)

    def _completed_runs(self) -> Iterator[T.Tree]:
        done = [run for run in self.runs if run.live == 0]
        for run in done:
            self.runs.remove(run)
            if not self.parallel:
                # every live row adds one token a step, so tokens / steps is the mean width
                self.forecast.observe(run.peak_live, run.tree.generated_tokens / max(1, run.tree.steps))
            yield self._finalize(run)

    def _finalize(self, run: _PromptRun) -> T.Tree:
        tree = run.tree
        tree.wall_time = time.perf_counter() - run.started_at
        for seq in tree.sequences:
            seq.text = self.model.detokenize(t for t in seq.tokens if not self.model.is_eog(t))
        return tree

    def _empty_tree(self, request: Request) -> T.Tree:
        return T.Tree(
            prompt=request.text,
            prompt_tokens=len(request.tokens),
            method=self.config.method,
            index=request.index,
            settings=_settings(self.config, request.max_sequences or self.config.max_sequences, request),
            started=False,
        )

    # interruption -------------------------------------------------------------------------------
    def cancel(self) -> Iterator[T.Tree]:
        for row in list(self.rows):
            self._finish(row, T.CANCELLED)
        self.rows = []
        yield from self._completed_runs()

    def abandon(self) -> None:
        """Free everything this call holds in the context (the caller lets the interrupt through)."""
        for row in self.rows:
            if row.seq.finish_reason is None:
                self.ctx.drop(row.llama_id)


def _settings(config: GenerationConfig, cap: int, request: Request) -> dict:
    return {
        "theta": config.theta if request.theta is None else request.theta,
        "max_sequences": cap,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.sampling.temperature,
        "top_k_entropy": config.top_k_entropy,
        "branch_window": config.branch_window,
        "dynamic_threshold": config.dynamic_threshold,
        "seed": config.seed if request.seed is None else request.seed,
    }


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
