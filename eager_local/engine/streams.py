"""The llama sequence ids of one call: which are free, and the forks waiting for one.

Ids are recycled from a min-heap: a new row takes the lowest free id, and rows are moved down into
the holes finished rows leave (`compact`), so the ids decoded together stay one contiguous block
(with a stream per sequence llama.cpp runs one micro-batch per run of consecutive ids, each a full
pass over the weights). The rows of a paused prompt (below) are holes as well, and are moved above
the block; the highest id of a pooled context stays empty (`spare`) so that such a swap can be
made when no other id is free, which is when prompts pause.

With a KV stream per sequence and nothing kept between calls, the ids are a pool shared by all
prompts (`pooled`) instead of M reserved for each prompt. A fork made when the pool cannot give an
id waits (`wait`): its row already exists (tree entry, first token and random stream are fixed at
the fork) but has no stream yet, and its whole prompt pauses until it gets one, so every row of a
prompt still advances in step with the others and the tree is the one an unlimited pool would
grow, token for token. When an id is granted (`start_waiting`) the parent's stream is copied; the
parent has not moved since the fork, except that it may have finished at it, in which case the
waiting row takes over the parent's own stream (`release`).

A pooled stream that frees keeps its prompt's cells (the prompt cache; one stream per distinct
prompt): a later prompt that starts with the same tokens (a chat template's opening, a
conversation's earlier turns) continues them instead of decoding them again (`take_for_prompt`).
A cached stream is still free: taken for another use, its prompt moves to an empty free stream
while there is one. Only prompt cells are reused, never generated ones, and at least
EXACT_BATCH_ROWS tokens are decoded afresh, so the prompt's cells and first logits equal those of
a full prefill bit for bit (llama.EXACT_BATCH_ROWS says why that needs care).

Pausing whole prompts could deadlock: every prompt paused, each holding ids and waiting for one.
`safe` is the banker's rule that prevents it: an id is granted (a fork, or a new prompt's first
row) only if afterwards the prompts can still finish one after another, each getting all the ids it
may still claim from what the earlier ones give back.
"""

from __future__ import annotations

import heapq

import numpy as np

from ..llama import EXACT_BATCH_ROWS, Context
from .state import WAITING, Row


# Reuse a cached prompt from this many shared tokens on. A stream copy costs about as much as
# decoding one prompt token (BENCHMARKS.md, "Engine speed, fork cost and memory"), so shorter
# reuses would still pay, but too little to be worth a copy that may evict another cached prompt.
MIN_REUSE = 16


def reusable(common: int, n_tokens: int) -> int:
    """How many leading cells of a cached prompt sharing `common` tokens with a new prompt of
    `n_tokens` to keep: all shared ones, but leaving EXACT_BATCH_ROWS to decode; 0 below MIN_REUSE."""
    keep = min(common, n_tokens - EXACT_BATCH_ROWS)
    return keep if keep >= MIN_REUSE else 0


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens two token arrays share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def safe(free: int, claims: list[tuple[int, int]]) -> bool:
    """Whether prompts holding and still claiming ids, `claims` = [(held, may_claim)], can all finish
    with `free` ids: repeatedly let a prompt whose claim fits finish and give its ids back."""
    pending = list(claims)
    while pending:
        rest = [c for c in pending if c[1] > free]
        if len(rest) == len(pending):
            return False
        free += sum(held for held, claim in pending if claim <= free)
        pending = rest
    return True


