"""The engine's thread, and how a request travels between it and the HTTP side.

llama.cpp is not thread-safe, so one thread (`Scheduler`) owns the runner and runs its serving
loop (`EagerLocal.serving_loop`, engine/serving.py): every request of every client joins that one
step loop, whose batched decodes serve them all at once. The HTTP side lives on an asyncio loop; a
`Job` carries one request across: the HTTP side submits it (through the engine's thread-safe
`Inbox`) and awaits its events; the engine's thread posts them with `call_soon_threadsafe`:

    ("delta", index, text)   new text of sequence `index` (streaming: only text no stop string can
                             still claim is sent)
    ("done", tree)           the prompt's tree, complete
    ("error", exception)     the engine's thread died (a bug: its traceback is printed there)

A client that goes away cancels its job: its rows finish at the next step.
"""

from __future__ import annotations

import asyncio
import codecs
import threading

from .. import tree as T
from ..engine import InboxClosed, Request
from .schema import ApiError, Ask, first_stop


class BranchTexts:
    """Each sequence's text as its tokens arrive (on the engine's thread), for stop strings and
    streaming. A new branch starts with its parent's text up to the fork (its tokens hold it).

    `on_token` is the request's TokenCallback: it returns True when the text now contains a stop
    string, which ends that sequence there.
    """

    def __init__(self, model, stops: list[str], post=None):
        self.model = model
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1  # chars a stop string may still claim
        self.post = post  # called with (index, text) for text that is safe to send; None: no streaming
        self._decoders: dict[int, object] = {}
        self._texts: dict[int, str] = {}
        self._sent: dict[int, int] = {}

    def on_token(self, tree: T.Tree, seq: T.Sequence, token: int) -> bool:
        index = seq.id
        if index not in self._decoders:
            self._decoders[index] = codecs.getincrementaldecoder("utf-8")("replace")
            self._texts[index] = ""
            self._sent[index] = 0
            self._feed(index, seq.tokens[:-1])
        checked = max(len(self._texts[index]) - self.hold, 0)  # no stop string ends before this
        self._feed(index, [token])
        text = self._texts[index]
        stopped = False
        if self.stops:
            cut = first_stop(text[checked:], self.stops)
            if cut is not None:
                self._texts[index] = text = text[:checked + cut]
                stopped = True
        if self.post is not None:
            safe = len(text) if stopped else max(len(text) - self.hold, 0)
            if safe > self._sent[index]:
                self.post(index, text[self._sent[index]:safe])
                self._sent[index] = safe
        return stopped

    def _feed(self, index: int, tokens) -> None:
        data = b"".join(self.model.piece(t) for t in tokens if not self.model.is_eog(t))
        if data:
            self._texts[index] += self._decoders[index].decode(data)


class Job:
    """One request on its way through the engine; its events arrive on `queue` (HTTP side)."""

    def __init__(self, ask: Ask, prompt_tokens: list[int], text: str, aloop: asyncio.AbstractEventLoop, model):
        self.ask = ask
        self.queue: asyncio.Queue = asyncio.Queue()
        self._aloop = aloop
        streaming = ask.stream
        self.texts = BranchTexts(model, ask.stop, self._post_delta if streaming else None) \
            if (streaming or ask.stop) else None
        self.request = Request(tokens=prompt_tokens, text=text, config=ask.config, budget=ask.budget,
                               on_token=self.texts.on_token if self.texts else None)
        # Per sequence id, (token, log-probability, top alternatives) for each of its tokens, written
        # on the engine's thread and read after "done".
        self.logprobs: dict[int, list[tuple]] = {}
        # With echo, the same for the prompt's tokens after the first (the prefill computes them).
        self.prompt_logprobs: list[tuple] | None = None
        if ask.logprobs is not None:
            self.request.on_logprobs = self._on_logprobs
            self.request.top_logprobs = ask.logprobs
            if ask.echo:
                self.request.on_prompt_logprobs = self._on_prompt_logprobs

    def _on_logprobs(self, seq: T.Sequence, token: int, logprob: float, top: list) -> None:
        entries = self.logprobs.get(seq.id)
        if entries is None:  # a new branch shares its parent's first fork_at tokens
            inherited = self.logprobs.get(seq.parent, [])[:seq.fork_at] if seq.parent is not None else []
            entries = self.logprobs[seq.id] = list(inherited)
        entries.append((token, logprob, top))

    def _on_prompt_logprobs(self, entries: list[tuple]) -> None:
        self.prompt_logprobs = entries

    def post(self, event: tuple) -> None:
        """From the engine's thread: hand an event to the HTTP side."""
        self._aloop.call_soon_threadsafe(self.queue.put_nowait, event)

    def _post_delta(self, index: int, text: str) -> None:
        self.post(("delta", index, text))


class Scheduler:
    """Owns the runner and the thread its serving loop runs on; starts, takes jobs, stops."""

    def __init__(self, runner, config, *, prompt_tokens: int, slots: int, max_batch_rows: int | None = None):
        from ..engine import Inbox

        self.runner = runner
        self.inbox = Inbox()
        self.loop = runner.serving_loop(config, self.inbox, prompt_tokens=prompt_tokens, slots=slots,
                                        max_batch_rows=max_batch_rows)
        self.failure: BaseException | None = None
        self._jobs: dict[int, Job] = {}  # by id() of their Request
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="eager-local-engine", daemon=True)

    @property
    def stats(self):
        """How full the loop keeps its batches (engine StepStats): steps, rows and prompts per step."""
        return self.loop.stats

    @property
    def concurrent(self) -> int:
        """Prompts the loop runs at once at most (the context was sized for them)."""
        return self.loop.concurrent

    @property
    def cells_per_sequence(self) -> int:
        return self.loop.ctx.cells_per_seq

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.inbox.close()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, job: Job) -> None:
        if self.failure is not None:
            raise ApiError("the engine has stopped after an internal error", status=500, kind="server_error")
        with self._lock:
            self._jobs[id(job.request)] = job
        try:
            self.inbox.submit(job.request)
        except InboxClosed:
            with self._lock:
                del self._jobs[id(job.request)]
            raise ApiError("the server is shutting down", status=503, kind="server_error") from None

    def cancel(self, job: Job) -> None:
        """The client is gone: end the job's sequences at the next step."""
        with self._lock:
            running = self._jobs.pop(id(job.request), None) is not None
        if running:
            self.inbox.cancel(job.request)

    def _run(self) -> None:
        try:
            for request, tree in self.loop.serve():
                with self._lock:
                    job = self._jobs.pop(id(request), None)
                if job is not None:
                    job.post(("done", tree))
        except BaseException as e:
            self.failure = e
            with self._lock:
                jobs, self._jobs = list(self._jobs.values()), {}
            for job in jobs:
                job.post(("error", e))
            raise
