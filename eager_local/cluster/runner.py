"""RayRunner: the runner an `Evaluation` drives, with the model in Ray actors instead of this process.

`Evaluation` (eval/runner.py) asks its runner for prompt tokens, configs, a fresh step count and,
above all, `stream(requests, config)`: the trees of a batch of prompts as they complete. RayRunner
builds prompts from the model's vocabulary alone (no weights in the driver) and spreads every
`stream` call over its actors (dispatch.py), so parallel sampling, EAGer-init, the reallocation
rounds of eager-adapt and eager, and the rivals' waves all run on the cluster unchanged; the
confidence methods' watches run in the actors and their state returns with each tree (worker.py).

Actors: one per `threads` CPUs of each node (Ray's `num_cpus`, so actors never oversubscribe a
node; llama.cpp's thread count is set to the same number explicitly, since Ray sets
OMP_NUM_THREADS=1 in its workers). Ray restarts an actor whose process dies, up to
dispatch.REJOINS times; its prompts are redone by the others meanwhile.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

from ..api import PromptBuilder
from ..budget import TokenBudget
from ..config import GenerationConfig
from ..engine import Request, StepStats, check_prompt_lengths
from ..errors import EagerError
from ..llama import Model
from ..models import ResolvedModel
from ..tree import Tree
from . import ClusterError, import_ray
from .dispatch import REJOINS, Dispatch
from .worker import EvalWorker, watch_of

# Seconds every actor has to resolve, check and load its model before the run gives up (a node
# may first have to pull the model from the registry).
READY_TIMEOUT = 900.0
# Ray calls an actor handles at once: one `serve` stream, plus `submit` and `finish` beside it.
ACTOR_CONCURRENCY = 4


def actor_count(nodes: list[dict], threads: int) -> int:
    """How many actors of `threads` CPUs fit on the live nodes (ray.nodes()), each within one node."""
    return sum(int(n.get("Resources", {}).get("CPU", 0) // threads) for n in nodes if n.get("Alive"))


def _listening(address: str) -> bool:
    """Whether a HOST:PORT address accepts a TCP connection (ray.init would retry an unanswered one
    for minutes); other address forms (`auto`, `ray://…`) are left to ray.init."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            return True
    except OSError:
        return False


class RayRunner(PromptBuilder):
    """Connects to (or starts) a Ray cluster, places the actors, and generates through them.

    model: the user's model spec, resolved by each node itself; resolved / sha256: the driver's
    file and its hash, which every node's file must match; address: as `ray.init` takes it (None:
    a cluster already running on this machine, else a new local one); kv_memory: bytes of KV cache
    each actor may allocate (None: the engine's default on its node).
    """

    def __init__(self, model: str | None, resolved: ResolvedModel, sha256: str, *, address: str | None = None,
                 threads: int | None = None, n_gpu_layers: int = 0, kv_memory: int | None = None, log=None):
        self.ray = import_ray()
        self.log = log or (lambda line: None)
        self.resolved = resolved
        self.model = Model(resolved.path, vocab_only=True)
        self.threads = threads or 1
        self.stats = StepStats()
        self._connect(address)
        count = actor_count(self.ray.nodes(), self.threads)
        if count < 1:
            raise ClusterError(f"no node of the Ray cluster has {self.threads} free CPUs for one actor (--threads)")
        worker = self.ray.remote(EvalWorker).options(
            num_cpus=self.threads, max_concurrency=ACTOR_CONCURRENCY, max_restarts=REJOINS, max_task_retries=0)
        self.actors = [worker.remote(model, sha256, self.threads, n_gpu_layers, kv_memory) for _ in range(count)]
        self.places = self._wait_ready()
        self.n_ctx_train = self.places[0]["n_ctx_train"]
        hosts = sorted({p["host"] for p in self.places})
        self.log(f"Ray: {count} actor(s) x {self.threads} thread(s) on {len(hosts)} node(s): {', '.join(hosts)}")

    def _connect(self, address: str | None) -> None:
        """ray.init; a cluster that cannot be reached or refuses us is the user's to fix: one line."""
        refused = (ConnectionError, getattr(self.ray.exceptions, "AuthenticationError", ConnectionError))
        if address and not _listening(address):
            raise ClusterError(f"cannot join the Ray cluster at {address}: nothing answers there "
                               "(start one with `ray start --head`)")
        try:
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except refused as e:
            raise ClusterError(f"cannot join the Ray cluster at {address or 'this machine'}: "
                               f"{str(e).splitlines()[0]}") from None

    def _wait_ready(self) -> list[dict]:
        """Every actor's `where()`, once its model is loaded; a node's user error as one line."""
        ray = self.ray
        try:
            return ray.get([a.where.remote() for a in self.actors], timeout=READY_TIMEOUT)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, EagerError):  # the node's model is missing, different or unreadable
                raise ClusterError(str(e.cause)) from None
            raise
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the Ray actors were not ready after {READY_TIMEOUT:.0f} s "
                               "(is the cluster busy, or a node still pulling the model?)") from None

    def count_steps(self) -> StepStats:
        """A fresh count of the actors' batches, summed over them as each `stream` call ends."""
        self.stats = StepStats()
        return self.stats

    def stream(self, requests: list[Request], config: GenerationConfig, *, budget: TokenBudget | None = None,
               on_token=None) -> Iterator[Tree]:
        """Generate for the requests on the actors; yield each prompt's tree as it completes.

        A request's own hooks run in the actor that decodes it, and the state of its watch is back
        in the driver's watch when its tree is yielded (worker.py). The call's `on_token` is not
        called (tokens are not streamed across the cluster one by one), and a token budget cannot be
        kept exactly by actors that do not share a counter: one is refused.
        """
        if budget is not None and budget.limit is not None:
            raise ClusterError("a token budget (--budget) cannot be kept across Ray actors")
        config.validate()
        if not requests:
            return
        check_prompt_lengths(requests, self.n_ctx_train)
        for request in requests:
            watch_of(request)  # hooks whose state could not come back are refused before any work
        yield from Dispatch(self.ray, self.actors, requests, config, self.stats, log=self.log).run()

    def close(self) -> None:
        """Disconnect from the cluster (a local one started here stops; the actors end)."""
        self.ray.shutdown()
