"""One prompt sampled in waves by an evaluation rival's rule: `eager-local run --method adaptive-consistency`
(or esc, deepconf-low, deepconf-high, eager-conf).

The rules are the evaluation's (eval/stopping.py, eval/deepconf.py, eval/eagerconf.py; the
wave-rule interface is in stopping.py's docstring), built from the same checked options
(`method_options` of each). This module runs their loop for one prompt, as eval/waves.py runs it
for a dataset: ask the rule for the next wave's size, generate the wave (full parallel sampling or
an EAGer tree of cap = its size, watched token by token when the rule watches), add the wave's
votes, and stop on the rule's verdict, at the cap (-M), or when a wave drew nothing (the session's
--budget is spent).

Wave k's samples draw the random streams k, k+1, … (`Request.first_sequence`), so the samples of
adaptive-consistency, esc and deepconf-* are the first #S samples `run --method parallel` draws
with the same seed and options.

Each wave keeps its tree and the minimal record the rules read (sequence ids, token counts, fork
points, finish reasons, answers as eager_local/answers.py extracts them; with DeepConf's watch the
per-token confidences and each sequence's lowest group confidence). The method's vote is the
evaluation's cons@k vote: the majority of every sample's answer (adaptive-consistency, esc), or
the vote weighted by confidence over the samples at or above the warm-up's threshold (deepconf-*,
eager-conf; eval/confidence.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .answers import extract_answer, majority_answer
from .budget import TokenBudget
from .config import GenerationConfig
from .engine import Request
from .eval import confidence as C
from .eval import deepconf, eagerconf
from .eval import waves as wave_methods
from .eval.stopping import Decision
from .eval.store import AC, CONFIDENCE_METHODS, DEEPCONF_METHODS, ECONF, ESC, Point

from .tree import Tree

METHODS = (AC, ESC, *DEEPCONF_METHODS, ECONF)  # what `run --method` adds to config.METHODS


def method_options(method: str, *, ac_criterion: str, ac_threshold: float, esc_window, deepconf_warmup,
                   deepconf_window, max_sequences: int, max_new_tokens: int) -> dict:
    """The rules' options for one method at cap M, as an evaluation of that method alone pins them,
    checked by the rules' own `method_options` (a ConfigError names the bad value)."""
    return wave_methods.method_options([method], ac_criterion=ac_criterion, ac_threshold=ac_threshold,
                                       esc_window=esc_window, deepconf_warmup=deepconf_warmup,
                                       deepconf_window=deepconf_window, max_sequences=[max_sequences],
                                       max_new_tokens=max_new_tokens) or {}


def branches(method: str) -> bool:
    """The method's waves are EAGer trees (eager-conf), so θ matters; the others sample in parallel."""
    return method == ECONF


def make_rule(method: str, options: dict, max_sequences: int, max_new_tokens: int, theta: float):
    """The rule the evaluation runs for `method` at cap M (θ is eager-conf's; the others have none)."""
    point = Point(method, theta if branches(method) else None, max_sequences)
    return wave_methods.wave_rule(point, options, max_new_tokens)


def describe(method: str, options: dict, rule, max_new_tokens: int) -> str:
    """One line: how the rule samples and when it stops (DeepConf's and eager-conf's as the report says it)."""
    if method in DEEPCONF_METHODS:
        return f"{method}: " + deepconf.describe(method, options, rule.cap, max_new_tokens)
    if method == ECONF:
        point = Point(method, rule.theta, rule.cap)
        return f"{method} (θ {rule.theta:g}): " + eagerconf.describe(point, options, max_new_tokens)
    if method == AC:
        return f"{method}: stop once P(leading answer is the majority) ≥ {rule.threshold:g}, cap {rule.cap}"
    return (f"{method}: windows of {rule.window}, stop at the first window whose answers all agree, "
            f"at most {rule.cap // rule.window} windows")


@dataclass
class Wave:
    """One wave: its round, the first sample's number, its size (the cap it was asked for), its tree,
    the record the rule read (`record["sequences"]` in tree order) and the rule's verdict after it."""

    round: int
    first_sample: int
    size: int
    tree: Tree
    record: dict
    verdict: Decision


