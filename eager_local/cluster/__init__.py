"""Evaluation on a Ray cluster: actors hold the model, the driver sends prompts and writes results.

    worker.py    EvalWorker, the Ray actor: resolves and checks the model on its node, loads it
                 once, serves requests through a ServingLoop (prompts join its running batch); a
                 request's watch (per-token confidences) runs there and its state returns with the tree
    dispatch.py  one `stream` call spread over the actors: keeps each actor's batch full, takes
                 each tree as it completes, sends a dead actor's prompts to the others
    runner.py    RayRunner: what `Evaluation` (eval/runner.py) needs of a runner (prompts,
                 configs, `stream`), backed by the actors

The driver is the only writer: every record goes through the same `Evaluation` and RecordWriter
as a one-process run, so a Ray run directory is an ordinary run directory (report, resume and
shards work unchanged). A prompt's random streams depend on its position in the dataset, not on
the actor that draws it, so the records equal a one-process run's.

Ray is an optional dependency (`pip install -e ".[ray]"`); `import_ray` says so in one line.
"""

from __future__ import annotations

from ..errors import EagerError

INSTALL_HINT = 'Ray is not installed: pip install -e ".[ray]" (or pip install "ray>=2.9")'


class ClusterError(EagerError):
    """The cluster cannot run the evaluation: Ray missing, no room for an actor, every actor gone."""


def import_ray():
    """The ray module, or a ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return ray
