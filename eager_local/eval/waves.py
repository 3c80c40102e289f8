"""The methods that sample in waves, in an evaluation: rounds of waves, batched across prompts.

Adaptive-Consistency, ESC (stopping.py), DeepConf (deepconf.py) and eager-conf (eagerconf.py) are
rules of one interface (stopping.py's docstring). Each round, every prompt whose rule has not
stopped it asks for its next wave (ESC's window; Adaptive-Consistency's fewest samples after which
its rule could fire; DeepConf's warm-up, then the rest of M), and all those waves go to ONE
`EagerLocal.stream` call: a wave is full parallel sampling of the prompt (or, for eager-conf, an
EAGer tree) with cap = its size, so the engine decodes the waves of many prompts in one batch, as
it does for parallel and EAGer-init. A rule may watch a wave's tokens (`watch`: DeepConf's
confidences and early stops); the watch runs where the wave decodes (in this process, or in the Ray
actor that holds the request, whose watch's state the runner restores here before it yields the
tree), and annotates the wave's record here. When the round's trees are in, each prompt's rule looks at every
vote it has (`votes`: answers as extracted when the wave's record was written,
eager_local/answers.py) and stops it or not; a prompt also stops at the cap (-M) or when a wave
drew nothing (token budget gone).

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
from . import eagerconf
from .deepconf import make_deepconf_rule
from .deepconf import method_options as deepconf_options
from .records import make_record
from .session import PointStats
from .stopping import make_rule
from .stopping import method_options as stopping_options
from .store import DEEPCONF_METHODS, ECONF, Point, ResultsError

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
    """Run (or resume, or find complete) a wave method's point of Evaluation `ev`."""
    records_path = ev.out / point.records_file
    journal_path = ev.out / point.waves_file
    ids = [p.id for p in ev.problems]
    done = [r["id"] for r in store.read_records(records_path)]
    if sorted(done) == sorted(ids) and (store.read_json(ev.out / point.stats_file) or {}).get("complete"):
        return
    rule = wave_rule(point, ev.spec.rivals, ev.spec.generation["max_new_tokens"])
    journal = {(r["id"], r["round"]): r for r in store.read_records(journal_path, repair=True)}
    twin = warmup_twin(point, ev.spec.methods)
    borrowable = {} if twin is None else {r["id"]: r for r in store.read_records(ev.out / twin.waves_file)
                                          if r["round"] == 1}
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
            for wave, record in zip(waves, _round(ev, point, rule, waves, journal, borrowable, writer)):
                p = wave.prompt
                p.waves.append(record)
                p.answers += rule.votes(record)
                if record["#S"] == 0:
                    p.stopped_by = "budget"
                elif rule.decide(p.answers, record["#S"]).stop:
                    p.stopped_by = "rule"
            stats.save(rounds=round_, batches=batches.as_dict())
    merged = [rule.merge(point, p.waves, p.stopped_by) for p in prompts]
    store.write_records_atomic(records_path, merged)
    stopped = {reason: sum(p.stopped_by == reason for p in prompts) for reason in ("rule", "cap", "budget")}
    stats.save(complete=True, records=len(merged), rounds=round_, stopped_by=stopped,
               rule=asdict(rule),
               batches=batches.as_dict())


def method_options(methods, *, ac_criterion: str, ac_threshold: float, esc_window, deepconf_warmup,
                   deepconf_window, max_sequences: list[int], max_new_tokens: int) -> dict | None:
    """The options of every wave method among `methods`, as an evaluation pins them and the rules
    read them (None when none is asked for); each method's own `method_options` checks its values."""
    options = {**(stopping_options(methods, ac_criterion, ac_threshold, esc_window, max_sequences) or {}),
               **deepconf_options(methods, deepconf_warmup, deepconf_window, max_sequences, max_new_tokens),
               **eagerconf.method_options(methods, deepconf_warmup, deepconf_window, ac_threshold, max_sequences,
                                          max_new_tokens)}
    return options or None


def wave_rule(point: Point, options: dict, max_new_tokens: int):
    """The rule of a wave method's point, from the spec's method options."""
    if point.method in DEEPCONF_METHODS:
        return make_deepconf_rule(point.method, point.max_sequences, options, max_new_tokens)
    if point.method == ECONF:
        return eagerconf.make_rule(point, options, max_new_tokens)
    return make_rule(point.method, point.max_sequences, options)


def warmup_twin(point: Point, methods: list[str]) -> Point | None:
    """The point whose warm-up waves this point may borrow instead of decoding them again:
    deepconf-low and deepconf-high at the same M draw the same warm-up (parallel sampling's first
    N_init samples, with the same options), so when both run, the second borrows the first's."""
    if point.method not in DEEPCONF_METHODS:
        return None
    other = next((m for m in DEEPCONF_METHODS if m != point.method), None)
    return Point(other, None, point.max_sequences) if other in methods else None


def _round(ev, point: Point, rule, waves: list[_Wave], journal: dict, borrowable: dict, writer) -> list[dict]:
    """The records of one round's waves, in order: from the journal, borrowed from the warm-up twin's
    journal (logged in this one too, marked `borrowed_from`), or generated now in one stream."""
    results: dict[int, dict] = {}
    todo = []
    for wave in waves:
        pid = ev.problems[wave.prompt.slot].id
        logged = journal.get((pid, wave.round))
        twin = borrowable.get(pid) if wave.round == 1 else None
        if logged is None and twin is not None and (twin["first_sample"], twin["wave"]) == (0, wave.size):
            logged = dict(twin, method=point.method, borrowed_from=twin.get("borrowed_from") or twin["method"])
            writer.append(logged)
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
        theta = point.theta if point.theta is not None else default("theta")  # unused by parallel sampling
        config = ev.config(rule.engine_method, theta, max(w.size for w in todo))
        by_index, requests, watches = {}, [], {}
        for wave in todo:
            slot = wave.prompt.slot
            index = ev.positions[slot]  # one wave per prompt in a round: the position names it
            by_index[index] = wave
            requests.append(Request(tokens=ev.prompt_tokens(slot), text=ev.problems[slot].problem, index=index,
                                    first_sequence=wave.first_sample, max_sequences=wave.size))
            watch = rule.watch(requests[-1], wave.prompt.waves)
            if watch is not None:
                watches[index] = watch
        desc = f"{point.name} round {waves[0].round}"
        with ev._bar(desc, len(waves), len(waves) - len(todo), unit="wave") as bar:
            for tree in ev.runner.stream(requests, config, budget=ev.budget, on_token=bar.on_token):
                wave = by_index[tree.index]
                slot = wave.prompt.slot
                extra = {"round": wave.round, "first_sample": wave.first_sample, "wave": wave.size}
                record = make_record(ev.problems[slot], ev.positions[slot], tree, point, extra)
                if tree.index in watches:
                    watches[tree.index].annotate(record)
                answers = wave.prompt.answers + rule.votes(record)
                verdict = rule.decide(answers, len(record["sequences"]))
                record["rule"] = {"stop": verdict.stop, "value": verdict.value,
                                  "counts": list(verdict.counts) if verdict.counts else None}
                writer.append(record)
                results[slot] = record
                bar.prompt_done(record)
    return [results[wave.prompt.slot] for wave in waves]
