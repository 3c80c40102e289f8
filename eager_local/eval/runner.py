"""Offline evaluation: run the paper's four methods over a dataset, writing results as they arrive.

Every (method, θ, M) point is one JSONL file in the run directory (see store.py). Full parallel
sampling and EAGer-init submit all of a point's remaining prompts to ONE `Engine.stream` call, so
the engine keeps its batch full with the live sequences of several prompts, and each prompt's
record is appended (flush + fsync) the moment its tree completes. EAGer-adapt and full EAGer reuse
the EAGer-init point of the same (θ, M) and log every extra EAGer-init run as its own record in a
journal; their per-prompt records (init + extra runs merged) are rebuilt from it. Rerunning the
same command resumes: done prompts and logged extra runs are skipped, the reallocation plan is
rebuilt deterministically from what is on disk, and the run's token budget restarts from the tokens
already spent.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..budget import TokenBudget
from . import plan as P
from . import store
from .datasets import Problem
from .grading import extract_answer, is_correct
from .prompting import render
from .store import ADAPT, FULL, INIT, PARALLEL, Point


# --- parameters ------------------------------------------------------------------------------------
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

        EAGer-init runs for every (θ, M) that adapt or full EAGer needs, even if not asked for.
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


def parse_methods(text: str) -> list[str]:
    methods = dedupe(x.strip() for x in text.split(",") if x.strip())
    if not methods:
        raise ValueError("no method given (choose from " + ", ".join(store.EVAL_METHODS) + ")")
    for m in methods:
        if m not in store.EVAL_METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(store.EVAL_METHODS)}")
    return methods


def parse_list(text: str, kind: type, name: str) -> list:
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = kind(part)
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{name}: {part!r} is not a finite number")
        values.append(value)
    if not values:
        raise ValueError(f"{name}: no value given")
    return dedupe(values)


DEFAULT_CHECK_THETA = 2.4  # validates the other options when every θ is calibrated


def parse_theta_specs(text: str) -> list:
    """--theta's comma list: numbers as floats; 'auto' and 'qNN.N' kept as strings (resolved later)."""
    from ..calibration import parse_theta_spec

    specs = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        kind, value = parse_theta_spec(part)
        specs.append(value if kind == "number" else part.lower())
    if not specs:
        raise ValueError("theta: no value given")
    return dedupe(specs)


def dedupe(values) -> list:
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


# --- run directory ---------------------------------------------------------------------------------
def open_run_dir(out: Path, spec: EvalSpec, problems: list[Problem], info: dict,
                 calibration: list[dict] | None = None) -> dict:
    """Create the run directory and manifest, or check that an existing one holds the same run.

    A different run in the same directory is refused (ResultsError, one line). `info` (model path,
    versions, machine) is recorded per session and never compared; `calibration` (how each
    calibrated θ was found) is kept for the report.
    """
    params = spec.params()
    ids = [p.id for p in problems]
    manifest_path = out / store.MANIFEST
    if out.exists() and not out.is_dir():
        raise store.ResultsError(f"--out {out} exists and is not a directory")
    if manifest_path.exists():
        manifest = store.load_manifest(out)
        differences = store.param_differences(manifest["params"], params)
        if manifest.get("problems") != ids and "selection" not in {d.split(".")[0] for d in differences}:
            differences.append("problems (the dataset's content changed)")
        if differences:
            raise store.ResultsError(
                f"{out} holds a run with different parameters ({', '.join(differences[:4])}"
                f"{' …' if len(differences) > 4 else ''}): rerun with the same ones to resume, or use another --out"
            )
        manifest.setdefault("sessions", []).append(info)
    else:
        if out.exists() and any(out.iterdir()):
            raise store.ResultsError(f"--out {out} is a non-empty directory that is not an eager-local run")
        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": store.FORMAT_VERSION,
            "created": info["started"],
            "params": params,
            "seed": spec.generation.get("seed"),
            "model": info["model"],
            "versions": info["versions"],
            "machine": info["machine"],
            "problems": ids,
            "sessions": [info],
        }
    if calibration:
        manifest["theta_calibration"] = calibration
    store.write_json_atomic(manifest_path, manifest)
    return manifest


