"""Result records: one prompt's tree as a JSON-ready dict, and how it is graded.

A record keeps what the model wrote (every sequence's text), the problem, its reference answer and
the answer kind, so it can be graded again at any time: `report` re-grades every record with
today's grader (`regrade`), the way lm-evaluation-harness keeps raw responses and filters after,
and a fix to answer extraction or equivalence reaches old runs.

A record also carries the grade it got when it was written (`answer`, `correct`, `n_correct`).
Full EAGer needs correctness during the run (it spends the saved budget on unsolved prompts), and a
resumed run rebuilds its plan from these stored labels, so the plan stays the one the journal was
written under even if the grader changed in between. The report never reads them.

Full parallel sampling's records at a smaller M are derived from the records at the largest M
(`derive_record`; spec.py says why that is exact). Adaptive-Consistency's and ESC's per-prompt
records merge the prompt's waves (`merge_waves`; waves.py), through `combine_parts`, which also
joins a parallel point's samples decoded in two runs (scripts/extend_parallel.py).
"""

from __future__ import annotations

import math

from ..tree import BUDGET
from .datasets import Problem
from .grading import extract_answer, is_correct, resolve_kind
from .store import Point

# What a record says about its problem: copied as they are into merged and derived records.
_PROBLEM_FIELDS = ("id", "position", "problem", "reference", "kind", "prompt_tokens")


def make_record(problem: Problem, position: int, tree, point: Point, extra: dict | None = None) -> dict:
    """One prompt's (or one extra run's) results, graded now (see the module docstring)."""
    sequences = []
    for s in tree.sequences:
        answer = extract_answer(s.text, problem.kind)
        own = [h for h in s.entropies[s.fork_at :] if h is not None and not math.isnan(h)]
        sequences.append(
            {
                "id": s.id,
                "parent": s.parent,
                "fork_at": s.fork_at,
                "run": 0,
                "text": s.text,
                "tokens": len(s.tokens),
                "new_tokens": s.new_token_count,
                "finish_reason": s.finish_reason,
                "answer": answer,
                "correct": bool(is_correct(answer, problem.answer, problem.kind)),
                "entropy_mean": _round(sum(own) / len(own)) if own else None,
                "entropy_max": _round(max(own)) if own else None,
                "entropy_n": len(own),
            }
        )
    events = [
        {
            "step": e.step,
            "parent": e.parent,
            "child": e.child,
            "entropy": _round(e.entropy),
            "threshold": _round(e.threshold),
            "top1_text": e.top1_text,
            "top2_text": e.top2_text,
            "run": 0,
        }
        for e in tree.events
    ]
    record = {
        "id": problem.id,
        "position": position,
        "problem": problem.problem,
        "reference": problem.answer,
        "kind": problem.kind,
        "method": point.method,
        "theta": point.theta,
        "M": point.max_sequences,
        "prompt_tokens": tree.prompt_tokens,
        "sequences": sequences,
        "events": events,
        "entropy": _entropy_summary(sequences),
        "#T": tree.generated_tokens,
        "#S": len(tree.sequences),
        "n_correct": sum(s["correct"] for s in sequences),
        "steps": tree.steps,
        "wall_time": round(tree.wall_time, 4),
        "started": tree.started,
        "cut_by_budget": tree.cut_by_budget,
        "finish_counts": tree.finish_counts(),
    }
    if extra:
        record.update(extra)
    return record


def merge_records(point: Point, init: dict, extras: list[dict]) -> dict:
    """A prompt's EAGer-adapt / EAGer record: its EAGer-init sequences plus every extra run's.

    Sequence and branch ids of extra runs are shifted past the ones before them, so ids stay unique
    and parents point inside the same run; `run` says which run (0 = EAGer-init) each came from.
    """
    sequences = [dict(s, run=0) for s in init["sequences"]]
    events = [dict(e, run=0) for e in init["events"]]
    runs = [{"round": 0, "cap": init["M"], "theta": init["theta"], "#S": init["#S"], "#T": init["#T"]}]
    for extra in sorted(extras, key=lambda r: r["round"]):
        offset = len(sequences)
        for s in extra["sequences"]:
            parent = None if s["parent"] is None else s["parent"] + offset
            sequences.append(dict(s, id=s["id"] + offset, parent=parent, run=extra["round"]))
        for e in extra["events"]:
            events.append(dict(e, parent=e["parent"] + offset, child=e["child"] + offset, run=extra["round"]))
        runs.append({k: extra[k] for k in ("round", "cap", "theta", "#S", "#T")})
    return {**_combined(point, [init] + extras, sequences, events, started=init["started"]), "runs": runs}


def _combined(point: Point, parts: list[dict], sequences: list[dict], events: list[dict], *, started: bool) -> dict:
    """A prompt's record made of several runs' records (`parts`, the first one's problem fields):
    their sequences and events as given, their tokens, steps and wall time summed."""
    return {
        **{k: parts[0][k] for k in _PROBLEM_FIELDS},
        "method": point.method,
        "theta": point.theta,
        "M": point.max_sequences,
        "sequences": sequences,
        "events": events,
        "entropy": _entropy_summary(sequences),
        "#T": sum(r["#T"] for r in parts),
        "#S": len(sequences),
        "n_correct": sum(s["correct"] for s in sequences),
        "steps": sum(r["steps"] for r in parts),
        "wall_time": round(sum(r["wall_time"] for r in parts), 4),
        "started": started,
        "cut_by_budget": any(r["cut_by_budget"] for r in parts),
        "finish_counts": _finish_counts(sequences),
    }


