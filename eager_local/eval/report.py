"""Read run directories and summarise them in the paper's terms (eager-method.md §6).

Every record is graded again here, from its sequences' texts and its reference answer, with
today's grader (records.regrade): the numbers follow the current grader, not the one the run had.
Run directories whose parameters are equal except for `--shard` are merged (the shards of one
evaluation); a prompt id that appears in two of them is counted once. Other directories are
reported as separate groups. Parallel points derived from a larger M's samples (spec.py) are read
like any point and marked (†, `derived_from`). Pure Python: no llama.cpp, matplotlib only for --plot.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EagerError
from . import store
from .confidence import vote_weights
from .deepconf import describe as describe_deepconf
from .eagerconf import describe as describe_eagerconf
from .metrics import aggregate, prompt_metrics
from .records import regrade
from .stopping import DEFAULT_ESC_WINDOW, default_window
from .store import PARALLEL, Point

METHOD_ORDER = {m: i for i, m in enumerate(store.EVAL_METHODS)}
COLUMNS = [
    # key, header, format
    ("method", "method", "{}"),
    ("theta", "θ", "{}"),
    ("M", "M", "{}"),
    ("prompts", "prompts", "{}"),
    ("p@1", "p@1", "{:.3f}"),
    ("pass@k", "pass@k", "{:.3f}"),
    ("cons@k", "cons@k", "{:.3f}"),
    ("PR", "PR", "{:.3f}"),
    ("#T", "#T", "{:.1f}"),
    ("#S", "#S", "{:.2f}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("peak_mb", "peak MB", "{:.0f}"),
    ("tokens_vs_parallel", "T/par", "{:.2f}"),
    ("time_vs_parallel", "time/par", "{:.2f}"),
    ("cut", "cut", "{}"),
]


@dataclass
class Group:
    dirs: list[Path]
    manifests: list[dict]
    expected: list[str] = field(default_factory=list)  # problem ids over all shards, deduplicated
    rows: list[dict] = field(default_factory=list)
    records: dict[str, dict[str, dict]] = field(default_factory=dict)  # point name -> id -> graded record
    duplicates: int = 0
    budget: dict = field(default_factory=dict)
    regraded: int = 0  # sequences whose grade today differs from the one stored in their record

    @property
    def params(self) -> dict:
        return self.manifests[0]["params"]

    @property
    def calibration(self) -> list[dict]:
        """How each calibrated θ (--theta auto / qNN.N) was found, as eval recorded it."""
        return self.manifests[0].get("theta_calibration", [])


def expand_dirs(patterns: list[str]) -> list[Path]:
    dirs: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise store.ResultsError(f"no run directory matches {pattern}")
            dirs += [Path(m) for m in matches]
        else:
            dirs.append(Path(pattern))
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def _merge_key(params: dict) -> str:
    p = json.loads(json.dumps(params))
    p.get("selection", {}).pop("shard", None)
    return json.dumps(p, sort_keys=True)


def build_report(patterns: list[str]) -> list[Group]:
    dirs = expand_dirs(patterns)
    groups: dict[str, Group] = {}
    for d in dirs:
        manifest = store.load_manifest(d)
        key = _merge_key(manifest["params"])
        group = groups.setdefault(key, Group(dirs=[], manifests=[]))
        group.dirs.append(d)
        group.manifests.append(manifest)
    for group in groups.values():
        _fill(group)
    return list(groups.values())


def _points_in(run_dir: Path) -> list[Point]:
    points = []
    for path in run_dir.glob("*.jsonl"):
        if path.name.endswith((".extra.jsonl", ".waves.jsonl")):  # journals
            continue
        point = store.parse_point(path.name[: -len(".jsonl")])
        if point:
            points.append(point)
    return points


def _fill(group: Group) -> None:
    seen_ids: set[str] = set()
    for m in group.manifests:
        for pid in m.get("problems", []):
            if pid not in seen_ids:
                seen_ids.add(pid)
                group.expected.append(pid)
    points = sorted({p for d in group.dirs for p in _points_in(d)},
                    key=lambda p: (p.max_sequences, p.theta or 0.0, METHOD_ORDER[p.method]))
    spent = 0
    kind = group.params.get("fields", {}).get("kind") or "auto"
    for point in points:
        records: dict[str, dict] = {}
        wall = 0.0
        peaks = []
        complete = True
        derived_from = None
        for d in group.dirs:
            for record in store.read_records(d / point.records_file):
                if record["id"] in records:
                    group.duplicates += 1
                    continue
                records[record["id"]] = regrade(record, kind)
            stats = store.read_json(d / point.stats_file) or {}
            wall += stats.get("total_wall_time", stats.get("wall_time")) or 0.0
            if stats.get("peak_rss_mb"):
                peaks.append(stats["peak_rss_mb"])
            complete = complete and bool(stats.get("complete"))
            derived_from = derived_from or stats.get("derived_from")
            if stats.get("derived_from"):
                continue  # its tokens were generated by the point it is derived from
            spent += store.tokens_generated(d, point)
        group.records[point.name] = records
        per_prompt = [_prompt_metrics(r) for r in records.values()]
        summary = aggregate(per_prompt)
        row = {
            "method": point.method,
            "theta": point.theta,
            "M": point.max_sequences,
            "point": point.name,
            "prompts": len(records),
            "expected": len(group.expected),
            "complete": complete and len(records) >= len(group.expected),
            "p@1": summary.get("p@1"),
            "pass@k": summary.get("pass@k"),
            "cons@k": summary.get("cons@k"),
            "PR": summary.get("PR"),
            "#T": summary.get("#T"),
            "#S": summary.get("#S"),
            "total_tokens": sum(r["#T"] for r in records.values()),
            "wall_s": round(wall, 3),
            "peak_mb": max(peaks) if peaks else None,
            "cut": sum(1 for r in records.values() if r.get("cut_by_budget")),
            "not_started": sum(1 for r in records.values() if not r.get("started", True)),
            "regraded": sum(r["regraded"] for r in records.values()),
            "derived_from": derived_from,
        }
        if point.samples_in_waves:
            row["stopped_by"] = {reason: sum(1 for r in records.values() if r.get("stopped_by") == reason)
                                 for reason in ("rule", "cap", "budget")}
        group.rows.append(row)
    for row in group.rows:  # a derived point is only as complete as the point it comes from
        source = next((r for r in group.rows if r["point"] == row["derived_from"]), None)
        if row["derived_from"] and (source is None or not source["complete"]):
            row["complete"] = False
    for row in group.rows:
        base = next((r for r in group.rows if r["method"] == PARALLEL and r["M"] == row["M"]), None)
        ok = base is not None and base["prompts"] and row["prompts"]
        row["tokens_vs_parallel"] = row["#T"] / base["#T"] if ok and base["#T"] else None
        row["time_vs_parallel"] = row["wall_s"] / base["wall_s"] if ok and base["wall_s"] else None
    limit = group.params.get("budget")
    group.budget = {
        "limit": limit,
        "spent": spent,
        "cut_prompts": sum(r["cut"] for r in group.rows),
    }
    group.regraded = sum(r["regraded"] for r in group.rows)


def _prompt_metrics(record: dict) -> dict:
    """The metrics of a graded record (see regrade); DeepConf's and eager-conf's cons@k is the
    confidence-weighted vote over the sequences at or above the prompt's threshold (confidence.py)."""
    seqs = record["sequences"]
    weights = None
    if record.get("method") in store.CONFIDENCE_METHODS:
        weights = vote_weights([s.get("min_conf") for s in seqs], record.get("threshold"))
    return prompt_metrics(
        [bool(s.get("correct")) for s in seqs], [s.get("answer") for s in seqs], record["reference"], record["kind"],
        record["#T"], weights
    )