def session_info(model_path: Path, model_name: str | None, sha256: str, threads: int | None) -> dict:
    from importlib import metadata

    from ..llama import default_threads

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "model": {
            "path": str(model_path),
            "name": model_name,
            "sha256": sha256,
            "size": model_path.stat().st_size,
        },
        "versions": {
            "eager-local": version("eager-local"),
            "llama-cpp-python": version("llama_cpp_python"),
            "numpy": version("numpy"),
            "math-verify": version("math-verify"),
            "python": platform.python_version(),
        },
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "usable_cpus": affinity,
            "threads": threads or default_threads(),
        },
    }


# --- records ---------------------------------------------------------------------------------------
def make_record(problem: Problem, position: int, tree, point: Point, extra: dict | None = None) -> dict:
    """One prompt's (or one extra run's) results as a JSON-ready dict, graded."""
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
    """A prompt's EAGer-adapt / EAGer record: its EAGer-init sequences plus every extra run's."""
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
    finish_counts: dict[str, int] = {}
    for s in sequences:
        key = s["finish_reason"] or "live"
        finish_counts[key] = finish_counts.get(key, 0) + 1
    everything = [init] + extras
    return {
        **{k: init[k] for k in ("id", "position", "problem", "reference", "kind", "prompt_tokens")},
        "method": point.method,
        "theta": point.theta,
        "M": point.max_sequences,
        "sequences": sequences,
        "events": events,
        "entropy": _entropy_summary(sequences),
        "#T": sum(r["#T"] for r in everything),
        "#S": len(sequences),
        "n_correct": sum(s["correct"] for s in sequences),
        "steps": sum(r["steps"] for r in everything),
        "wall_time": round(sum(r["wall_time"] for r in everything), 4),
        "started": init["started"],
        "cut_by_budget": any(r["cut_by_budget"] for r in everything),
        "finish_counts": finish_counts,
        "runs": runs,
    }


def _entropy_summary(sequences: list[dict]) -> dict:
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


# --- memory ----------------------------------------------------------------------------------------
def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (getrusage), in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * _PAGE / (1024 * 1024), 1)
    except (OSError, ValueError, IndexError):
        return None


# --- the evaluation --------------------------------------------------------------------------------
@dataclass
class PointStats:
    """The stats sidecar of a point: accumulated over the sessions that worked on it."""

    path: Path
    doc: dict = field(default_factory=dict)
    session_start: float = 0.0
    base_wall: float = 0.0
    sampled_peak: float | None = None

    @classmethod
    def open(cls, path: Path, point: Point) -> "PointStats":
        doc = store.read_json(path) or {"point": point.name, "wall_time": 0.0, "sessions": 0}
        doc["sessions"] = doc.get("sessions", 0) + 1
        doc["complete"] = False
        stats = cls(path=path, doc=doc, session_start=time.perf_counter(), base_wall=doc.get("wall_time", 0.0))
        stats.sampled_peak = doc.get("peak_rss_sampled_mb")
        return stats

    def sample_memory(self) -> None:
        rss = current_rss_mb()
        if rss is not None and (self.sampled_peak is None or rss > self.sampled_peak):
            self.sampled_peak = rss

    def save(self, complete: bool = False, **extra) -> None:
        self.sample_memory()
        self.doc["wall_time"] = round(self.base_wall + time.perf_counter() - self.session_start, 3)
        peak = peak_rss_mb()
        self.doc["peak_rss_mb"] = max(filter(None, [peak, self.doc.get("peak_rss_mb")]), default=None)
        self.doc["peak_rss_sampled_mb"] = self.sampled_peak
        self.doc["complete"] = complete
        self.doc.update(extra)
        store.write_json_atomic(self.path, self.doc, sync=False)