def merge_waves(point: Point, waves: list[dict], stopped_by: str) -> dict:
    """A prompt's record of a method that samples in waves: its waves' sequences in the order drawn.

    A wave is a small full-parallel-sampling run or an EAGer tree (eager-conf); `run` says which
    wave (its round) each sequence came from (`combine_parts` shifts the ids). `waves` lists each
    wave's round, first sample, size, #S, #T and the rule's verdict after it; `stopped_by` is
    "rule", "cap" or "budget" (a wave drew nothing).
    """
    waves = sorted(waves, key=lambda r: r["round"])
    return {
        **combine_parts(point, waves, runs=[w["round"] for w in waves]),
        "waves": [{k: w[k] for k in ("round", "first_sample", "wave", "#S", "#T", "rule")} for w in waves],
        "stopped_by": stopped_by,
    }


def combine_parts(point: Point, parts: list[dict], *, runs: list[int] | None = None) -> dict:
    """One prompt's record at `point` made of records of that prompt decoded apart (`parts`, in
    order; the first one's problem fields): a method's waves, or a point's samples decoded in two
    runs (scripts/extend_parallel.py). The records' own bookkeeping (waves, rounds) is not kept.

    Each part's sequence and branch ids are shifted past the earlier parts', so ids stay unique and
    parents point inside the same part; `runs` gives each part's `run` label (default 0 for all:
    the parts are pieces of one run). Tokens, steps and wall time are summed, the record started if
    any part did.
    """
    runs = [0] * len(parts) if runs is None else runs
    sequences, events = [], []
    for part, run in zip(parts, runs, strict=True):
        offset = len(sequences)
        for s in part["sequences"]:
            parent = None if s["parent"] is None else s["parent"] + offset
            sequences.append(dict(s, id=s["id"] + offset, parent=parent, run=run))
        for e in part.get("events", []):
            events.append(dict(e, parent=e["parent"] + offset, child=e["child"] + offset, run=run))
    return _combined(point, parts, sequences, events, started=any(p["started"] for p in parts))


def derive_record(record: dict, point: Point, source: Point) -> dict:
    """A prompt's full-parallel-sampling record at M = m (`point`), from its record at a larger M
    (`source`): the first m sequences, which drew from the random streams an m-sample run uses.

    Texts, answers, grades and token counts are those sequences' own; #T is their tokens, #S = m,
    `steps` the longest of them (every parallel row advances one token per step). The wall time is
    the source record's, pro rata by tokens: the derived samples were decoded in the larger run's
    batches, so there is no time of their own to report. `derived_from` names the source point.
    """
    sequences = record["sequences"][: point.max_sequences]
    tokens = sum(s["new_tokens"] for s in sequences)
    share = tokens / record["#T"] if record["#T"] else 0.0
    return {
        **{k: record[k] for k in _PROBLEM_FIELDS},
        "method": point.method,
        "theta": point.theta,
        "M": point.max_sequences,
        "sequences": sequences,
        "events": [],  # full parallel sampling never branches
        "entropy": _entropy_summary(sequences),
        "#T": tokens,
        "#S": len(sequences),
        "n_correct": sum(s["correct"] for s in sequences),
        "steps": max((s["tokens"] for s in sequences), default=0),
        "wall_time": round(record["wall_time"] * share, 4),
        "started": record["started"],
        "cut_by_budget": not record["started"] or any(s["finish_reason"] == BUDGET for s in sequences),
        "finish_counts": _finish_counts(sequences),
        "derived_from": source.name,
    }


def regrade(record: dict, default_kind: str = "auto") -> dict:
    """The record graded with today's grader: a copy whose sequences' `answer` and `correct`, and
    `n_correct`, are recomputed from each sequence's text and the record's reference answer.

    `default_kind` (the run's --answer-kind) stands in for a record without its own kind. A
    sequence without text (a hand-written record) is graded from its stored answer, and one with
    neither keeps its stored grade. `regraded` counts the sequences whose grade changed.
    """
    reference = record["reference"]
    kind = resolve_kind(record.get("kind") or default_kind, reference)
    sequences, changed = [], 0
    for s in record["sequences"]:
        if "text" in s:
            answer = extract_answer(s["text"], kind)
        elif "answer" in s:
            answer = s["answer"]
        else:
            sequences.append(dict(s))
            continue
        correct = bool(is_correct(answer, reference, kind))
        changed += "correct" in s and bool(s["correct"]) != correct
        sequences.append(dict(s, answer=answer, correct=correct))
    return {**record, "kind": kind, "sequences": sequences,
            "n_correct": sum(1 for s in sequences if s.get("correct")), "regraded": changed}


def _finish_counts(sequences: list[dict]) -> dict[str, int]:
    """How many sequences ended for each reason ("live" for none), like Tree.finish_counts."""
    counts: dict[str, int] = {}
    for s in sequences:
        key = s["finish_reason"] or "live"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _entropy_summary(sequences: list[dict]) -> dict:
    """Mean (weighted by steps) and max of the sequences' own entropies, and how many steps."""
    n = sum(s["entropy_n"] for s in sequences)
    if not n:
        return {"mean": None, "max": None, "n": 0}
    total = sum(s["entropy_mean"] * s["entropy_n"] for s in sequences if s["entropy_n"])
    return {
        "mean": _round(total / n),
        "max": max(s["entropy_max"] for s in sequences if s["entropy_n"]),
        "n": n,
    }


def _round(x: float) -> float:
    return round(float(x), 5)