# --- output ----------------------------------------------------------------------------------------
def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "theta" and value is None:
        return "-"
    if key == "prompts":
        return f"{value}/{row['expected']}" + ("" if row["complete"] else "*")
    if key == "M" and row.get("derived_from"):
        return f"{value}†"
    if value is None:
        return "-"
    return fmt.format(value)


def _title(group: Group) -> str:
    p = group.params
    m = group.manifests[0]
    model = m["model"].get("name") or Path(m["model"]["path"]).name
    gen = p["generation"]
    shards = f", {len(group.dirs)} dirs merged" if len(group.dirs) > 1 else ""
    return (f"{p['dataset']} · {model} · T={gen['temperature']} · max_new_tokens={gen['max_new_tokens']}"
            f" · seed={gen['seed']}{shards}")


def _notes(group: Group) -> list[str]:
    notes = []
    b = group.budget
    if b["limit"] is not None:
        notes.append(f"token budget: {b['spent']} of {b['limit']} spent; {b['cut_prompts']} prompt record(s) cut by it")
    if any(not r["complete"] for r in group.rows):
        notes.append("* incomplete point (rerun the eval command to finish it)")
    sources = sorted({r["derived_from"] for r in group.rows if r.get("derived_from")})
    if sources:
        notes.append(f"† derived from {', '.join(sources)}: each prompt's first M samples of that run, which "
                     "drew from the random streams an M-sample run uses; not decoded again, so wall time is that "
                     "run's pro rata by tokens and there is no memory figure")
    notes += rival_notes(group)
    if group.duplicates:
        notes.append(f"{group.duplicates} duplicate prompt record(s) across merged dirs counted once")
    if group.regraded:
        notes.append(f"{group.regraded} sequence(s) graded differently than when they were generated "
                     "(the report grades with today's grader)")
    notes += calibration_notes(group)
    return notes


