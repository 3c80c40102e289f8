"""What an evaluation is: its parameters (EvalSpec) and the points they expand to.

The spec is what the run directory's manifest pins: rerunning with the same spec resumes, another
spec in the same directory is refused (session.open_run_dir).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import store
from .store import ADAPT, FULL, INIT, PARALLEL, Point


@dataclass
class EvalSpec:
    """Everything that determines an evaluation's results (what the manifest pins)."""

    dataset: str
    selection: dict  # limit, offset, ids, shuffle, seed, shard
    fields: dict  # problem_field, answer_field, id_field, answer_kind
    methods: list[str]
    thetas: list[float]
    max_sequences: list[int]
    prompt_template: str
    system: str | None
    chat: bool
    budget: int | None
    generation: dict  # GenerationConfig keywords other than method, theta and max_sequences
    model_sha256: str

    def params(self) -> dict:
        return store.normalise(
            {
                "dataset": self.dataset,
                "selection": self.selection,
                "fields": self.fields,
                "methods": self.methods,
                "theta": self.thetas,
                "max_sequences": self.max_sequences,
                "prompt_template": self.prompt_template,
                "system": self.system,
                "chat": self.chat,
                "budget": self.budget,
                "generation": self.generation,
                "model_sha256": self.model_sha256,
            }
        )

    def points(self) -> list[Point]:
        """The points in the order they run: per M, parallel first, then per θ init, adapt, full.

        EAGer-init runs for every (θ, M) that adapt or full EAGer needs, even if not asked for:
        both reuse its records and spend the sequences it saved.
        """
        points: list[Point] = []
        needs_init = any(m in (INIT, ADAPT, FULL) for m in self.methods)
        for m in self.max_sequences:
            if PARALLEL in self.methods:
                points.append(Point(PARALLEL, None, m))
            if not needs_init:
                continue
            for theta in self.thetas:
                points.append(Point(INIT, theta, m))
                for method in (ADAPT, FULL):
                    if method in self.methods:
                        points.append(Point(method, theta, m))
        return points