@dataclass
class WaveRun:
    """One prompt's waves, the vote and why the method stopped ("rule", "cap" or "budget")."""

    method: str
    rule: object
    description: str
    waves: list[Wave]
    stopped_by: str
    wall: float
    threshold: float | None = None  # the warm-up's confidence threshold s (deepconf-*, eager-conf)

    @property
    def weighted(self) -> bool:
        """The vote is weighted by confidence (DeepConf's) rather than one sample one vote."""
        return self.method in CONFIDENCE_METHODS

    @property
    def samples(self) -> list[dict]:
        """Every sample in the order drawn, numbered across waves (ids, parents), with its wave's round,
        answer, finish reason and, where the method has one, its lowest group confidence and vote weight."""
        out = []
        for wave in self.waves:
            for s in wave.record["sequences"]:
                parent = None if s["parent"] is None else s["parent"] + wave.first_sample
                out.append({**s, "id": s["id"] + wave.first_sample, "parent": parent, "wave": wave.round})
        if self.weighted:
            weights = C.vote_weights([s.get("min_conf") for s in out], self.threshold)
            for s, weight in zip(out, weights):
                s["weight"] = weight
        return out

    @property
    def vote(self) -> str | None:
        """The method's answer: the evaluation's cons@k vote over every sample."""
        samples = self.samples
        answers = [s["answer"] for s in samples]
        if self.weighted:
            return C.weighted_majority(answers, [s["weight"] for s in samples])
        return majority_answer(answers)

    @property
    def voters(self) -> int:
        """Samples that voted: an answer and, for a weighted vote, a weight (at or above s)."""
        return sum(s["answer"] is not None and (not self.weighted or s["weight"] is not None) for s in self.samples)

    @property
    def generated_tokens(self) -> int:
        return sum(w.tree.generated_tokens for w in self.waves)

    def stop_text(self) -> str:
        """Why the method stopped, in words."""
        if self.stopped_by == "budget":
            return "budget: a wave drew nothing (the --budget is spent)"
        if self.stopped_by == "cap":
            return f"cap: -M {self.rule.cap} reached" + (" (no room for another window)" if self.method == ESC else "")
        verdict = self.waves[-1].verdict
        if verdict.value is not None:
            a, b = verdict.counts
            return (f"rule: P(leading answer is the majority) = {verdict.value:.4f} ≥ "
                    f"{self.rule.ac_threshold if self.method == ECONF else self.rule.threshold:g} (a={a}, b={b})")
        return f"rule: the {len(self.waves[-1].record['sequences'])} answers of the last window agree"

    def verdict_text(self, wave: Wave) -> str | None:
        """What the rule said after a wave (None for DeepConf: it never stops on answers)."""
        verdict = wave.verdict
        then = "stop" if verdict.stop else "go on"
        if verdict.value is not None:
            a, b = verdict.counts
            return f"P(leading answer is the majority) = {verdict.value:.4f} (a={a}, b={b}): {then}"
        if self.method == ESC:
            return f"the window's answers {'all agree' if verdict.stop else 'do not all agree'}: {then}"
        return None

    def to_dict(self, budget: TokenBudget | None = None) -> dict:
        """`run --json`'s document (without the model and θ, which the command adds)."""
        samples = self.samples
        waves = []
        for wave in self.waves:
            waves.append({
                "round": wave.round, "first_sample": wave.first_sample, "size": wave.size,
                "threshold": wave.record.get("threshold"),
                "verdict": {"stop": wave.verdict.stop, "value": wave.verdict.value,
                            "counts": list(wave.verdict.counts) if wave.verdict.counts else None},
                "samples": [s for s in samples if s["wave"] == wave.round],
                "tree": wave.tree.to_dict(),
            })
        finish: dict[str, int] = {}
        for s in samples:
            finish[s["finish_reason"] or "live"] = finish.get(s["finish_reason"] or "live", 0) + 1
        tokens = self.generated_tokens
        return {
            "method": self.method,
            "rule": asdict(self.rule),
            "description": self.description,
            "waves": waves,
            "threshold": self.threshold,
            "vote": {"answer": self.vote, "weighted": self.weighted, "voters": self.voters},
            "stopped_by": self.stopped_by,
            "stop": self.stop_text(),
            "summary": {
                "waves": len(self.waves),
                "sequences": len(samples),
                "generated_tokens": tokens,
                "tokens_per_second": round(tokens / self.wall, 2) if self.wall > 0 else None,
                "wall_time": round(self.wall, 3),
                "budget_left": None if budget is None or budget.limit is None else budget.remaining,
                "finish_reasons": finish,
            },
        }


def run_waves(runner, tokens: list[int], prompt: str, method: str, rule, description: str,
              config: GenerationConfig, budget: TokenBudget) -> WaveRun:
    """Sample one prompt in waves until its rule stops it, the cap is reached or the budget is spent.

    `config` carries every generation option (θ resolved); each wave runs it with the rule's engine
    method and cap = the wave's size."""
    waves: list[Wave] = []
    answers: list[str | None] = []
    stopped_by = None
    start = time.perf_counter()
    while stopped_by is None:
        size = rule.next_wave(answers)
        if size == 0:
            stopped_by = "cap"
            break
        request = Request(tokens=tokens, text=prompt, first_sequence=len(answers), max_sequences=size)
        watch = rule.watch(request, [w.record for w in waves])
        wave_config = config.with_options(method=rule.engine_method, max_sequences=size)
        (tree,) = runner.generate_requests([request], wave_config, budget=budget)
        record = wave_record(tree, method, len(waves) + 1, len(answers), size)
        if watch is not None:
            watch.annotate(record)
        answers += rule.votes(record)
        verdict = rule.decide(answers, len(record["sequences"]))
        waves.append(Wave(len(waves) + 1, record["first_sample"], size, tree, record, verdict))
        if not tree.sequences:
            stopped_by = "budget"
        elif verdict.stop:
            stopped_by = "rule"
    wall = time.perf_counter() - start
    threshold = warmup_threshold(rule, waves) if method in CONFIDENCE_METHODS else None
    return WaveRun(method, rule, description, waves, stopped_by, wall, threshold)


def wave_record(tree: Tree, method: str, round_: int, first_sample: int, size: int) -> dict:
    """What a rule reads of a wave (its `votes`, `watch` and the watch's `annotate`): per sequence its
    id, parent, fork point, token counts, finish reason and answer."""
    sequences = [{"id": s.id, "parent": s.parent, "fork_at": s.fork_at, "tokens": len(s.tokens),
                  "new_tokens": s.new_token_count, "finish_reason": s.finish_reason,
                  "answer": extract_answer(s.text)} for s in tree.sequences]
    return {"id": "prompt", "method": method, "round": round_, "first_sample": first_sample, "wave": size,
            "#S": len(sequences), "#T": tree.generated_tokens, "sequences": sequences}


def warmup_threshold(rule, waves: list[Wave]) -> float | None:
    """The threshold s the rule sets from the warm-up wave (None without one)."""
    return rule.threshold(waves[0].record) if waves else None
