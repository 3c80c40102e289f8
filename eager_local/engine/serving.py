"""A step loop that runs as long as a server does: requests join and leave it between steps.

`StepLoop` serves one call: a list of requests known up front. A server does not know its requests
up front, and llama.cpp is not thread-safe, so one thread owns the context and runs a
`ServingLoop`; other threads hand it requests through an `Inbox`. Between two steps (where the
call loop admits waiting prompts) the serving loop takes what arrived: new requests join the
waiting list (first in, first out) and cancelled ones end. Every admitted prompt of every client
then advances in the same batched decode, as llama-server's slots do, with its own settings
(`Request.config`). When nothing is live the loop sleeps on the inbox.

It yields `(request, tree)` for each prompt that completes, including a cancelled one (its live
sequences finish as `cancelled`) and one that never started (`tree.started` is False).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .. import tree as T
from ..budget import TokenBudget
from ..config import GenerationConfig
from ..llama import Context, Model
from .loop import StepLoop
from .request import Request
from .state import StepStats


class InboxClosed(RuntimeError):
    """The serving loop has stopped: it takes no more requests."""


class Inbox:
    """Thread-safe hand-over of requests to a serving loop: any thread submits or cancels; the
    loop's thread takes them between steps."""

    def __init__(self):
        self._cond = threading.Condition()
        self._new: list[Request] = []
        self._cancelled: list[Request] = []
        self._closed = False

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closed:
                raise InboxClosed("the serving loop has stopped")
            self._new.append(request)
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """End a submitted request: its live sequences finish at the next step (`cancelled`)."""
        with self._cond:
            self._cancelled.append(request)
            self._cond.notify()

    def close(self) -> None:
        """Stop the loop: it cancels what runs and waits, then returns."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self, *, wait: bool) -> tuple[list[Request], list[Request], bool]:
        """(new requests, cancelled requests, closed); with wait, block until there is something."""
        with self._cond:
            while wait and not (self._new or self._cancelled or self._closed):
                self._cond.wait()
            new, self._new = self._new, []
            cancelled, self._cancelled = self._cancelled, []
            return new, cancelled, self._closed


class ServingLoop(StepLoop):
    """The step loop of a server: no requests up front, an unlimited token budget, `config` the
    default of requests without a config of their own. The Engine sizes its context once
    (`Engine.serving_loop`) for `concurrent` prompts of at most `config.max_sequences` sequences."""

    def __init__(self, ctx: Context, model: Model, config: GenerationConfig, inbox: Inbox, *, concurrent: int,
                 kept_ids: set[int], stats: StepStats, max_batch_rows: int):
        super().__init__(ctx, model, [], config, TokenBudget(), on_token=None, keep=False, concurrent=concurrent,
                         kept_ids=kept_ids, stats=stats, max_batch_rows=max_batch_rows)
        self.inbox = inbox

    def serve(self) -> Iterator[tuple[Request, T.Tree]]:
        """Run until the inbox closes; yield (request, tree) as each prompt completes."""
        while True:
            new, cancelled, closed = self.inbox.take(wait=not self.rows and not self.pending)
            for request in new:
                self.pending.insert(0, request)  # pending pops from the end: first in, first out
            for request in cancelled:
                yield from self._cancel(request)
            if closed:
                for request in list(self.pending) + [run.request for run in self.runs]:
                    yield from self._cancel(request)
                return
            self.ids.start_waiting(self._may_take)
            yield from self._admit()
            if not self.rows:
                continue
            rows, logits = self._decode_step()
            self.stats.record(len(rows), len(self.runs))
            yield from self._advance(rows, logits)

    def _cancel(self, request: Request) -> Iterator[tuple[Request, T.Tree]]:
        """End one request: a waiting one is reported unstarted, a running one's rows finish now."""
        for i, waiting in enumerate(self.pending):
            if waiting is request:
                del self.pending[i]
                yield self._result(request, None)
                return
        for row in self.rows:
            if row.run.request is request:
                self._finish(row, T.CANCELLED)
        self.rows = [r for r in self.rows if r.seq.finish_reason is None]
        yield from self._completed_runs()

    def _result(self, request: Request, tree: T.Tree | None) -> tuple[Request, T.Tree]:
        return request, super()._result(request, tree)
