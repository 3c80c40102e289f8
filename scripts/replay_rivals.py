#!/usr/bin/env python3
"""Adaptive-Consistency and ESC replayed on a full-parallel-sampling run, next to the parallel curve.

    python scripts/replay_rivals.py runs/gsm8k-parallel [--ac-threshold 0.95] [--esc-window auto]

The engine gives a rival's wave that starts at sample k the random streams full parallel sampling
gives samples k, k+1, … (eval/waves.py; tests/test_eval_rivals.py checks that the texts are the
same). So what `eval --method adaptive-consistency,esc -M M` would draw on a prompt is the first
#S samples of the parallel M run's record, and its stopping rules (eval/stopping.py, the same
functions the evaluation runs) can be replayed on those records without decoding anything: the
answers, #S and #T (generated tokens; a wave's prompt is not counted, as in every record) are those
of a real run. Wall time is not: a real run also waits for its slowest sample each round.

Prints, per method: prompts, pass@k with a paired-bootstrap 95 % interval of its difference to
parallel at the run's M, cons@k, p@1, #T and #S per prompt; the parallel curve at M = 1, 2, 4, …
(each prompt's first M samples) for comparison at equal tokens. Grades are recomputed from the
stored texts, as `eager-local report` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eager_local.eval import store
from eager_local.eval.metrics import aggregate, paired_bootstrap, prompt_metrics
from eager_local.eval.records import regrade
from eager_local.eval.stopping import DEFAULT_AC_THRESHOLD, DEFAULT_ESC_WINDOW, make_rule


def replay(record: dict, rule) -> list[dict]:
    """The samples the rule draws on this prompt: waves of the record's samples, in order, until
    the rule stops or the next wave would pass the cap."""
    drawn: list[dict] = []
    while True:
        size = rule.next_wave([s["answer"] for s in drawn])
        if size == 0 or len(drawn) + size > len(record["sequences"]):
            return drawn
        drawn += record["sequences"][len(drawn):len(drawn) + size]
        if rule.decide([s["answer"] for s in drawn], size).stop:
            return drawn


def metrics(record: dict, samples: list[dict]) -> dict:
    return prompt_metrics([s["correct"] for s in samples], [s["answer"] for s in samples],
                          record["reference"], record["kind"], sum(s["new_tokens"] for s in samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run directory holding a full-parallel-sampling point")
    ap.add_argument("--ac-threshold", type=float, default=DEFAULT_AC_THRESHOLD)
    ap.add_argument("--esc-window", default=DEFAULT_ESC_WINDOW)
    args = ap.parse_args()

    points = [p for p in (store.parse_point(f.stem) for f in sorted(args.run_dir.glob("parallel_M*.jsonl")))
              if p is not None and not (store.read_json(args.run_dir / p.stats_file) or {}).get("derived_from")]
    if not points:
        raise SystemExit(f"{args.run_dir}: no decoded parallel point (parallel_M<M>.jsonl) found")
    point = max(points, key=lambda p: p.max_sequences)
    M = point.max_sequences
    records = [regrade(r) for r in store.read_records(args.run_dir / point.records_file)]
    window = args.esc_window if args.esc_window == DEFAULT_ESC_WINDOW else int(args.esc_window)
    options = {store.AC: {"threshold": args.ac_threshold}, store.ESC: {"window": window}}

    sizes = sorted({2**i for i in range(M.bit_length()) if 2**i < M} | {M})  # 1, 2, 4, … and M
    rows = [(f"parallel M={m}", [metrics(r, r["sequences"][:m]) for r in records]) for m in sizes]
    for method in (store.AC, store.ESC):
        rule = make_rule(method, M, options)
        label = f"{method} (cap {M}" + (f", window {rule.window})" if rule.window else f", P ≥ {rule.threshold})")
        rows.append((label, [metrics(r, replay(r, rule)) for r in records]))

    base = [p["pass@k"] for p in rows[len(sizes) - 1][1]]  # parallel at the run's M
    print(f"{args.run_dir} · {len(records)} prompts · replayed from {point.records_file}")
    print("| method | pass@k | Δ vs parallel M=%d [95%% CI] | cons@k | p@1 | #T | #S |" % M)
    print("|---|---|---|---|---|---|---|")
    for name, per_prompt in rows:
        agg = aggregate(per_prompt)
        solved = [p["pass@k"] for p in per_prompt]
        low, high = paired_bootstrap(solved, base)
        diff = (sum(solved) - sum(base)) / len(base)
        print(f"| {name} | {agg['pass@k']:.3f} | {diff:+.3f} [{low:+.3f}, {high:+.3f}] | {agg['cons@k']:.3f} "
              f"| {agg['p@1']:.3f} | {agg['#T']:.0f} | {agg['#S']:.2f} |")


if __name__ == "__main__":
    main()
