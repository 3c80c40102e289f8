#!/usr/bin/env python3
"""EAGer batching A/B: admission rule (rows expected vs first row) and KV layout (streams vs unified).

    python scripts/bench_admission.py --dataset gsm8k --limit 32 -M 8 --theta 2.6 -n 192
    python scripts/bench_admission.py --limit 16 -n 512 --order peak,peak+unified,peak+unified,peak

An EAGer prompt starts as one row and branches later. Admitting it by that first row lets every
prompt in at once; the batch then grows far past the row limit, and in a unified KV cache every
row attends over every cell in use. The engine counts an EAGer prompt as the rows it is expected
to hold (`RowForecast`). This script runs EAGer-init on the same prompts under two or more
admission rules (`engine.ADMISSION_RULES`: peak, mean, first-row) in one process, alternating
A B B A so drift on a shared machine falls on both, and prints tokens/s with the batch shape (rows
and prompts per step) that explains it. Same seeds: the samples differ only where batch composition
changes floating-point rounding and that flips a branch decision.

A variant `RULE+unified` runs the rule with the engine's old KV layout, one cache shared by all
sequences (`Engine(kv_layout="unified")`), instead of a KV stream per sequence: the same A B B A
measures what streams buy (llama.Context).

Run it alone: llama.cpp's threads spin, so a second heavy process makes the numbers garbage.
"""

from __future__ import annotations

import argparse
import time

from eager_local.api import EagerLocal
from eager_local.engine import ADMISSION_RULES, Request, StepStats
from eager_local.eval.datasets import load_dataset, select
from eager_local.eval.grading import extract_answer, is_correct
from eager_local.eval.prompting import load_template, render


def run_once(llm, requests, problems, config, variant: str) -> dict:
    engine = llm.engine
    rule, _, layout = variant.partition("+")
    engine.admission = rule
    engine.kv_layout = layout or "auto"
    engine.stats = StepStats()
    start = time.perf_counter()
    trees = engine.generate(requests, config)
    wall = time.perf_counter() - start
    solved = 0
    for tree, problem in zip(trees, problems):
        answers = [extract_answer(s.text, problem.kind) for s in tree.sequences]
        solved += any(is_correct(a, problem.answer, problem.kind) for a in answers)
    tokens = sum(t.generated_tokens for t in trees)
    return {
        "wall": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "solved": solved,
        "sequences": sum(len(t.sequences) for t in trees) / len(trees), **engine.stats.as_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("-M", "--max-sequences", type=int, default=8)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=192)
    ap.add_argument("-t", "--temperature", type=float, default=0.6)
    ap.add_argument("--theta", type=float, default=2.6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-template", default=None)
    ap.add_argument("--order", default="peak,first-row,first-row,peak",
                    help=f"variants to run, in order (default A B B A): an admission rule ({', '.join(ADMISSION_RULES)}), "
                         "optionally +unified for the unified KV layout")
    args = ap.parse_args()

    problems = select(load_dataset(args.dataset), offset=args.offset, limit=args.limit)
    llm = EagerLocal(args.model, threads=args.threads)
    template = load_template(args.prompt_template)
    requests = [
        Request(tokens=llm.prompt_tokens(render(template, p.problem)), text=p.problem, index=i)
        for i, p in enumerate(problems)
    ]
    config = llm.config(method="eager-init", theta=args.theta, max_sequences=args.max_sequences,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    print(f"{len(problems)} problems from {args.dataset} · EAGer-init θ = {args.theta} · M = {args.max_sequences} · "
          f"max {args.max_new_tokens} new tokens · T = {args.temperature} · {args.threads} threads · "
          f"batch row limit {llm.engine.max_batch_rows}", flush=True)
    print("\n| # | variant | wall s | tokens | tokens/s | solved | #S | rows/step | prompts/step | peak rows | peak prompts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    order = args.order.split(",")
    for variant in order:
        rule, _, layout = variant.partition("+")
        if rule not in ADMISSION_RULES or layout not in ("", "unified"):
            ap.error(f"unknown variant {variant!r}: an admission rule ({', '.join(ADMISSION_RULES)}), optionally +unified")
    results: dict[str, list[dict]] = {variant: [] for variant in order}
    for i, variant in enumerate(order, 1):
        r = run_once(llm, requests, problems, config, variant)
        results[variant].append(r)
        print(f"| {i} | {variant} | {r['wall']:.1f} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['solved']} "
              f"| {r['sequences']:.2f} | {r['mean_rows']:.1f} | {r['mean_prompts']:.1f} | {r['peak_rows']} "
              f"| {r['peak_prompts']} |", flush=True)
    rate = {variant: sum(r["tokens"] for r in rs) / sum(r["wall"] for r in rs) for variant, rs in results.items()}
    base = next((r for r in order if r != order[0]), order[0])  # B of A B B A
    print("\ntokens/s over all runs of each variant: " + ", ".join(
        f"{variant} {value:.1f} ({value / rate[base]:.2f} × {base})" for variant, value in rate.items()))


if __name__ == "__main__":
    main()