class SequencePool:
    """Free llama ids (lowest first) and rows waiting for one, over one context."""

    def __init__(self, ctx: Context, kept_ids: set[int], *, pooled: bool):
        self.ctx = ctx
        self.pooled = pooled
        self.free = [i for i in range(ctx.size.n_seq_max) if i not in kept_ids]  # sorted: a valid heap
        for llama_id in self.free:  # whatever an earlier, failed call left behind
            ctx.drop(llama_id)
        # The highest id stays empty (the planner's spare, sizing.plan_context): `compact` swaps
        # two streams through it when no other id is free.
        self.spare = self.free.pop() if pooled and len(self.free) > 1 else None  # a pool is of streams
        self.waiting: list[Row] = []  # oldest first
        self.cached: dict[int, np.ndarray] = {}  # free id -> the prompt its cells begin with

    def waiting_for(self, run) -> int:
        """How many of `run`'s rows are queued here: while any is, the prompt pauses. (A row that
        took over its parent's stream stays queued until `start_waiting`, like one still without.)"""
        return sum(w.run is run for w in self.waiting)

    def take(self) -> int:
        llama_id = heapq.heappop(self.free)
        self._forget(llama_id)
        return llama_id

    def take_for_prompt(self, tokens: list[int]) -> tuple[int, int]:
        """An id for a new prompt's first row, and how many of `tokens` its cells already hold.

        The id is the lowest free one, as `take` gives, so the batch's ids stay where they would
        be without the cache. When a free stream holds an earlier prompt that starts like this one,
        the id continues its cells (`reusable` of them): it is that stream, cut back, or a copy of it.
        """
        prompt = np.asarray(tokens, dtype=np.int32)
        best, common = None, 0
        for llama_id in sorted(self.cached):
            if (n := common_prefix(self.cached[llama_id], prompt)) > common:
                best, common = llama_id, n
        keep = reusable(common, len(tokens))
        if keep == 0:
            return self.take(), 0
        llama_id = heapq.heappop(self.free)
        if llama_id == best:
            del self.cached[llama_id]
        else:
            self._forget(llama_id)
            self.ctx.fork(best, llama_id)
        self.ctx.truncate(llama_id, keep)
        return llama_id, keep

    def _forget(self, llama_id: int) -> None:
        """Empty a free stream that is about to be used. A cached prompt in it moves to the highest
        empty free stream, if there is one (new rows take the lowest ids, so cached prompts drift
        away from them and last until the pool is full), else it is dropped."""
        tokens = self.cached.pop(llama_id, None)
        if tokens is None:
            return
        empty = [i for i in self.free if i not in self.cached and i != llama_id]
        if empty:
            # queued before whatever the caller copies into llama_id: llama.cpp copies in order
            self.ctx.fork(llama_id, max(empty))
            self.cached[max(empty)] = tokens
        self.ctx.drop(llama_id)

    def put_back(self, llama_id: int) -> None:
        """Return an id that holds no cells (or whose cells were just dropped)."""
        heapq.heappush(self.free, llama_id)

    def wait(self, row: Row, source: Row) -> None:
        """Queue a new row (llama id WAITING) that continues the first `source.position + 1` cells
        of `source`'s stream: the prompt and the parent's tokens up to the fork."""
        row.source, row.keep = source, source.position + 1
        self.waiting.append(row)

    def start_waiting(self, may_take) -> None:
        """Give waiting rows ids, oldest first, where `may_take(row.run)` allows: copy the source's
        stream and cut it back to the fork's prefix (a row that took over its parent's stream has
        its id already). A row refused does not hold up later ones: the prompt the banker's rule
        lets finish first may be further down the queue."""
        still = []
        for row in self.waiting:
            if row.waiting:
                if not self.free or not may_take(row.run):
                    still.append(row)
                    continue
                row.llama_id = self.take()
                self.ctx.fork(row.source.llama_id, row.llama_id)
                self.ctx.truncate(row.llama_id, row.keep)
            row.source = None
        self.waiting = still

    def release(self, row: Row) -> None:
        """A row finished (its cells are not kept for the caller): hand its stream to a row waiting
        on its prefix, else free its id (its prompt's cells cached when pooled, else dropped)."""
        self.waiting = [w for w in self.waiting if w is not row]
        if row.waiting:
            return
        heirs = [w for w in self.waiting if w.source is row and w.waiting]
        if not heirs:
            prompt = np.asarray(row.run.request.tokens, dtype=np.int32)
            if self.pooled and not any(np.array_equal(prompt, held) for held in self.cached.values()):
                self.cached[row.llama_id] = prompt  # its cells begin with its prompt: keep them
            else:
                self.ctx.drop(row.llama_id)
            heapq.heappush(self.free, row.llama_id)
            return
        heir = max(heirs, key=lambda w: w.keep)  # the latest fork: its prefix covers the others'
        self.ctx.truncate(row.llama_id, heir.keep)
        heir.llama_id = row.llama_id
        for w in heirs:
            if w is not heir:
                w.source = heir

    def compact(self, rows: list[Row], parked: list[Row] = ()) -> None:
        """Keep the rows decoded together (`rows`) in one block of ids, lowest first.

        Rows finish in any order and leave holes: the rows with the highest ids move down into
        them. The rows of a paused prompt (`parked`; those still waiting for an id are skipped)
        hold ids but are not decoded, so inside the block they are holes too: each trades places
        with the block's highest row, through a free id or, when none is (a prompt pauses because
        the pool ran out), the spare. A move copies one stream (Context.move), which costs less
        than the extra micro-batch a hole costs every step after. (A unified cache runs one
        micro-batch whatever the ids.) Waiting rows name their source by row, not by id, so a move
        does not disturb them.
        """
        if self.ctx.size.unified:
            return
        block = sorted(rows, key=lambda r: r.llama_id, reverse=True)  # highest first
        while block and self.free and self.free[0] < block[0].llama_id:
            self._move(block[0], self.take())
            block.sort(key=lambda r: r.llama_id, reverse=True)
        # every free id now lies above the block
        bottom = min((r.llama_id for r in block), default=0)
        for row in sorted((r for r in parked if not r.waiting), key=lambda r: r.llama_id):
            if not block or row.llama_id > block[0].llama_id:
                break
            if row.llama_id < bottom:  # below the block: no hole in it
                continue
            if self.free:  # the parked row to a free id above the block, the top row into its place
                hole = row.llama_id
                self._move(row, self.take(), free_old=False)
                self._move(block[0], hole)
            elif self.spare is not None:  # the same, through the spare (llama.cpp copies in order)
                hole, top = row.llama_id, block[0].llama_id
                self._move(row, self.spare, free_old=False)
                self._move(block[0], hole, free_old=False)
                self._move(row, top, free_old=False)
            else:
                return
            block.sort(key=lambda r: r.llama_id, reverse=True)

    def _move(self, row: Row, llama_id: int, *, free_old: bool = True) -> None:
        """Move `row`'s stream to the empty id `llama_id`; its old id, now empty, is freed unless
        the caller fills it next."""
        old = row.llama_id
        self.ctx.move(old, llama_id)
        row.llama_id = llama_id
        if free_old:
            self.put_back(old)

    def drop_all(self, rows: list[Row]) -> None:
        """Free the cells of every unfinished row that holds a stream."""
        for row in rows:
            if row.seq.finish_reason is None and row.llama_id != WAITING:
                self.ctx.drop(row.llama_id)