def rival_notes(group: Group) -> list[str]:
    """How Adaptive-Consistency, ESC and DeepConf ran (their rules and how their prompts stopped)."""
    options = group.params.get("rivals") or {}
    notes = []
    for row in group.rows:
        if row["method"] not in options:
            continue
        if row["method"] in store.DEEPCONF_METHODS:
            rule = describe_deepconf(row["method"], options, row["M"], group.params["generation"]["max_new_tokens"])
            records = group.records.get(row["point"], {}).values()
            stopped = sum((r.get("deepconf") or {}).get("stopped", 0) for r in records)
            voters = sum((r.get("deepconf") or {}).get("voters", 0) for r in records)
            notes.append(f"{row['point']}: {rule}; {stopped} sample(s) stopped for low confidence, {voters} voted "
                         "(cons@k: confidence-weighted vote)")
            continue
        if row["method"] == store.ECONF:
            point = Point(row["method"], row["theta"], row["M"])
            rule = describe_eagerconf(point, options, group.params["generation"]["max_new_tokens"])
            records = group.records.get(row["point"], {}).values()
            pruned = sum((r.get("eager_conf") or {}).get("stopped", 0) for r in records)
            by_rule = (row.get("stopped_by") or {}).get("rule", 0)
            notes.append(f"{row['point']}: {rule}; {pruned} sequence(s) pruned for low confidence, {by_rule} "
                         "prompt(s) stopped by agreement (cons@k: confidence-weighted vote)")
            continue
        how = options[row["method"]]
        if row["method"] == store.AC:
            rule = f"{how['criterion']} criterion, stop at P ≥ {how['threshold']:g}"
        else:
            window = how["window"]
            if window == DEFAULT_ESC_WINDOW:
                window = f"{window} = {default_window(row['M'])}"
            rule = f"window {window}, stop on a unanimous window"
        stopped = row.get("stopped_by") or {}
        counts = ", ".join(f"{reason} {n}" for reason, n in stopped.items() if n)
        notes.append(f"{row['point']}: {rule}, cap {row['M']}" + (f"; prompts stopped by {counts}" if counts else ""))
    return notes


def calibration_notes(group: Group) -> list[str]:
    """One line per calibrated θ: what it aimed for and the #S EAGer-init reached with it."""
    notes = []
    for info in group.calibration:
        theta = info["theta"]
        init = next((r for r in group.rows if r["method"] == store.INIT and r["theta"] == theta and r["#S"] is not None),
                    None)
        reached = f"eager-init reached #S {init['#S']:.2f}" if init else "no eager-init result yet"
        if info["mode"] == "auto":
            target = info["target"]
            off = f" ({(init['#S'] - target) / target:+.0%} of the target)" if init else ""
            notes.append(f"θ {theta:g} = auto, target {target} sequences per prompt: {reached}{off}")
        else:
            predicted = info.get("predicted")
            guess = f" (profile predicted {predicted:.2f})" if predicted is not None and init else ""
            notes.append(f"θ {theta:g} = q{info['quantile']:g} of the model's top-K entropies: {reached}{guess}")
        if info.get("calibration_problems"):
            notes.append("  " + calibration_source(info))
    return notes


def calibration_source(info: dict) -> str:
    """Which problems calibrated a θ (eval records them in the manifest's theta_calibration)."""
    used = info["calibration_problems"]
    ids = used["ids"]
    text = f"θ {info['theta']:g} calibrated on {used['count']} problem(s) {used['rule']}"
    if used.get("not_in_dataset"):
        text += f", {used['not_in_dataset']} of them from another dataset of the task"
    if ids:
        text += ": " + ", ".join(ids[:3]) + (f", …, {ids[-1]}" if len(ids) > 4 else "".join(f", {i}" for i in ids[3:]))
    how = "calibrated by this run" if info.get("calibrated_now") else f"a saved profile of {info.get('profile_created')}"
    return f"{text} ({how}; every id in manifest.json)"


