"""Adaptive-Consistency, ESC and DeepConf in an evaluation: rounds of waves, batched across prompts.

Each round, every prompt whose rule has not stopped it asks for its next wave (stopping.WaveRule:
ESC's window; Adaptive-Consistency's fewest samples after which its rule could fire), and all those
waves go to ONE `EagerLocal.stream` call: a wave is full parallel sampling of the prompt with cap =
its size, so the engine decodes the waves of many prompts in one batch, as it does for parallel
and EAGer-init. When the round's trees are in, each prompt's rule looks at every answer it has
(answers as extracted when the wave's record was written, eager_local/answers.py) and stops it or
not; a prompt also stops at the cap (-M) or when a wave drew nothing (token budget gone).
DeepConf (deepconf.py) asks for a warm-up wave and then the rest of M, and watches each wave's
tokens (`DeepConfRule.watch`: confidences, and in the final wave the per-sample early stop).

Every wave is logged as its own record in a journal (`<point>.waves.jsonl`, appended, fsync'ed) as
soon as its tree completes; the per-prompt records (waves merged, records.merge_waves) are rebuilt
from it. A rerun replays the rounds from the journal (the rules are pure functions of the logged
answers, so the same waves are asked for) and generates only the waves not in it.

Random streams. Sample j of a wave that starts at the prompt's k-th sample draws from stream
(seed, position, k + j) (`Request.first_sequence` = k): exactly the stream full parallel sampling
gives the prompt's sample k + j. A rival's samples are therefore the first #S samples of parallel
sampling at M ≥ #S, and both rivals draw the same samples: every comparison among them is paired.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import default
from ..engine import Request
from . import store
from .deepconf import DeepConfRule, make_deepconf_rule
from .records import make_record, merge_waves
from .session import PointStats
from .stopping import WaveRule, make_rule
from .store import DEEPCONF_METHODS, PARALLEL, Point, ResultsError

@dataclass
class _Prompt:
    slot: int
    waves: list[dict] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    stopped_by: str | None = None  # "rule", "cap" or "budget"


@dataclass(frozen=True)
class _Wave:
    prompt: _Prompt
    round: int
    first_sample: int
    size: int


def run_wave_point(ev, point: Point) -> None:
    """Run (or resume, or find complete) an Adaptive-Consistency, ESC or DeepConf point of Evaluation `ev`."""
    records_path = ev.out / point.records_file
    journal_path = ev.out / point.waves_file
    ids = [p.id for p in ev.problems]
    done = [r["id"] for r in store.read_records(records_path)]
    if sorted(done) == sorted(ids) and (store.read_json(ev.out / point.stats_file) or {}).get("complete"):
        return
    if point.method in DEEPCONF_METHODS:
        rule = make_deepconf_rule(point.method, point.max_sequences, ev.spec.rivals,
                                  ev.spec.generation["max_new_tokens"])
    else:
        rule = make_rule(point.method, point.max_sequences, ev.spec.rivals)
    journal = {(r["id"], r["round"]): r for r in store.read_records(journal_path, repair=True)}
    stats = PointStats.open(ev.out / point.stats_file, point)
    batches = ev.runner.count_steps()
    prompts = [_Prompt(slot) for slot in range(len(ev.problems))]
    round_ = 0
    with store.RecordWriter(journal_path) as writer:
        while True:
            waves = []
            for p in prompts:
                if p.stopped_by is None:
                    size = rule.next_wave(p.answers)
                    if size == 0:
                        p.stopped_by = "cap"
                    else:
                        waves.append(_Wave(p, round_ + 1, len(p.answers), size))
            if not waves:
                break
            round_ += 1
            for wave, record in zip(waves, _round(ev, point, rule, waves, journal, writer)):
                p = wave.prompt
                p.waves.append(record)
                p.answers += [s["answer"] for s in record["sequences"]]
                if record["#S"] == 0:
                    p.stopped_by = "budget"
                elif rule.decide(p.answers, record["#S"]).stop:
                    p.stopped_by = "rule"
            stats.save(rounds=round_, batches=batches.as_dict())
    merge = rule.merge if isinstance(rule, DeepConfRule) else merge_waves
    merged = [merge(point, p.waves, p.stopped_by) for p in prompts]
    store.write_records_atomic(records_path, merged)
    stopped = {reason: sum(p.stopped_by == reason for p in prompts) for reason in ("rule", "cap", "budget")}
    stats.save(complete=True, records=len(merged), rounds=round_, stopped_by=stopped,
               rule=asdict(rule),
               batches=batches.as_dict())


def _round(ev, point: Point, rule: WaveRule | DeepConfRule, waves: list[_Wave], journal: dict, writer) -> list[dict]:
    """The records of one round's waves, in order: from the journal, or generated now in one stream."""
    results: dict[int, dict] = {}
    todo = []
    for wave in waves:
        logged = journal.get((ev.problems[wave.prompt.slot].id, wave.round))
        if logged is None:
            todo.append(wave)
            continue
        if logged["first_sample"] != wave.first_sample or logged["wave"] != wave.size:
            raise ResultsError(
                f"{point.waves_file}: logged wave of {logged['id']!r} round {wave.round} does not match the "
                "rule replayed from the earlier waves (was the journal edited?)"
            )
        results[wave.prompt.slot] = logged
    if todo:
        theta = ev.spec.thetas[0] if ev.spec.thetas else default("theta")  # unused by parallel sampling
        config = ev.config(PARALLEL, theta, max(w.size for w in todo))
        by_index, requests, watches = {}, [], {}
        for wave in todo:
            slot = wave.prompt.slot
            index = ev.positions[slot]  # one wave per prompt in a round: the position names it
            by_index[index] = wave
            requests.append(Request(tokens=ev.prompt_tokens(slot), text=ev.problems[slot].problem, index=index,
                                    first_sequence=wave.first_sample, max_sequences=wave.size))
            if isinstance(rule, DeepConfRule):
                watches[index] = rule.watch(requests[-1], wave.prompt.waves)
        desc = f"{point.name} round {waves[0].round}"
        with ev._bar(desc, len(waves), len(waves) - len(todo), unit="wave") as bar:
            for tree in ev.runner.stream(requests, config, budget=ev.budget, on_token=bar.on_token):
                wave = by_index[tree.index]
                slot = wave.prompt.slot
                extra = {"round": wave.round, "first_sample": wave.first_sample, "wave": wave.size}
                record = make_record(ev.problems[slot], ev.positions[slot], tree, point, extra)
                if tree.index in watches:
                    watches[tree.index].annotate(record)
                answers = wave.prompt.answers + [s["answer"] for s in record["sequences"]]
                verdict = rule.decide(answers, len(record["sequences"]))
                record["rule"] = {"stop": verdict.stop, "value": verdict.value,
                                  "counts": list(verdict.counts) if verdict.counts else None}
                writer.append(record)
                results[slot] = record
                bar.prompt_done(record)
    return [results[wave.prompt.slot] for wave in waves]
