#!/usr/bin/env python3
"""eager_local against llama.cpp's own `llama-server` (native C++ continuous batching).

    python scripts/compare_server.py --server /path/to/llama-server --dataset arith:40 -M 16 -n 160 \
        --threads 2 --theta 2.4 --out runs/compare-arith

1. llama-server: started on 127.0.0.1 with -np M, the same GGUF, context and threads, a unified KV
   cache; each prompt's M requests are sent concurrently (seeded, same temperature, full-vocabulary
   sampling, same max tokens, the same prompt token ids eager_local decodes); graded with the same
   grader. The server is stopped before eager_local starts (also on error and Ctrl-C).
2. eager_local: `eager-local eval` with parallel, eager-init and eager-adapt on the same problems,
   one after the other, never concurrently with the server.
3. A table per system and method: pass@k (any), cons@k, p@1, tokens and wall time per prompt,
   aggregate tokens/s, peak memory, ratios to llama-server's full parallel; a paired bootstrap
   interval for the pass@k difference to llama-server.

Build llama-server from the llama.cpp that llama-cpp-python vendors (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from eager_local.answers import extract_answer
from eager_local.eval import store
from eager_local.eval.datasets import load_dataset, select
from eager_local.eval.grading import is_correct
from eager_local.eval.metrics import aggregate, paired_bootstrap, prompt_metrics
from eager_local.eval.prompting import load_template, render
from eager_local.eval.records import regrade
from eager_local.io import write_json_atomic
from llama_server import LlamaServer  # scripts/llama_server.py (python puts scripts/ on the path)

SERVER_FILE = "llama-server.jsonl"


def server_phase(args, problems, prompts, model_path) -> dict:
    """Run llama-server's full parallel sampling; append one record per prompt (resumable)."""
    out = Path(args.out) / SERVER_FILE
    done = {r["id"] for r in store.read_records(out, repair=True)} if out.exists() else set()
    todo = [(p, t) for p, t in zip(problems, prompts) if p.id not in done]
    n_ctx = args.max_sequences * (max(len(t) for t in prompts) + args.max_new_tokens) + 256
    extra = ["--no-repack"] if not _extra_buffers() else []
    peak_mb = None
    if todo:
        with LlamaServer(args.server, model_path, slots=args.max_sequences, n_ctx=n_ctx, threads=args.threads,
                         extra_args=extra, log_path=Path(args.out) / "llama-server.log") as server, \
                store.RecordWriter(out) as writer:
            # warm-up: one short request, so the first prompt's time is not start-up
            server.complete(prompts[0], n_predict=2, temperature=args.temperature, seed=0)
            position = {p.id: i for i, p in enumerate(problems)}
            for problem, tokens in todo:
                start = time.perf_counter()
                # Each request's sampler starts a fresh RNG from its seed: the same M seeds for every
                # prompt would draw the same random numbers on every prompt (request i long on all of
                # them, say). Seeds unique per (prompt, sample) keep prompts independent, as
                # eager_local's per-(seed, prompt, sequence) streams are.
                outs = server.complete_many(tokens, n=args.max_sequences, n_predict=args.max_new_tokens,
                                            temperature=args.temperature,
                                            seed=args.seed + position[problem.id] * args.max_sequences)
                wall = time.perf_counter() - start
                answers = [extract_answer(o.text, problem.kind) for o in outs]
                correct = [bool(is_correct(a, problem.answer, problem.kind)) for a in answers]
                writer.append({
                    "id": problem.id, "reference": problem.answer, "kind": problem.kind,
                    "sequences": [{"text": o.text, "tokens": o.tokens, "answer": a, "correct": c}
                                  for o, a, c in zip(outs, answers, correct)],
                    "#T": sum(o.tokens for o in outs), "#S": len(outs), "wall_time": round(wall, 4),
                })
                print(f"  llama-server {problem.id}: {sum(correct)}/{len(outs)} correct, "
                      f"{sum(o.tokens for o in outs)} tokens, {wall:.1f} s", flush=True)
            peak_mb = _peak_rss_mb(server.process.pid) if server.process else None
    stats_path = Path(args.out) / "llama-server.stats.json"
    stats = store.read_json(stats_path) or {}
    if peak_mb is not None:
        stats["peak_mb"] = max(peak_mb, stats.get("peak_mb") or 0)
        write_json_atomic(stats_path, stats, indent=1)
    # A ratio is only fair when both sides ran in one invocation: the table says which it was.
    stats["measured_now"] = len(todo)
    stats["resumed"] = len(problems) - len(todo)
    return stats


