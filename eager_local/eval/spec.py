"""What an evaluation is: its parameters (EvalSpec), the points they expand to, and which problems
may calibrate its θ.

The spec is what the run directory's manifest pins: rerunning with the same spec resumes, another
spec in the same directory is refused (session.open_run_dir).

**The parallel curve.** EAGer is only worth its tokens if it beats full parallel sampling at the
same tokens, so whenever `parallel` is among the methods the spec asks for the parallel points
M = 1, 2, 4, … up to the largest -M (plus every -M given). Only the largest is decoded: in full
parallel sampling, sample i of a prompt draws from its own random stream (seed, prompt position,
i), so the first m samples of the M-sample run are the samples an m-sample run draws. The smaller
points are derived from its records (records.derive_record) instead of being decoded again.

**Calibration problems.** `--theta auto | qNN.N` must not tune θ on the problems it is evaluated
on: `calibration_pool` gives the dataset's problems outside the evaluated selection (all shards of
it, so every shard of one evaluation calibrates on the same problems and gets the same θ).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import store
from .datasets import Problem
from .store import ADAPT, ECONF, FULL, INIT, PARALLEL, WAVE_METHODS, Point


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
    # Adaptive-Consistency's, ESC's and DeepConf's options (stopping.method_options,
    # deepconf.method_options); None without them, and then absent from params, so run directories
    # made before the rivals existed still resume.
    rivals: dict | None = None

    def params(self) -> dict:
        rivals = {} if self.rivals is None else {"rivals": self.rivals}
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
                **rivals,
            }
        )

    def points(self) -> list[Point]:
        """The points in the order they run: full parallel sampling (the curve, smallest M first),
        then per -M value, per θ: EAGer-init, EAGer-adapt, full EAGer; then per -M value the rivals
        that sample in waves (Adaptive-Consistency, ESC, DeepConf), which have no θ; then per -M
        value, per θ: eager-conf (EAGer trees in waves).

        The first parallel point runs the decoded one (the largest M) before it is derived
        (runner.Evaluation.derive_point). EAGer-init runs for every (θ, M) that adapt or full EAGer
        needs, even if not asked for: both reuse its records and spend the sequences it saved.
        """
        points = [Point(PARALLEL, None, m) for m in self.parallel_sizes()]
        if any(m in (INIT, ADAPT, FULL) for m in self.methods):
            for m in self.max_sequences:
                for theta in self.thetas:
                    points.append(Point(INIT, theta, m))
                    for method in (ADAPT, FULL):
                        if method in self.methods:
                            points.append(Point(method, theta, m))
        for m in self.max_sequences:
            points += [Point(method, None, m) for method in WAVE_METHODS if method in self.methods]
        if ECONF in self.methods:
            points += [Point(ECONF, theta, m) for m in self.max_sequences for theta in self.thetas]
        return points

    def parallel_sizes(self) -> list[int]:
        """The M values of full parallel sampling, ascending: every -M value, and 1, 2, 4, … below
        the largest, so the report always has the parallel curve EAGer is judged against. []
        without `parallel` among the methods."""
        if PARALLEL not in self.methods:
            return []
        largest = max(self.max_sequences)
        powers = {1 << i for i in range(largest.bit_length()) if 1 << i < largest}
        return sorted(powers | set(self.max_sequences))

    def parallel_source(self, point: Point) -> Point | None:
        """The decoded parallel point a smaller parallel point is derived from; None for a point
        that is decoded itself (every EAGer point, and parallel at the largest M)."""
        sizes = self.parallel_sizes()
        if point.method != PARALLEL or not sizes or point.max_sequences == sizes[-1]:
            return None
        return Point(PARALLEL, None, sizes[-1])


def calibration_pool(dataset: list[Problem], evaluated: list[Problem]) -> list[Problem]:
    """The problems a calibrated θ may be tuned on: the dataset's, in dataset order, minus the
    evaluated selection (by id, and by text, so a duplicate of an evaluated problem is left out too).

    `evaluated` is the selection before --shard: shards of one evaluation share one pool."""
    ids = {p.id for p in evaluated}
    texts = {p.problem for p in evaluated}
    return [p for p in dataset if p.id not in ids and p.problem not in texts]


def calibration_problems(texts: list[str], dataset: list[Problem]) -> dict:
    """Which problems calibrated a θ, for the manifest and the report: their ids in the dataset
    (dataset order of the calibration), and how many of the prompts are not problems of this
    dataset (a profile recorded on another dataset of the same task)."""
    by_text: dict[str, str] = {}
    for p in dataset:
        by_text.setdefault(p.problem, p.id)
    ids = [by_text[t] for t in texts if t in by_text]
    return {"rule": "outside the evaluated selection", "count": len(texts), "ids": ids,
            "not_in_dataset": len(texts) - len(ids)}