def render_table(groups: list[Group]) -> str:
    out = []
    for group in groups:
        out.append(_title(group))
        header = [h for _, h, _ in COLUMNS]
        body = [[_cell(r, k, f) for k, _, f in COLUMNS] for r in group.rows]
        widths = [max(len(x) for x in col) for col in zip(header, *body)]
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for line in body:
            out.append("  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))
        out += _notes(group)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_markdown(groups: list[Group]) -> str:
    out = []
    for group in groups:
        out.append(f"**{_title(group)}**")
        out.append("")
        out.append("| " + " | ".join(h for _, h, _ in COLUMNS) + " |")
        out.append("|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(COLUMNS))) + "|")
        for r in group.rows:
            out.append("| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |")
        notes = _notes(group)
        if notes:
            out.append("")
            out += notes
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_json(groups: list[Group]) -> str:
    doc = [
        {
            "dirs": [str(d) for d in g.dirs],
            "dataset": g.params["dataset"],
            "model": g.manifests[0]["model"],
            "params": g.params,
            "budget": g.budget,
            "duplicates": g.duplicates,
            "regraded": g.regraded,
            "theta_calibration": g.calibration,
            "points": g.rows,
        }
        for g in groups
    ]
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def render_csv(groups: list[Group]) -> str:
    keys = (["dirs", "dataset", "point"] + [k for k, _, _ in COLUMNS]
            + ["expected", "complete", "total_tokens", "not_started", "derived_from"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for g in groups:
        for r in g.rows:
            writer.writerow({**{k: r.get(k) for k in keys}, "dirs": ";".join(str(d) for d in g.dirs),
                             "dataset": g.params["dataset"]})
    return buf.getvalue()


RENDERERS = {"table": render_table, "markdown": render_markdown, "json": render_json, "csv": render_csv}


# --- plot ------------------------------------------------------------------------------------------
def _group_labels(groups: list[Group]) -> list[str]:
    """Name each group by what differs between them (T=1.0, the dataset, the model...), else by number."""
    def facts(g: Group) -> dict:
        gen = g.params["generation"]
        model = g.manifests[0]["model"]
        return {"": g.params["dataset"], "T=": gen["temperature"], "n=": gen["max_new_tokens"],
                "model ": model.get("name") or Path(model["path"]).name, "template ": g.params["prompt_template"][:12]}

    all_facts = [facts(g) for g in groups]
    differing = [k for k in all_facts[0] if len({str(f[k]) for f in all_facts}) > 1]
    labels = [" ".join(f"{k}{f[k]}" for k in differing) for f in all_facts]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}" + (f" {label}" if label else "") for i, label in enumerate(labels)]
    return labels


def plot(groups: list[Group], path: Path) -> None:
    """pass@k against generated tokens per prompt: full parallel sampling, Adaptive-Consistency,
    ESC and DeepConf one curve each over M; each EAGer method one curve per θ over M when several M were run,
    else one curve over θ."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EagerError("--plot needs matplotlib: pip install 'eager-local[plot]'") from None
    markers = {"parallel": "s", "eager-init": "o", "eager-adapt": "^", "eager": "D", store.AC: "v", store.ESC: "P",
               store.DC_LOW: "<", store.DC_HIGH: ">", store.ECONF: "*"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    group_labels = _group_labels(groups)
    for gi, group in enumerate(groups):
        ms = sorted({r["M"] for r in group.rows if r["method"] != PARALLEL})  # the EAGer points' M values
        derived = sorted({r["derived_from"] for r in group.rows if r.get("derived_from")})
        auto_tags = {c["theta"]: (f"auto S={c['target']}" if c["mode"] == "auto" else c["spec"])
                     for c in group.calibration}
        curves: dict[tuple, list[dict]] = {}
        for r in group.rows:
            if r["#T"] is None:
                continue
            if r["theta"] is None:  # parallel (the curve EAGer is judged against), the rivals: a point per M
                key = (r["method"], None)
            elif len(ms) > 1:  # one curve per method and θ, one point per M
                key = (r["method"], r["theta"])
            else:  # one curve per method, one point per θ
                key = (r["method"], None)
            curves.setdefault(key, []).append(r)
        for (method, theta), rows in sorted(curves.items(), key=lambda kv: (METHOD_ORDER[kv[0][0]], kv[0][1] or 0)):
            rows.sort(key=lambda r: r["#T"])
            label = method + (f" θ={theta:g}" if theta is not None else "")
            if method == PARALLEL and derived:
                label += f" (smaller M derived from {', '.join(derived)})"
            if len(groups) > 1:
                label += f" [{group_labels[gi]}]"
            xs = [r["#T"] for r in rows]
            ys = [r["pass@k"] for r in rows]
            ax.plot(xs, ys, marker=markers.get(method, "o"), label=label)
            for r in rows:
                if r["theta"] is None or len(ms) > 1:
                    tag = f"M={r['M']}"
                else:
                    tag = f"θ={r['theta']:g}"
                if r["theta"] in auto_tags:
                    tag += f" ({auto_tags[r['theta']]})"
                ax.annotate(tag, (r["#T"], r["pass@k"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    lo, hi = ax.get_xlim()
    # Less than a decade wide: label the minor ticks too, or the axis shows one number or none.
    ax.xaxis.set_minor_formatter(ScalarFormatter() if hi / max(lo, 1e-9) < 10 else NullFormatter())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("generated tokens per prompt (#T, log scale)")
    ax.set_ylabel("pass@k (any)")
    ax.set_title(_title(groups[0]) if len(groups) == 1 else "pass@k vs tokens", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