def eager_phase(args) -> None:
    cmd = [
        sys.executable, "-m", "eager_local", "eval", "--dataset", args.dataset, "--offset", str(args.offset),
        "--limit", str(args.limit), "--method", args.methods, "-M", str(args.max_sequences),
        "--theta", str(args.theta), "-n", str(args.max_new_tokens), "-t", str(args.temperature),
        "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(Path(args.out) / "eager_local"),
    ]
    if args.prompt_template:
        cmd += ["--prompt-template", args.prompt_template]
    if args.model:
        cmd += ["--model", args.model]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def summarise(args, problems, server_stats) -> str:
    ids = [p.id for p in problems]
    server_records = {r["id"]: r for r in store.read_records(Path(args.out) / SERVER_FILE)}
    server_list = [server_records[i] for i in ids]
    # (system, method, records, peak MB, elapsed seconds for all prompts)
    systems = [("llama-server", "parallel", server_list, server_stats.get("peak_mb"),
                sum(r["wall_time"] for r in server_list), None)]
    run_dir = Path(args.out) / "eager_local"
    for method in args.methods.split(","):
        point = store.Point(method, None if method == store.PARALLEL else float(args.theta), args.max_sequences)
        records = {r["id"]: r for r in store.read_records(run_dir / point.records_file)}
        stats = store.read_json(run_dir / point.stats_file) or {}
        # Prompts overlap in eager_local's batches: the point's elapsed time is the fair wall time.
        wall = stats.get("wall_time") or sum(records[i]["wall_time"] for i in ids)
        # adapt/full EAGer spend the EAGer-init pass first; its batches are the ones that decode
        init_stats = (store.read_json(run_dir / point.init_point().stats_file) or {}) if point.reallocates else stats
        if point.reallocates:
            wall = stats.get("total_wall_time") or wall + init_stats.get("wall_time", 0.0)
        rows_per_step = (init_stats.get("batches") or {}).get("mean_rows")  # how full the batches were
        systems.append(("eager_local", method, [records[i] for i in ids], stats.get("peak_rss_mb"), wall, rows_per_step))

    rows = []
    for system, method, records, peak, wall, rows_per_step in systems:
        # graded again from their texts, as `eager-local report` grades: a grader fix reaches old runs
        records = [regrade(r) for r in records]  # each record carries its own kind
        per_prompt = [
            prompt_metrics([s["correct"] for s in r["sequences"]], [s["answer"] for s in r["sequences"]],
                           r["reference"], r["kind"], r["#T"])
            for r in records
        ]
        agg = aggregate(per_prompt)
        tokens = sum(r["#T"] for r in records)
        rows.append({
            "system": system, "method": method, "pass@k": agg["pass@k"], "cons@k": agg["cons@k"],
            "p@1": agg["p@1"], "#T": tokens / len(records), "#S": agg["#S"], "wall_per_prompt": wall / len(records),
            "tokens_per_s": tokens / wall if wall else 0.0, "peak_mb": peak,
            "rows_per_step": rows_per_step,
            "any": [1.0 if any(s["correct"] for s in r["sequences"]) else 0.0 for r in records],
        })
    base = rows[0]
    lines = [
        f"{len(problems)} problems from {args.dataset} · M = {args.max_sequences} · θ = {args.theta} · "
        f"T = {args.temperature} · max {args.max_new_tokens} new tokens · {args.threads} threads",
        f"llama-server prompts measured in this invocation: {server_stats.get('measured_now', 0)}, "
        f"resumed from an earlier one: {server_stats.get('resumed', 0)}",
        "",
        "| system | method | pass@k | Δ pass@k vs server [95% CI] | cons@k | p@1 | tokens/prompt | wall s/prompt "
        "| tokens/s | rows/step | peak MB | tokens ÷ server | wall ÷ server | tokens/s ÷ server |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = paired_bootstrap(row["any"], base["any"])
        diff = sum(row["any"]) / len(row["any"]) - sum(base["any"]) / len(base["any"])
        peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] else "n/a"
        rows_per_step = f"{row['rows_per_step']:.1f}" if row["rows_per_step"] else "n/a"
        lines.append(
            f"| {row['system']} | {row['method']} | {row['pass@k']:.3f} | {diff:+.3f} [{low:+.3f}, {high:+.3f}] "
            f"| {row['cons@k']:.3f} | {row['p@1']:.3f} | {row['#T']:.0f} | {row['wall_per_prompt']:.2f} "
            f"| {row['tokens_per_s']:.1f} | {rows_per_step} | {peak} | {row['#T'] / base['#T']:.2f} "
            f"| {row['wall_per_prompt'] / base['wall_per_prompt']:.2f} | {row['tokens_per_s'] / base['tokens_per_s']:.2f} |"
        )
    return "\n".join(lines)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _extra_buffers() -> bool:
    from eager_local.machine import extra_buffers_enabled

    return extra_buffers_enabled()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="path to a llama-server binary")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default="arith:40")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("-M", "--max-sequences", type=int, default=16)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=160)
    ap.add_argument("-t", "--temperature", type=float, default=0.6)
    ap.add_argument("--theta", type=float, default=2.4)
    ap.add_argument("--seed", type=int, default=55)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="parallel,eager-init,eager-adapt")
    ap.add_argument("--prompt-template", default=None,
                    help="text around the problem with {problem}, or @FILE (default: eval's step-by-step \\boxed{})")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from eager_local.api import EagerLocal

    Path(args.out).mkdir(parents=True, exist_ok=True)
    problems = select(load_dataset(args.dataset), offset=args.offset, limit=args.limit)
    llm = EagerLocal(args.model, threads=args.threads)
    template = load_template(args.prompt_template)
    prompts = [llm.prompt_tokens(render(template, p.problem)) for p in problems]
    model_path = llm.resolved.path
    del llm  # the server and eager_local's own runs each load the model themselves

    print(f"llama-server phase ({len(problems)} problems, M = {args.max_sequences})", flush=True)
    server_stats = server_phase(args, problems, prompts, model_path)
    print("eager_local phase", flush=True)
    eager_phase(args)
    table = summarise(args, problems, server_stats)
    (Path(args.out) / "comparison.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
