"""One `stream` call spread over Ray actors: full batches, trees as they come, no prompt lost.

Every actor serves the call through its own `serve` stream (worker.py), which a listener thread
here reads and turns into events on one queue; the driver's thread alone decides what to send:

    READY n   the actor's context holds n prompts at once: send it up to n + HEADROOM requests,
              so prompts are waiting in its loop whenever one finishes (its batch stays full)
    TREE t    a prompt completed: hand the state of its request's watch (if any) to the driver's
              watch of that request, yield the tree to the caller (who writes its record) and top
              the actor up again from the prompts not yet sent
    DIED      the actor's process died: every request it held goes back to the front of the
              queue for the actors still alive; the listener waits for Ray to restart it (Ray's
              `max_restarts`), and a restarted actor says READY again and rejoins
    GONE      the actor will not come back
    STATS     the actor's step counts, after `finish`

Prompts are dealt out one at a time as room appears (pull, not a fixed split), so an actor that
drew short prompts takes more of them: the actors finish together up to the last prompts' length.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator

from ..config import GenerationConfig
from ..engine import Request, StepStats
from ..tree import Tree
from . import ClusterError
from .worker import READY, STATS, TREE, watch_of

# Requests sent beyond what an actor's context holds at once: enough that its loop always has a
# prompt waiting when one finishes (a round trip to the driver is far shorter than a step), few
# enough that the actors' queues empty together at the end of the call.
HEADROOM = 2
# Times one actor may die and be restarted by Ray within one call before it is given up.
REJOINS = 3
# Events of the listener threads besides worker.py's READY, TREE and STATS.
DIED, GONE, FAILED = "died", "gone", "failed"


class Dispatch:
    """Spread `requests` over `actors` (Ray actor handles of EvalWorker); `run` yields the trees."""

    def __init__(self, ray, actors: list, requests: list[Request], config: GenerationConfig, stats: StepStats,
                 *, log=None):
        self.ray = ray
        self.actors = actors
        self.config = config
        self.stats = stats
        self.log = log or (lambda line: None)
        self.todo: deque[Request] = deque(requests)
        self.prompt_tokens = max(len(r.tokens) for r in requests)
        self.slots = len(requests)
        self.capacity: dict[int, int] = {}  # actor -> prompts it holds at once (present while alive)
        self.held: dict[int, dict[int, Request]] = {i: {} for i in range(len(actors))}  # by request index
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.gone: set[int] = set()  # actors that will not come back
        indexes = [r.index for r in requests]
        if len(set(indexes)) != len(indexes):
            raise ValueError("requests of one call need distinct indexes (their trees are matched by index)")

    # the driver's thread ---------------------------------------------------------------------------------
    def run(self) -> Iterator[Tree]:
        listeners = [threading.Thread(target=self._listen, args=(i,), daemon=True) for i in range(len(self.actors))]
        for t in listeners:
            t.start()
        try:
            while self.todo or any(self.held.values()):
                i, kind, payload = self.events.get()
                if kind == READY:
                    self.capacity[i] = payload
                    self._top_up(i)
                elif kind == TREE:
                    tree, state = payload
                    request = self.held[i].pop(tree.index)
                    if state is not None:
                        watch_of(request).restore(state)
                    yield tree
                    self._top_up(i)
                elif kind == DIED:
                    self._requeue(i, payload)
                elif kind == GONE:
                    self.gone.add(i)
                    if len(self.gone) == len(self.actors):
                        raise ClusterError("every Ray actor died; rerun the same command to resume")
                elif kind == FAILED:
                    raise payload
            self._finish()
        finally:
            self.stopping.set()

    def _top_up(self, i: int) -> None:
        """Send actor i prompts until it holds its capacity plus HEADROOM, or its fair share of what
        is left (or none are left)."""
        if i not in self.capacity:
            return
        limit = min(self.capacity[i] + HEADROOM, self._fair_share())
        batch = []
        while self.todo and len(self.held[i]) < limit:
            request = self.todo.popleft()
            self.held[i][request.index] = request
            batch.append(request)
        if batch:
            self.actors[i].submit.remote(batch)

    def _fair_share(self) -> int:
        """Prompts not yet done (queued or held) per actor still in the game, rounded up: the first
        actor to say READY must not take the prompts an actor still loading its model would run."""
        left = len(self.todo) + sum(len(h) for h in self.held.values())
        return -(-left // max(1, len(self.actors) - len(self.gone)))

    def _requeue(self, i: int, error) -> None:
        """Actor i died: its prompts go back to the front of the queue, for the actors alive."""
        lost = list(self.held[i].values())
        self.held[i].clear()
        self.capacity.pop(i, None)
        self.todo.extendleft(reversed(lost))
        self.log(f"Ray actor {i} died ({type(error).__name__}); {len(lost)} prompt(s) go to the others")
        for j in list(self.capacity):
            self._top_up(j)

    def _finish(self) -> None:
        """Everything is in: end each live actor's stream and add its step counts."""
        waiting = set(self.capacity)
        for i in waiting:
            self.actors[i].finish.remote()
        while waiting:
            i, kind, payload = self.events.get()
            if kind == STATS:
                self._add_stats(payload)
                waiting.discard(i)
            elif kind in (DIED, GONE):
                waiting.discard(i)
            elif kind == FAILED:
                raise payload

    def _add_stats(self, counts: dict) -> None:
        s = self.stats
        s.steps += counts["steps"]
        s.row_steps += counts["row_steps"]
        s.prompt_steps += counts["prompt_steps"]
        s.peak_rows = max(s.peak_rows, counts["peak_rows"])
        s.peak_prompts = max(s.peak_prompts, counts["peak_prompts"])

    # listener threads ------------------------------------------------------------------------------------
    def _listen(self, i: int) -> None:
        """Read actor i's serve stream into events; through Ray's restarts of it, at most REJOINS times."""
        from ray.exceptions import ActorDiedError, RayActorError

        deaths = 0
        while not self.stopping.is_set():
            try:
                stream = self.actors[i].serve.remote(self.config, self.prompt_tokens, self.slots)
                for ref in stream:
                    kind, payload = self.ray.get(ref)
                    self.events.put((i, kind, payload))
                    if kind == STATS:
                        return
                return
            except RayActorError as e:
                self.events.put((i, DIED, e))
                deaths += 1
                if isinstance(e, ActorDiedError) or deaths > REJOINS:
                    self.events.put((i, GONE, e))
                    return
                time.sleep(0.2 * deaths)  # Ray is restarting the actor; calls made meanwhile fail fast
            except BaseException as e:  # noqa: BLE001 - not caught: handed to the driver's thread, which raises it
                self.events.put((i, FAILED, e))
                return