class Evaluation:
    """Runs an EvalSpec's points into a run directory with a loaded EagerLocal."""

    def __init__(self, spec: EvalSpec, out: Path, runner, problems: list[Problem], positions: list[int],
                 *, progress: bool = True):
        self.spec = spec
        self.out = out
        self.runner = runner
        self.problems = problems
        self.positions = positions  # each problem's index in the full dataset: its random streams
        self.progress = progress
        self.budget = TokenBudget(spec.budget)
        self.budget.spent = min(self.spent_on_disk(), spec.budget if spec.budget is not None else math.inf)
        self._tokens: dict[int, list[int]] = {}

    # budget ------------------------------------------------------------------------------------
    def spent_on_disk(self) -> int:
        """Tokens generated by this run so far: primary records (parallel, init) + extra runs."""
        total = 0
        for point in self.spec.points():
            name = point.extra_file if point.reallocates else point.records_file
            total += sum(r["#T"] for r in store.read_records(self.out / name))
        return total

    # prompts -----------------------------------------------------------------------------------
    def prompt_tokens(self, slot: int) -> list[int]:
        if slot not in self._tokens:
            text = render(self.spec.prompt_template, self.problems[slot].problem)
            self._tokens[slot] = self.runner.prompt_tokens(text, chat=self.spec.chat, system=self.spec.system)
        return self._tokens[slot]

    def config(self, method: str, theta: float, max_sequences: int):
        return self.runner.config(method=method, theta=theta, max_sequences=max_sequences, **self.spec.generation)

    # main --------------------------------------------------------------------------------------
    def run(self) -> None:
        for point in self.spec.points():
            if point.reallocates:
                self.run_reallocation(point)
            else:
                self.run_point(point)

    def run_point(self, point: Point) -> None:
        """Full parallel sampling or EAGer-init over every prompt not yet on disk, in one stream."""
        from ..engine import Request, StepStats

        path = self.out / point.records_file
        done = {r["id"] for r in store.read_records(path, repair=True)}
        todo = [slot for slot, p in enumerate(self.problems) if p.id not in done]
        if not todo and (store.read_json(self.out / point.stats_file) or {}).get("complete"):
            return
        stats = PointStats.open(self.out / point.stats_file, point)
        if not todo:
            stats.save(complete=True, records=len(done))
            return
        theta = point.theta if point.theta is not None else self.spec.thetas[0]
        config = self.config(point.method, theta, point.max_sequences)
        by_index = {self.positions[slot]: slot for slot in todo}
        requests = [
            Request(tokens=self.prompt_tokens(slot), text=self.problems[slot].problem, index=self.positions[slot])
            for slot in todo
        ]
        engine = self.runner.engine
        engine.stats = StepStats()  # how full the batches were: this session's share of the point
        with store.RecordWriter(path) as writer, self._bar(point.name, len(self.problems), len(done)) as bar:
            for tree in engine.stream(requests, config, budget=self.budget, on_token=bar.on_token):
                slot = by_index[tree.index]
                record = make_record(self.problems[slot], self.positions[slot], tree, point)
                writer.append(record)
                done.add(record["id"])
                bar.prompt_done(record)
                stats.save(records=len(done), batches=engine.stats.as_dict())
        stats.save(complete=True, records=len(done), batches=engine.stats.as_dict())

    def run_reallocation(self, point: Point) -> None:
        """EAGer-adapt or full EAGer: extra EAGer-init runs planned from the init point, then merge."""
        init_point = point.init_point()
        self.run_point(init_point)  # no-op when it is complete (it normally ran just before)
        init = {r["id"]: r for r in store.read_records(self.out / init_point.records_file)}
        missing = [p.id for p in self.problems if p.id not in init]
        if missing:  # only possible if the init file was edited by hand
            raise store.ResultsError(f"{init_point.records_file} lacks {len(missing)} prompt(s), e.g. {missing[0]!r}")
        journal_path = self.out / point.extra_file
        merged_ids = {r["id"] for r in store.read_records(self.out / point.records_file)}
        if merged_ids == set(init) and (store.read_json(self.out / point.stats_file) or {}).get("complete"):
            return
        journal = {(r["id"], r["round"]): r for r in store.read_records(journal_path, repair=True)}
        stats = PointStats.open(self.out / point.stats_file, point)

        init_records = [init[p.id] for p in self.problems]
        extras: list[list[dict]] = [[] for _ in self.problems]

        def execute(runs: list[P.ExtraRun]) -> list[P.Outcome]:
            results = self._extra_runs(point, runs, journal, writer)
            for run, record in zip(runs, results):
                extras[run.slot].append(record)
            stats.save(rounds=runs[0].round)
            return [P.Outcome(sequences=r["#S"], solved=r["n_correct"] > 0) for r in results]

        with store.RecordWriter(journal_path) as writer:
            plan = P.reallocate(
                point.method,
                [r["#S"] for r in init_records],
                point.max_sequences,
                point.theta,
                [r["n_correct"] > 0 for r in init_records],
                execute,
            )
        merged = [merge_records(point, init_records[slot], extras[slot]) for slot in range(len(self.problems))]
        store.write_records_atomic(self.out / point.records_file, merged)
        init_stats = store.read_json(self.out / init_point.stats_file) or {}
        extra_wall = round(stats.base_wall + time.perf_counter() - stats.session_start, 3)
        stats.base_wall, stats.session_start = extra_wall, time.perf_counter()
        stats.doc["extra_wall_time"] = extra_wall
        stats.save(
            complete=True,
            records=len(merged),
            saved_sequences=plan.saved,
            spent_sequences=plan.saved - plan.remaining,
            rounds=plan.rounds,
            init_wall_time=init_stats.get("wall_time"),
            total_wall_time=round(extra_wall + (init_stats.get("wall_time") or 0.0), 3),
        )

    def _extra_runs(self, point: Point, runs: list[P.ExtraRun], journal: dict, writer) -> list[dict]:
        """Records of a round's extra runs: from the journal, or generated now in one stream."""
        from ..engine import Request

        results: dict[int, dict] = {}
        todo = []
        for run in runs:
            logged = journal.get((self.problems[run.slot].id, run.round))
            if logged is not None:
                if logged["cap"] != run.cap or not math.isclose(logged["theta"], run.theta):
                    raise store.ResultsError(
                        f"{point.extra_file}: logged run of {logged['id']!r} round {run.round} does not match "
                        "the plan rebuilt from the EAGer-init results (were they edited?)"
                    )
                results[run.slot] = logged
            else:
                todo.append(run)
        if todo:
            # The engine sizes its context by config.max_sequences: give it the largest cap of the
            # round; each request carries its own cap and θ.
            config = self.config(INIT, point.theta, max(r.cap for r in todo))
            by_index = {}
            requests = []
            for run in todo:
                index = P.stream_index(point.method, run.round, self.positions[run.slot])
                by_index[index] = run
                requests.append(
                    Request(tokens=self.prompt_tokens(run.slot), text=self.problems[run.slot].problem,
                            index=index, max_sequences=run.cap, theta=run.theta)
                )
            desc = f"{point.name} round {runs[0].round}"
            with self._bar(desc, len(runs), len(runs) - len(todo), unit="run") as bar:
                for tree in self.runner.engine.stream(requests, config, budget=self.budget, on_token=bar.on_token):
                    run = by_index[tree.index]
                    extra = {"round": run.round, "cap": run.cap, "theta": run.theta, "retry": run.retry,
                             "hit_cap": run.hit_cap, "stream": tree.index}
                    record = make_record(self.problems[run.slot], self.positions[run.slot], tree, point, extra)
                    record["theta"] = run.theta
                    writer.append(record)
                    results[run.slot] = record
                    bar.prompt_done(record)
        return [results[run.slot] for run in runs]

    def _bar(self, desc: str, total: int, initial: int, unit: str = "prompt") -> "_Progress":
        return _Progress(desc, total, initial, unit, self.budget, enabled=self.progress)


class _Progress:
    """A tqdm bar on stderr: prompts done, sequences, tokens, budget left, ETA."""

    def __init__(self, desc, total, initial, unit, budget: TokenBudget, enabled: bool):
        from tqdm import tqdm

        self.budget = budget
        self.sequences = 0
        self.tokens = 0
        self._since_refresh = 0
        self._last_draw = time.monotonic()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True, mininterval=0.5, leave=True)
        self._postfix()

    def _postfix(self) -> None:
        post = {"seqs": self.sequences, "tok": self.tokens}
        if self.budget.limit is not None:
            post["budget left"] = int(self.budget.remaining)
        self.bar.set_postfix(post, refresh=False)

    def on_token(self, tree, seq, token) -> None:
        self.tokens += 1
        self._since_refresh += 1
        if self._since_refresh >= 64:  # a clock read every 64 tokens, a redraw at most twice a second
            self._since_refresh = 0
            now = time.monotonic()
            if now - self._last_draw >= 0.5:
                self._last_draw = now
                self._postfix()
                self.bar.refresh()

    def prompt_done(self, record: dict) -> None:
        self.sequences += record["#S"]
        self._postfix()
        self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._postfix()
        self.bar.close()
