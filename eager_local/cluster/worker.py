"""The Ray actor of an evaluation: one model in one process, serving the requests the driver sends.

An `EvalWorker` resolves the model on its own node (a registry name or URL is pulled into that
node's cache and verified; a path must exist there) and refuses to start when the file's sha256 is
not the driver's: every node must sample from the same weights, or the records would depend on
which node drew them. It then loads the model once and keeps it for the whole evaluation.

For each stretch of work (a point, a reallocation round, a round of waves) the driver opens a
`serve` stream and feeds it with `submit`: the requests go into a `ServingLoop` (engine/serving.py),
so prompts join the running batch as others finish, exactly as they do in one process, and the
actor's batch stays full until the driver has nothing left to send. `serve` is a Ray streaming
generator: it yields each prompt's tree the moment it completes, then the stretch's step counts.

The actor is threaded (Ray `max_concurrency`): `serve` occupies one thread for the whole stretch
while `submit` and `finish` run on others; only `serve`'s thread touches llama.cpp.

A request's per-token hooks (`on_logprobs`, `on_token`: the methods of a wave's watch, which reads
each token's confidence and may end a sequence, eval/deepconf.py) run here, where the tokens are
decoded: the request arrives pickled with its watch, this copy watches, and `serve` yields the
copy's `state()` with the tree, which the driver hands to its own watch (`restore`) before the tree
goes on. A request the driver sends again (its actor died) carries the driver's watch, which has
watched nothing: the new attempt starts from no confidences.
"""

from __future__ import annotations

import os
import socket
import sys

from .. import models
from ..config import GenerationConfig
from ..engine import Inbox, Request
from ..errors import USER_ERRORS, EagerError

# What `serve` yields, as (kind, payload) pairs.
READY = "ready"  # payload: how many prompts the actor's context holds at once
TREE = "tree"  # payload: (a completed prompt's Tree, its request's watch state or None)
STATS = "stats"  # payload: the stretch's step counts, last


def watch_of(request: Request):
    """The object whose methods are the request's per-token hooks (a deepconf.Watch), or None when it
    has none. Its state must be able to travel back with the tree (`state()` here, `restore` there);
    hooks of another kind would watch a copy whose findings never reach the driver: refused."""
    hook = request.on_logprobs or request.on_token
    if hook is None:
        return None
    watch = getattr(hook, "__self__", None)
    if not (hasattr(watch, "state") and hasattr(watch, "restore")):
        raise TypeError(f"request {request.index}: per-token hooks must be methods of an object with "
                        f"state() and restore() to run in a Ray actor, got {hook!r}")
    return watch


class WorkerError(EagerError):
    """A node cannot take part: its model file is missing, different, or unreadable."""


class EvalWorker:
    """One model on one node (see the module docstring). `model` is the user's spec (registry name,
    URL or path), `sha256` the driver's hash of the file it resolved to."""

    def __init__(self, model: str | None, sha256: str, threads: int, n_gpu_layers: int = 0,
                 kv_memory: int | None = None):
        # The constructor loads (Ray reruns it when it restarts a killed actor) but does not raise: a
        # user's error is kept and raised by `where`, whose caller sees it as itself, in one line.
        self.llm = None
        self.error: EagerError | None = None
        self._inbox: Inbox | None = None
        try:
            self.llm = self._load(model, sha256, threads, n_gpu_layers, kv_memory)
        except USER_ERRORS as e:
            self.error = e if isinstance(e, WorkerError) else WorkerError(f"node {socket.gethostname()}: {e}")

    @staticmethod
    def _load(model, sha256, threads, n_gpu_layers, kv_memory):
        from ..api import EagerLocal

        resolved = models.resolve(model, progress=False)
        found = models.model_sha256(resolved.path, resolved.sha256)
        if found != sha256:
            raise WorkerError(
                f"node {socket.gethostname()}: {resolved.path} has sha256 {found[:12]}…, "
                f"the driver's model has {sha256[:12]}… (copy the same file to every node)"
            )
        return EagerLocal(str(resolved.path), threads=threads, n_gpu_layers=n_gpu_layers, kv_memory=kv_memory)

    def where(self) -> dict:
        """The node, the process and the model's context limit; raises the load's error, if any."""
        if self.error is not None:
            raise self.error
        return {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.executable,
                "n_ctx_train": self.llm.model.n_ctx_train}

    def serve(self, config: GenerationConfig, prompt_tokens: int, slots: int):
        """Serve one stretch of work: yield READY, then a TREE per completed prompt, then STATS once
        the driver calls `finish` (which it does only when it has received every tree it asked for)."""
        inbox = Inbox()
        self._inbox = inbox
        stats = self.llm.count_steps()
        loop = self.llm.serving_loop(config, inbox, prompt_tokens=prompt_tokens, slots=slots)
        yield READY, loop.concurrent
        for request, tree in loop.serve():
            watch = watch_of(request)
            yield TREE, (tree, None if watch is None else watch.state())
        self._inbox = None
        yield STATS, {"steps": stats.steps, "row_steps": stats.row_steps, "prompt_steps": stats.prompt_steps,
                      "peak_rows": stats.peak_rows, "peak_prompts": stats.peak_prompts}

    def submit(self, requests: list[Request]) -> None:
        """Hand requests to the running `serve` stretch (they join its batch between two steps)."""
        for request in requests:
            self._inbox.submit(request)

    def finish(self) -> None:
        """End the running stretch; the driver calls it once all its trees are in, so nothing is cut."""
        if self._inbox is not None:
            self._inbox.close()
