"""`Engine`: owns one llama.cpp context across calls and runs each call's step loop in it.

A call (`generate` / `stream`) checks its requests, sizes a context for them (`sizing.py`),
reuses the current context when it is large enough or builds a larger one, and hands everything
to a `StepLoop` (`loop.py`), which yields each prompt's tree as it completes.

Between calls the engine can keep sequences alive for its caller (chat continues a branch without
recomputing it): `keep_sequences=True` leaves a call's finished sequences in the KV cache, and
`release`, `park` and `restore` manage them. Kept sequences imply a unified KV cache: a long shared
history is stored once, and llama.cpp can restore a parked sequence only into a context with the
same number of streams, which a unified cache always has (one) when it grows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from .. import tree as T
from ..budget import TokenBudget
from ..config import GenerationConfig, check_max_sequences
from ..errors import ConfigError
from ..llama import Context, ContextSize, KVCacheFull, Model
from . import sizing
from .loop import StepLoop
from .request import Request, TokenCallback
from .serving import Inbox, ServingLoop
from .state import StepStats


class Engine:
    """Loads nothing itself: give it a Model. Keeps one llama.cpp context, grown on demand.

    kv_memory: bytes of KV cache at most (default: `sizing.default_kv_memory()`);
    max_batch_rows: rows the active prompts may hold or be expected to hold at once.
    """

    def __init__(self, model: Model, *, n_threads: int | None = None, kv_memory: int | None = None,
                 max_batch_rows: int = sizing.DEFAULT_BATCH_ROWS):
        self.model = model
        self.n_threads = n_threads
        self.kv_memory = kv_memory or sizing.default_kv_memory()
        self.max_batch_rows = max_batch_rows
        self.stats = StepStats()
        self.context: Context | None = None
        self._pinned: set[int] = set()  # llama ids kept alive for the caller (chat branches)

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

        keep_sequences: leave finished sequences in the KV cache (their `llama_seq` is set) for the
        caller to continue, park or release; the engine then uses a unified KV cache.
        catch_interrupt: on Ctrl-C, end live sequences with finish reason `cancelled` and yield what
        exists instead of raising.
        """
        config.validate()
        budget = budget or TokenBudget()
        if not requests:
            return
        check_prompt_lengths(requests, self.model.n_ctx_train)
        # Size for the largest per-request cap (reallocated runs override M), or it would never fit.
        biggest_cap = max(r.max_sequences or config.max_sequences for r in requests)
        check_max_sequences(biggest_cap)
        # Streams decode faster; a caller who keeps sequences (chat) gets a unified cache.
        unified = keep_sequences or bool(self._pinned)
        size, concurrent = sizing.plan_context(
            max(len(r.tokens) for r in requests), replace(config, max_sequences=biggest_cap), len(requests),
            cell_limit=self._cell_limit(), max_batch_rows=self.max_batch_rows,
            kept_ids=self._pinned, kept_cells=self._pinned_cells(), unified=unified,
        )
        ctx = self._ensure_context(size)
        loop = StepLoop(ctx, self.model, requests, config, budget, on_token=on_token, keep=keep_sequences,
                        concurrent=concurrent, kept_ids=self._pinned, stats=self.stats,
                        max_batch_rows=self.max_batch_rows)
        try:
            yield from loop.run()
        except KeyboardInterrupt:
            if not catch_interrupt:
                loop.abandon()
                raise
            yield from loop.cancel()

    def serving_loop(self, config: GenerationConfig, inbox: Inbox, *, prompt_tokens: int, slots: int,
                     max_batch_rows: int | None = None) -> ServingLoop:
        """A step loop for a server (`serving.py`), in a context sized once, here, for `slots`
        prompts at once of up to `prompt_tokens` tokens, `config.max_sequences` sequences and
        `config.max_new_tokens` tokens each (fewer prompts when memory is short: the loop's
        `concurrent`). Requests arrive through `inbox`, each with a config within those caps.
        max_batch_rows: the loop's row limit for admission (default: the engine's)."""
        config.validate()
        if self._pinned:
            raise RuntimeError("release the kept sequences before serving")
        rows = max_batch_rows or self.max_batch_rows
        size, concurrent = sizing.plan_context(prompt_tokens, config, slots, cell_limit=self._cell_limit(),
                                               max_batch_rows=rows)
        ctx = self._ensure_context(size)
        return ServingLoop(ctx, self.model, config, inbox, concurrent=concurrent, kept_ids=self._pinned,
                           stats=self.stats, max_batch_rows=rows)

    # the context --------------------------------------------------------------------------------
    def _cell_limit(self) -> int:
        """KV cells the memory limit allows."""
        return max(256, self.kv_memory // self.model.kv_bytes_per_cell())

    def _pinned_cells(self) -> int:
        if not self.context:
            return 0
        return sum(self.context.seq_length(s) for s in self._pinned)

    def _ensure_context(self, size: ContextSize) -> Context:
        """The current context if it can serve `size`, else a new, larger one holding the kept sequences."""
        ctx = self.context
        if ctx and sizing.fits(size, ctx.size, ctx.cells_per_seq):
            return ctx
        # Park the sequences the caller keeps and restore them under the same ids.
        kept = {i: ctx.park(i) for i in sorted(self._pinned)} if ctx else {}
        if ctx:
            size = sizing.regrown(size, ctx.size, ctx.cells_per_seq, self._cell_limit())
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

    # kept sequences (chat) ----------------------------------------------------------------------
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


def check_prompt_lengths(requests: list[Request], limit: int) -> None:
    """Refuse an empty prompt, or one that does not fit the model's training context of `limit` tokens."""
    for r in requests:
        if not r.tokens:
            raise ConfigError("empty prompt")
        if len(r.tokens) >= limit:
            raise ConfigError(f"prompt of {len(r.tokens)} tokens does not fit the model's context of {limit} tokens")
